import gzip
import re

import pytest
import torch

from dynopool_nas import DATASETS, DigitsDataset, data, load_dataset
from dynopool_nas.data import FashionMNISTDataset


def test_digits_split_is_deterministic_disjoint_and_complete():
    train, val = DigitsDataset("train", image_size=16), DigitsDataset("val", image_size=16)
    assert len(train) + len(val) == 1797 and len(val) == round(1797 * 0.2)
    again = DigitsDataset("val", image_size=16)
    assert torch.equal(val.images, again.images) and torch.equal(val.labels, again.labels)
    train_rows = {tuple(row.tolist()) for row in train.images.flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in val.images.flatten(1)[:50])
    image, label = train[0]
    assert image.shape == (1, 16, 16) and 0 <= label < 10
    assert set(train.labels.tolist()) == set(range(10))


def test_digits_resize_to_non_square_sizes_and_different_seeds_split_differently():
    data = DigitsDataset("train", image_size=(12, 20), seed=3)
    assert data[0][0].shape == (1, 12, 20)
    assert not torch.equal(DigitsDataset("val", seed=1).labels, DigitsDataset("val", seed=2).labels)


@pytest.mark.parametrize(
    "kwargs", [{"split": "test"}, {"val_fraction": 1.0}, {"image_size": 0}, {"image_size": (1, 2, 3)}]
)
def test_digits_refuse_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        DigitsDataset(**kwargs)


def test_toy_variants_spread_the_same_digits_differently():
    plain = DigitsDataset("val", image_size=16)
    tiled = DigitsDataset("val", image_size=16, variant="tiled")
    tile = tiled.images[0, 0, :4, :4]
    assert torch.equal(tiled.images[0, 0, 4:8, 12:16], tile)  # a 4x4 grid of the same small digit
    enlarged = DigitsDataset("val", image_size=16, variant="enlarged")
    assert enlarged.images.shape == plain.images.shape and not torch.equal(enlarged.images, plain.images)
    stretched = DigitsDataset("val", image_size=16, variant="stretched")
    again = DigitsDataset("val", image_size=16, variant="stretched")
    assert stretched.images.shape == (len(plain), 1, 16, 16) and torch.equal(stretched.images, again.images)
    # stretched twice as tall: neighbouring rows are more alike than neighbouring columns
    rows = (stretched.images[..., 1:, :] - stretched.images[..., :-1, :]).abs().mean()
    cols = (stretched.images[..., 1:] - stretched.images[..., :-1]).abs().mean()
    assert rows < 0.75 * cols


def test_registry_loads_every_bundled_set_by_name():
    for name in DATASETS[:4]:
        splits = load_dataset(name, image_size=16)
        assert splits.num_classes == 10 and splits.in_chans == 1 and splits.train[0][0].shape == (1, 16, 16)


@pytest.mark.parametrize("name", ["cifar100", "aircraft", "imagefolder"])
def test_real_data_sets_without_their_folder_give_a_clear_error(tmp_path, name):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset(name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(name, root=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=name):
        load_dataset(name, root=tmp_path)


def test_imagefolder_reads_a_class_per_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("cat", 40), ("dog", 200)):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(2):
                Image.new("RGB", (20, 30), (colour, index * 50, 0)).save(tmp_path / split / label / f"{index}.png")
    splits = load_dataset("imagefolder", image_size=16, root=tmp_path)
    image, label = splits.train[3]
    assert splits.num_classes == 2 and image.shape == (3, 16, 16) and label == 1 and len(splits.val) == 4


def test_unknown_dataset_and_variant_are_refused():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="variant"):
        DigitsDataset(variant="rotated")
    with pytest.raises(ValueError, match="divisible by 4"):
        DigitsDataset(image_size=10, variant="tiled")


# Fashion-MNIST: idx files written here (the Debian package is not needed)

