"""Data sets by name.

The default needs no download: scikit-learn's bundled handwritten digits (1,797 real 8x8
images, 10 classes) at any image size, and three variants after the thesis's toy sets
(Figure 3.1): vertically stretched then cropped, tiled 4x4, and enlarged. Fashion-MNIST
(60,000 training and 10,000 test images, 28x28, 10 classes) and its toy variants read the
standard idx files from a folder, by default where the Debian package ``dataset-fashion-mnist``
installs them. CIFAR-100, FGVC-Aircraft and ImageFolder trees (ImageNet) load from a folder the
user gives. Every set is downloaded only when asked, and missing or unreadable data is a clear
error that says what to do.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DATASETS", "FASHION_MNIST_DIR", "DataSplits", "DigitsDataset", "FashionMNISTDataset", "load_dataset"]

Split = Literal["train", "val"]
Variant = Literal["stretched", "tiled", "enlarged"]
VARIANTS: tuple[str, ...] = ("stretched", "tiled", "enlarged")
Fit = Callable[[Tensor, tuple[int, int]], Tensor]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` (Debian) puts the idx files."""
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _image_size(image_size: int | tuple[int, int], variant: str | None) -> tuple[int, int]:
    """``image_size`` as an (h, w) pair, checked against ``variant``."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (h, w) pair, got {image_size!r}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    if variant in ("tiled", "enlarged") and min(size) % 4:
        raise ValueError(f"the {variant} variant needs an image size divisible by 4, got {size}")
    return size


def _split_indices(count: int, split: str, val_fraction: float, seed: int) -> Tensor:
    """The indices of ``split`` ('train' or 'val') in a fixed permutation of ``count`` items
    drawn from ``seed``: the two splits never overlap and every run draws the same ones."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_val = round(count * val_fraction)
    return order[:n_val] if split == "val" else order[n_val:]


def _stretch_offsets(count: int, height: int, variant: str | None, seed: int) -> Tensor | None:
    """Per image, the first row of the stretched variant's crop, drawn from ``seed``."""
    if variant != "stretched":
        return None
    return torch.randint(0, height + 1, (count,), generator=torch.Generator().manual_seed(seed))


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize, antialiased when it shrinks (enlarging is plain bilinear)."""
    shrinks = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


def _pad_or_resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Images centred on a background of zeros when ``size`` holds them on both sides (28x28
    in 32x32: 2 pixels each side, the odd pixel of an odd margin at the bottom or right),
    resized otherwise."""
    height, width = images.shape[-2:]
    if size[0] < height or size[1] < width:
        return _resize(images, size)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return F.pad(images, (left, size[1] - width - left, top, size[0] - height - top))


