import pytest
import torch

from dynopool_nas import DATASETS, DigitsDataset, load_dataset


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
