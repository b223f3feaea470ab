"""Data sets by name.

The default needs no download: scikit-learn's bundled handwritten digits (1,797 real 8x8
images, 10 classes) at any image size, and three variants after the thesis's toy sets
(Figure 3.1): vertically stretched then cropped, tiled 4x4, and enlarged. CIFAR-100,
FGVC-Aircraft and ImageFolder trees (ImageNet) load from a folder the user gives; they are
downloaded only when asked, and a missing folder is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DATASETS", "DataSplits", "DigitsDataset", "load_dataset"]

Split = Literal["train", "val"]
Variant = Literal["stretched", "tiled", "enlarged"]
VARIANTS: tuple[str, ...] = ("stretched", "tiled", "enlarged")


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

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be a positive int or (h, w) pair, got {image_size!r}")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
        if variant in ("tiled", "enlarged") and min(size) % 4:
            raise ValueError(f"the {variant} variant needs an image size divisible by 4, got {size}")
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        n_val = round(len(labels) * val_fraction)
        chosen = order[:n_val] if split == "val" else order[n_val:]
        generator = torch.Generator().manual_seed(seed + 1)
        images = _render(images[chosen], size, variant, generator)
        self.images = (images - 0.3) / 0.4
        self.labels = labels[chosen]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def _render(images: Tensor, size: tuple[int, int], variant: str | None, generator: torch.Generator) -> Tensor:
    """The digits (N, 1, 8, 8) at ``size``, as the plain set or one of the toy variants."""
    height, width = size
    if variant == "stretched":
        stretched = _resize(images, (2 * height, width))
        offsets = torch.randint(0, height + 1, (len(images),), generator=generator)
        return torch.stack([image[:, int(top):int(top) + height] for image, top in zip(stretched, offsets)])
    if variant == "tiled":
        return _resize(images, (height // 4, width // 4)).repeat(1, 1, 4, 4)
    if variant == "enlarged":
        return _resize(_resize(images, (height // 4, width // 4)), size)
    return _resize(images, size)


@dataclass(frozen=True)
class DataSplits:
    """A data set's training and validation splits with what a model needs to know."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int


DATASETS: tuple[str, ...] = ("digits", *(f"digits-{v}" for v in VARIANTS), "cifar100", "aircraft", "imagefolder")


def load_dataset(
    name: str = "digits",
    image_size: int = 32,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
) -> DataSplits:
    """Load a data set of :data:`DATASETS` by name.

    ``digits`` and its variants are bundled. ``cifar100`` and ``aircraft`` (FGVC-Aircraft,
    variants, trainval/test) are read by torchvision from ``root`` and downloaded there only with
    ``download=True``; ``imagefolder`` reads ``root/train`` and ``root/val`` (ImageNet layout).
    Real images are resized to ``image_size`` (shorter side, then a centre crop) and normalized.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if name.startswith("digits"):
        variant = name.partition("-")[2] or None
        return DataSplits(
            DigitsDataset("train", image_size, seed=seed, variant=variant),
            DigitsDataset("val", image_size, seed=seed, variant=variant),
            DigitsDataset.num_classes, DigitsDataset.in_chans,
        )
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
        folders = [root / "train", root / "val"]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise FileNotFoundError(f"dataset 'imagefolder' needs {missing}: one sub-folder per class in each")
        train, val = (datasets.ImageFolder(str(f), transform=transform) for f in folders)
        if train.classes != val.classes:
            raise ValueError(f"{folders[0]} and {folders[1]} hold different classes")
        return DataSplits(train, val, len(train.classes), 3)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"dataset {name!r} is not in {root} ({error}); pass the folder that holds it, "
                                "or allow a download with --download") from None