def _render(
    images: Tensor, size: tuple[int, int], variant: str | None, offsets: Tensor | None, fit: Fit = _resize
) -> Tensor:
    """Images (N, 1, h, w) in [0, 1] at ``size``: ``fit`` for the plain set, or a toy variant
    (thesis Figure 3.1) with the stretched crops starting at ``offsets``."""
    height, width = size
    if variant == "stretched":
        rows = (offsets[:, None] + torch.arange(height))[:, None, :, None].expand(-1, images.shape[1], -1, width)
        return _resize(images, (2 * height, width)).gather(2, rows)
    if variant == "tiled":
        return _resize(images, (height // 4, width // 4)).repeat(1, 1, 4, 4)
    if variant == "enlarged":
        return _resize(_resize(images, (height // 4, width // 4)), size)
    return fit(images, size)


class DigitsDataset(Dataset[tuple[Tensor, int]]):
    """scikit-learn's digits, bilinearly resized to ``image_size`` and standardized.

    Args:
        split: ``'train'`` or ``'val'``; the split is a fixed permutation drawn from ``seed``,
            so the two never overlap and every run sees the same one.
        image_size: side of the square images (8 is the native size), or an (h, w) pair.
        val_fraction: share of the 1,797 images held out for validation.
        seed: seed of the split permutation (and of the stretched variant's crops).
        variant: ``None`` for the plain digits, or a toy variant (thesis Figure 3.1):
            ``'stretched'`` (stretched to twice the height, then a crop of ``image_size`` rows
            at an offset drawn per image: information spread thinly along the height),
            ``'tiled'`` (shrunk to a quarter and tiled 4x4: dense information) or
            ``'enlarged'`` (shrunk to a quarter and enlarged back: sparse information).
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        split: Split = "train",
        image_size: int | tuple[int, int] = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
        variant: Variant | None = None,
    ) -> None:
        from sklearn.datasets import load_digits

        size = _image_size(image_size, variant)
        digits = load_digits()
        chosen = _split_indices(len(digits.target), split, val_fraction, seed)
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)[chosen] / 16.0
        offsets = _stretch_offsets(len(chosen), size[0], variant, seed + 1)
        self.images = (_render(images, size, variant, offsets) - 0.3) / 0.4
        self.labels = torch.as_tensor(digits.target, dtype=torch.long)[chosen]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class FashionMNISTDataset(Dataset[tuple[Tensor, int]]):
    """Fashion-MNIST images kept as 8-bit (N, 28, 28) and rendered at ``image_size`` when read.

    A size that holds the 28x28 image on both sides pads it with background (32x32: 2 pixels
    each side, so objects keep their pixel scale); a smaller size resizes it (antialiased).
    Pixels are standardized with the training set's mean and deviation (0.2860, 0.3530).
    Build the splits with ``load_dataset('fashion-mnist')``.

    Args:
        images: (N, H, W) uint8 images.
        labels: (N,) class indices in 0..9.
        image_size: side of the square images, or an (h, w) pair.
        seed: seed of the stretched variant's crops.
        variant: ``None`` for the plain images, or a toy variant as in :class:`DigitsDataset`
            (rendered from the 28x28 image).
    """

    num_classes = 10
    in_chans = 1
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    mean, std = 0.2860, 0.3530

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        image_size: int | tuple[int, int] = 32,
        seed: int = 0,
        variant: Variant | None = None,
    ) -> None:
        self.size = _image_size(image_size, variant)
        self.variant = variant
        self.images, self.labels = images, labels.long()
        self.offsets = _stretch_offsets(len(labels), self.size[0], variant, seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """A batch rendered at once (the DataLoader fetches batches through this)."""
        chosen = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[chosen].unsqueeze(1).float() / 255.0
        offsets = None if self.offsets is None else self.offsets[chosen]
        rendered = (_render(images, self.size, self.variant, offsets, fit=_pad_or_resize) - self.mean) / self.std
        return list(zip(rendered, self.labels[chosen].tolist()))


def _read_idx(path: Path, ndim: int) -> Tensor:
    """An idx file of unsigned bytes (the MNIST format: magic ``0x0800 + ndim``, i.e. 2051 for
    images and 2049 for labels, then ``ndim`` big-endian int32 sizes, then the bytes), gzipped
    when its name ends in ``.gz``, as a uint8 tensor."""
    fix = f"the file is corrupt or truncated: replace it (apt-get install --reinstall {FASHION_MNIST_PACKAGE}, " \
          "or delete it and use --download)"
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} ({error}); "
                         f"{fix}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than an idx header ({header} bytes); {fix}")
    magic, *sizes = struct.unpack(f">{1 + ndim}I", data[:header])
    if magic != 0x0800 + ndim:
        raise ValueError(f"{path}: magic number {magic}, expected {0x0800 + ndim} (idx, unsigned bytes, "
                         f"{ndim}-D); {fix}")
    expected = header + math.prod(sizes)
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, its header {tuple(sizes)} announces {expected}; {fix}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(sizes)


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its un-gzipped twin, whichever exists."""
    for path in (folder / name, folder / name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _fashion_mnist_folder(root: Path | None, download: bool) -> Path:
    """The first folder that holds all four Fashion-MNIST idx files: ``root`` and torchvision's
    ``root/FashionMNIST/raw``, or :data:`FASHION_MNIST_DIR` when no root is given; with
    ``download``, torchvision fetches them into ``root/FashionMNIST/raw`` when absent."""
    folders = [FASHION_MNIST_DIR] if root is None else [root, root / "FashionMNIST" / "raw"]
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    missing = {folder: [name for name in names if _idx_file(folder, name) is None] for folder in folders}
    for folder, absent in missing.items():
        if not absent:
            return folder
    if download and root is not None:
        _download_fashion_mnist(root)
        return root / "FashionMNIST" / "raw"
    searched = "; ".join(f"{folder}: " + ("no such folder" if not folder.is_dir() else "missing " + ", ".join(absent))
                         for folder, absent in missing.items())
    raise FileNotFoundError(
        f"dataset 'fashion-mnist' needs the four idx files {names} (gzipped or not) in one folder; "
        f"searched {searched}. "
        f"Install them with `sudo apt-get install {FASHION_MNIST_PACKAGE}` (Debian, into {FASHION_MNIST_DIR}), "
        "pass the folder that holds them with --data-dir, or download them into --data-dir with --download"
    )


def _download_fashion_mnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:
        raise FileNotFoundError(f"dataset 'fashion-mnist': the download into {root} failed ({error}); without "
                                f"internet, `sudo apt-get install {FASHION_MNIST_PACKAGE}` and leave out --data-dir"
                                ) from None


def _read_fashion_mnist(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """The ``split`` ('train' or 'test') images (N, H, W) and labels (N,) of the idx files in ``folder``."""
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path, label_path = _idx_file(folder, image_name), _idx_file(folder, label_name)
    images, labels = _read_idx(image_path, ndim=3), _read_idx(label_path, ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels: "
                         "the two files come from different data sets; replace them")
    if len(labels) and int(labels.max()) >= FashionMNISTDataset.num_classes:
        raise ValueError(f"{label_path} holds label {int(labels.max())}; Fashion-MNIST's classes are 0-9: "
                         "is it another data set's file?")
    return images, labels


def _fashion_mnist_splits(
    root: Path | None, image_size: int, download: bool, seed: int, variant: str | None, val_fraction: float = 1 / 12
) -> DataSplits:
    """Fashion-MNIST's 60,000 training images carved into train and validation (5,000 images,
    drawn from ``seed``), and its 10,000 test images as the test split."""
    folder = _fashion_mnist_folder(root, download)
    images, labels = _read_fashion_mnist(folder, "train")
    test_images, test_labels = _read_fashion_mnist(folder, "test")

    def subset(split: str, offset_seed: int) -> FashionMNISTDataset:
        chosen = _split_indices(len(labels), split, val_fraction, seed)
        return FashionMNISTDataset(images[chosen], labels[chosen], image_size, offset_seed, variant)

    test = FashionMNISTDataset(test_images, test_labels, image_size, seed + 3, variant)
    train, val = subset("train", seed + 1), subset("val", seed + 2)
    return DataSplits(train, val, FashionMNISTDataset.num_classes, FashionMNISTDataset.in_chans, test=test)


def _load_image(path: str) -> Any:
    """torchvision's image loader, with the file's name in the error when it cannot be decoded."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError or DecompressionBombError
        raise OSError(f"cannot read image {path}: {type(error).__name__}: {error}; "
                      "repair or replace the file, or remove it from the folder") from error


def _image_folder(folder: Path, transform: Callable[[Any], Tensor]) -> Dataset:
    """An ImageFolder of ``folder`` (one sub-folder per class) that names any unreadable file;
    fewer than two classes are refused up front."""
    from torchvision import datasets

    if not folder.is_dir():
        raise FileNotFoundError(f"dataset 'imagefolder' needs {folder}: one sub-folder per class")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if len(classes) < 2:
        raise ValueError(f"dataset 'imagefolder': {folder} holds {len(classes)} class folder(s) {classes}; "
                         "a classifier needs at least 2: put each class's images in its own sub-folder")
    return datasets.ImageFolder(str(folder), transform=transform, loader=_load_image)


@dataclass(frozen=True)
class DataSplits:
    """A data set's splits with what a model needs to know.

    ``val`` is for search and model selection; ``test``, where the data set has one apart from
    its validation split (Fashion-MNIST), is for final numbers only.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    test: Dataset | None = None


DATASETS: tuple[str, ...] = (
    "digits", *(f"digits-{v}" for v in VARIANTS),
    "fashion-mnist", *(f"fashion-mnist-{v}" for v in VARIANTS),
    "cifar100", "aircraft", "imagefolder",
)


def _family(name: str) -> tuple[str, str | None]:
    """A registry name as its family and toy variant: ``'fashion-mnist-tiled'`` -> ``('fashion-mnist', 'tiled')``."""
    for family in ("digits", "fashion-mnist"):
        if name.startswith(f"{family}-"):
            return family, name.removeprefix(f"{family}-")
    return name, None


def load_dataset(
    name: str = "digits",
    image_size: int = 32,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
) -> DataSplits:
    """Load a data set of :data:`DATASETS` by name.

    ``digits`` and its variants are bundled. ``fashion-mnist`` and its variants read the four idx
    files from ``root`` or ``root/FashionMNIST/raw``, by default from :data:`FASHION_MNIST_DIR`
    (``apt-get install dataset-fashion-mnist``); 5,000 of the 60,000 training images are the
    validation split and the 10,000 test images the ``test`` split. ``cifar100`` and ``aircraft``
    (FGVC-Aircraft, variants, trainval/test) are read by torchvision from ``root``;
    ``imagefolder`` reads ``root/train`` and ``root/val`` (ImageNet layout). Only
    ``download=True`` downloads (into ``root``). Real colour images are resized to
    ``image_size`` (shorter side, then a centre crop) and normalized.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    family, variant = _family(name)
    if family == "digits":
        return DataSplits(
            DigitsDataset("train", image_size, seed=seed, variant=variant),
            DigitsDataset("val", image_size, seed=seed, variant=variant),
            DigitsDataset.num_classes, DigitsDataset.in_chans,
        )
    if family == "fashion-mnist":
        return _fashion_mnist_splits(None if root is None else Path(root), image_size, download, seed, variant)
    if root is None:
        raise ValueError(f"dataset {name!r} is read from a folder: pass its path (--data-dir)")
    root = Path(root)
    if not root.is_dir() and not download:
        raise FileNotFoundError(f"dataset {name!r}: folder {root} does not exist; pass the folder that holds it, "
                                "or allow a download with --download")
    return _torchvision_splits(name, root, image_size, download)


def _torchvision_splits(name: str, root: Path, image_size: int, download: bool) -> DataSplits:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    try:
        if name == "cifar100":
            train = datasets.CIFAR100(root, train=True, transform=transform, download=download)
            val = datasets.CIFAR100(root, train=False, transform=transform, download=download)
            return DataSplits(train, val, 100, 3)
        if name == "aircraft":
            train = datasets.FGVCAircraft(root, split="trainval", transform=transform, download=download)
            val = datasets.FGVCAircraft(root, split="test", transform=transform, download=download)
            return DataSplits(train, val, len(train.classes), 3)
        train, val = (_image_folder(root / split, transform) for split in ("train", "val"))
        if train.classes != val.classes:
            raise ValueError(f"{root / 'train'} and {root / 'val'} hold different classes")
        return DataSplits(train, val, len(train.classes), 3)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"dataset {name!r} is not in {root} ({error}); pass the folder that holds it, "
                                "or allow a download with --download") from None
