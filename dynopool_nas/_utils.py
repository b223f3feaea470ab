"""Small helpers shared inside the package."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, restoring every module's mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def example_input(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> Tensor:
    """A batch of one zero image of ``input_size`` (channels, height, width) on the model's
    device, or ``input_size`` itself if it is already a tensor."""
    if isinstance(input_size, Tensor):
        return input_size
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {input_size!r}")
    param = next(model.parameters(), None)
    return torch.zeros(1, *input_size, device=param.device if param is not None else None)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then move it into place: a crash
    leaves the previous file intact, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
