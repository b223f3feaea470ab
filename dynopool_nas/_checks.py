"""Checks of a command's arguments that run before any work, so that a bad value fails in a
second with a message that names it, not after hours of training.

Importing this module imports neither torch nor NNI (the command line's parser uses it);
the checks that need torch import it when they run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

__all__ = ["UsageError", "check_image_size", "train_subset", "writable_folder"]


class UsageError(ValueError):
    """A bad argument, found before any work (the command line exits with status 2)."""


def writable_folder(path: str | Path, option: str | None = "--output") -> Path:
    """``path`` as a folder this process can write in; it may not exist yet, and then the nearest
    existing folder above it must be writable. Nothing is created. ``option`` names the argument
    in the message."""
    path = Path(path).expanduser()
    named = f"{option} {path}" if option else str(path)
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise UsageError(f"{named}: {existing} is a broken symbolic link; remove it or choose another folder")
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise UsageError(f"{named} {where}, not a folder; choose a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{named}: cannot write in {existing} ({error.strerror or error}); choose a folder you can "
                         "write in") from None
    return path


def train_subset(dataset: Dataset, max_images: int | None, batch_size: int) -> Dataset:
    """The first ``max_images`` images of ``dataset`` (all of them if ``None``), checked to hold at
    least one full batch (the training loaders drop the last, partial one)."""
    available = len(dataset)  # type: ignore[arg-type]
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_images is not None:
        if max_images < 1:
            raise UsageError(f"--max-train-images must be at least 1, got {max_images}")
        if max_images > available:
            raise UsageError(f"--max-train-images {max_images} exceeds the {available} training images of the data "
                             f"set; use at most {available}")
    count = available if max_images is None else max_images
    if count < batch_size:
        given = f"--max-train-images {max_images}" if max_images is not None else f"the data set's {count} images"
        raise UsageError(f"{given} is less than one batch (--batch-size {batch_size}), so no training step would run; "
                         f"use at least {batch_size} images or a smaller batch")
    if max_images is None:
        return dataset
    from torch.utils.data import Subset

    return Subset(dataset, range(max_images))


def _runs(model: nn.Module, input_size: tuple[int, int, int]) -> bool:
    """Whether one zero image of ``input_size`` goes through ``model`` (``False`` where a layer's
    output would be empty)."""
    from ._utils import example_input

    try:
        model(example_input(model, input_size))
    except RuntimeError as error:
        if "output size is too small" in str(error).lower():
            return False
        raise
    return True


def _smallest_size(model: nn.Module, channels: int, fails: int, limit: int = 4096) -> int | None:
    """The smallest square image size above ``fails`` that ``model`` runs at (``None`` up to ``limit``)."""
    low, high = fails, fails * 2
    while not _runs(model, (channels, high, high)):
        if high >= limit:
            return None
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs(model, (channels, middle, middle)) else (middle, high)
    return high


def check_image_size(model: nn.Module, input_size: tuple[int, int, int], option: str = "--image-size") -> None:
    """Refuse an image size at which a layer of ``model`` (a fixed pooling window, for instance)
    would produce an empty map, naming the smallest size that works."""
    from ._utils import eval_mode

    channels, height, width = input_size
    with eval_mode(model):
        if _runs(model, input_size):
            return
        smallest = _smallest_size(model, channels, max(height, width, 1))
    advice = f"use at least {smallest}" if smallest else "the model runs at no size up to 4096"
    raise UsageError(f"{option} {height} is too small for the model (a layer's output would be empty); {advice}")
