"""Small helpers shared inside the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def example_input(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> Tensor:
    """A batch of one zero image of ``input_size`` (channels, height, width) on the model's
    device, or ``input_size`` itself if it is already a tensor."""
    if isinstance(input_size, Tensor):
        return input_size
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {input_size!r}")
    param = next(model.parameters(), None)
    return torch.zeros(1, *input_size, device=param.device if param is not None else None)