FASHION_NAMES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _idx_bytes(array: torch.Tensor) -> bytes:
    """The idx encoding of a uint8 tensor, written independently of the reader."""
    header = bytes([0, 0, 8, array.dim()]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def _write_fashion(folder, n_train=24, n_test=4, gz=True, seed=0):
    """Small Fashion-MNIST idx files in ``folder``; returns the arrays written."""
    generator = torch.Generator().manual_seed(seed)
    arrays = {
        FASHION_NAMES[0]: torch.randint(0, 256, (n_train, 28, 28), generator=generator, dtype=torch.uint8),
        FASHION_NAMES[1]: torch.arange(n_train, dtype=torch.uint8) % 10,
        FASHION_NAMES[2]: torch.randint(0, 256, (n_test, 28, 28), generator=generator, dtype=torch.uint8),
        FASHION_NAMES[3]: torch.arange(n_test, dtype=torch.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def test_fashion_mnist_reads_idx_files_and_pads_28_to_32(tmp_path):
    arrays = _write_fashion(tmp_path)
    splits = load_dataset("fashion-mnist", image_size=32, root=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (22, 2, 4)
    assert splits.num_classes == 10 and splits.in_chans == 1
    raw = arrays[FASHION_NAMES[2]]
    for index in range(4):
        image, label = splits.test[index]
        assert image.shape == (1, 32, 32) and label == index % 10
        expected = (raw[index].float() / 255 - FashionMNISTDataset.mean) / FashionMNISTDataset.std
        torch.testing.assert_close(image[0, 2:30, 2:30], expected)  # the pixels themselves, not resampled
        border = torch.cat([image[0, :2].flatten(), image[0, 30:].flatten(), image[0, :, :2].flatten()])
        assert torch.allclose(border, torch.tensor(-FashionMNISTDataset.mean / FashionMNISTDataset.std))


def test_fashion_mnist_split_is_deterministic_disjoint_and_complete(tmp_path):
    arrays = _write_fashion(tmp_path, n_train=48)

    def rows(dataset):
        return {tuple(dataset[i][0].flatten().tolist()) for i in range(len(dataset))}

    first = load_dataset("fashion-mnist", root=tmp_path, seed=1)
    again = load_dataset("fashion-mnist", root=tmp_path, seed=1)
    train, val = rows(first.train), rows(first.val)
    assert len(first.val) == 4 and not train & val and len(train | val) == len(arrays[FASHION_NAMES[0]])
    assert rows(again.val) == val
    assert rows(load_dataset("fashion-mnist", root=tmp_path, seed=2).val) != val


def test_fashion_mnist_reads_torchvision_layout_like_torchvision(tmp_path):
    from torchvision.datasets import FashionMNIST

    arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    reference = FashionMNIST(str(tmp_path), train=True, download=True)  # present: reads, no network
    splits = load_dataset("fashion-mnist", root=tmp_path, download=True)
    ours = torch.cat([splits.train.images, splits.val.images])
    assert torch.equal(reference.data, arrays[FASHION_NAMES[0]])
    assert sorted(map(bytes, ours.flatten(1).numpy())) == sorted(map(bytes, reference.data.flatten(1).numpy()))


def test_fashion_mnist_other_sizes_and_toy_variants(tmp_path):
    _write_fashion(tmp_path)
    assert load_dataset("fashion-mnist", image_size=16, root=tmp_path).train[0][0].shape == (1, 16, 16)
    splits = load_dataset("fashion-mnist", root=tmp_path)
    wide = FashionMNISTDataset(splits.test.images, splits.test.labels, image_size=(29, 36))
    background = -FashionMNISTDataset.mean / FashionMNISTDataset.std
    assert wide[0][0].shape == (1, 29, 36) and torch.allclose(wide[0][0][0, :, :4], torch.tensor(background))
    for variant in ("stretched", "tiled", "enlarged"):
        data = load_dataset(f"fashion-mnist-{variant}", image_size=32, root=tmp_path)
        assert all(split[1][0].shape == (1, 32, 32) for split in (data.train, data.val, data.test))
        again = load_dataset(f"fashion-mnist-{variant}", image_size=32, root=tmp_path)
        assert torch.equal(data.train[3][0], again.train[3][0])
    tiled = load_dataset("fashion-mnist-tiled", image_size=32, root=tmp_path).test[0][0][0]
    assert torch.equal(tiled[8:16, 24:32], tiled[:8, :8])
    with pytest.raises(ValueError, match="divisible by 4"):
        load_dataset("fashion-mnist-tiled", image_size=30, root=tmp_path)


def test_fashion_mnist_missing_files_name_the_package_the_folders_and_download(tmp_path, monkeypatch):
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion-mnist", root=absent)
    message = str(error.value)
    for part in ("apt-get install dataset-fashion-mnist", str(absent), str(absent / "FashionMNIST" / "raw"),
                 "--download", "--data-dir", "no such folder"):
        assert part in message
    _write_fashion(tmp_path)
    (tmp_path / f"{FASHION_NAMES[3]}.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {FASHION_NAMES[3]}.gz"):
        load_dataset("fashion-mnist", root=tmp_path)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", absent)
    with pytest.raises(FileNotFoundError, match=re.escape(f"searched {absent}: no such folder")):
        load_dataset("fashion-mnist")


def test_fashion_mnist_default_folder_is_used_without_a_root(tmp_path, monkeypatch):
    _write_fashion(tmp_path)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    assert len(load_dataset("fashion-mnist-enlarged").test) == 4


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw, gz: gz[: len(gz) // 2], "cannot be read as gzip"),
        (lambda raw, gz: b"not gzip at all", "cannot be read as gzip"),
        (lambda raw, gz: gzip.compress(raw[:-100]), "announces"),
        (lambda raw, gz: gzip.compress(raw[:10]), "shorter than an idx header"),
        (lambda raw, gz: gzip.compress(b"\x00\x00\x08\x01" + raw[4:]), "magic number 2049, expected 2051"),
    ],
 ids=["truncated-gzip", "not-gzip", "short-data", "short-header", "wrong-magic"],
)
def test_fashion_mnist_corrupt_files_are_named(tmp_path, damage, message):
    _write_fashion(tmp_path)
    path = tmp_path / f"{FASHION_NAMES[0]}.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(damage(raw, path.read_bytes()))
    with pytest.raises(ValueError, match=message) as error:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(path) in str(error.value) and "corrupt or truncated" in str(error.value)


def test_fashion_mnist_images_and_labels_must_agree(tmp_path):
    _write_fashion(tmp_path)
    (tmp_path / f"{FASHION_NAMES[1]}.gz").write_bytes(gzip.compress(_idx_bytes(torch.zeros(5, dtype=torch.uint8))))
    with pytest.raises(ValueError, match=r"24 images but .* 5 labels"):
        load_dataset("fashion-mnist", root=tmp_path)
    (tmp_path / f"{FASHION_NAMES[1]}.gz").write_bytes(gzip.compress(_idx_bytes(torch.full((24,), 12))))
    with pytest.raises(ValueError, match="label 12"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package():
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    assert set(splits.val.labels.tolist()) == set(range(10)) and splits.test[0][0].shape == (1, 32, 32)


def test_only_data_sets_with_a_test_split_have_one(tmp_path):
    assert load_dataset("digits", image_size=8).test is None


# ImageFolder: errors a person can act on


def _image_tree(root, classes=("cat", "dog"), per_class=2):
    from PIL import Image

    for split in ("train", "val"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                Image.new("RGB", (20, 30), (label * 100, index * 50, 0)).save(root / split / name / f"{index}.png")


@pytest.mark.parametrize(
    "damage", [lambda png: b"garbage", lambda png: png[: len(png) // 2]], ids=["garbage", "truncated"]
)
def test_imagefolder_names_an_unreadable_image(tmp_path, damage):
    _image_tree(tmp_path)
    broken = tmp_path / "train" / "dog" / "1.png"
    broken.write_bytes(damage(broken.read_bytes()))
    splits = load_dataset("imagefolder", image_size=16, root=tmp_path)
    assert splits.train[0][0].shape == (3, 16, 16)
    with pytest.raises(OSError, match=re.escape(f"cannot read image {broken}")):
        splits.train[3]


def test_imagefolder_with_one_class_is_refused_up_front(tmp_path):
    _image_tree(tmp_path, classes=("cat",))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'train'} holds 1 class folder") + ".*at least 2"):
        load_dataset("imagefolder", image_size=16, root=tmp_path)
