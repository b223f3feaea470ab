"""Data that needs no download: scikit-learn's bundled handwritten digits (1,797 real 8x8
images, 10 classes) as a torch ``Dataset`` at any image size."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DigitsDataset"]

Split = Literal["train", "val"]


class DigitsDataset(Dataset[tuple[Tensor, int]]):
    """scikit-learn's digits, bilinearly resized to ``image_size`` and standardized.

    Args:
        split: ``'train'`` or ``'val'``; the split is a fixed permutation drawn from ``seed``,
            so the two never overlap and every run sees the same one.
        image_size: side of the square images (8 is the native size), or an (h, w) pair.
        val_fraction: share of the 1,797 images held out for validation.
        seed: seed of the split permutation.
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        split: Split = "train",
        image_size: int | tuple[int, int] = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be a positive int or (h, w) pair, got {image_size!r}")
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        n_val = round(len(labels) * val_fraction)
        chosen = order[:n_val] if split == "val" else order[n_val:]
        images = F.interpolate(images[chosen], size=size, mode="bilinear", align_corners=False)
        self.images = (images - 0.3) / 0.4
        self.labels = labels[chosen]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])
