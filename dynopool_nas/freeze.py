"""Freezing learned DynOPools into fixed-size resizers for deployment."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ._utils import eval_mode, example_input
from .convert import replace_dynopools
from .ops import Aggregation, check_aggregation, pool_queries, query_coordinates

__all__ = ["FixedDynOPool2d", "freeze_dynopools"]


class FixedDynOPool2d(nn.Module):
    """What a trained :class:`DynOPool2d` computes, at a fixed output size and without a
    learnable scale: the same query points (eq. 4.2, placed for ``output_size``), the same
    aggregation and the same autograd Function, so its output and its input gradient equal the
    learned layer's bit for bit, and a frozen model trains as the learned one with its scales
    held. TorchScript runs the same computation in PyTorch operators."""

    def __init__(self, output_size: tuple[int, int], aggregation: Aggregation = "max") -> None:
        super().__init__()
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be a pair of positive ints, got {output_size!r}")
        check_aggregation(aggregation)
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.aggregation = aggregation

    def forward(self, x: Tensor) -> Tensor:
        (in_h, in_w), (out_h, out_w) = x.shape[-2:], self.output_size
        size = torch.tensor(self.output_size, dtype=torch.float32, device=x.device)
        rows, cols = query_coordinates(in_h, out_h, size[0]), query_coordinates(in_w, out_w, size[1])
        return pool_queries(x, rows, cols, self.aggregation)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, aggregation={self.aggregation!r}"


def freeze_dynopools(model: nn.Module, input_size: tuple[int, int, int], *, inplace: bool = False) -> nn.Module:
    """Replace every DynOPool2d by a :class:`FixedDynOPool2d` at the size it produces for
    images of ``input_size`` (channels, height, width); a shared DynOPool stays shared."""
    model = model if inplace else copy.deepcopy(model)
    with eval_mode(model):
        model(example_input(model, input_size))
    if not replace_dynopools(model, lambda layer: FixedDynOPool2d(layer.output_size, layer.aggregation)):
        raise ValueError(f"freeze_dynopools: {type(model).__name__} has no DynOPool2d to freeze")
    return model
