"""Shape Adaptor (Liu et al., ECCV 2020), the learnable-resizing baseline of thesis section 5.4.

Two branches at fixed ratios -- the human model's pooling (``r1``, e.g. 0.5) and the identity
(``r2 = 1``) -- are both resized bilinearly to the mixed size ``round(H * (s*r1 + (1-s)*r2))`` and
mixed with weights ``s`` and ``1 - s``, ``s = sigmoid(alpha)``: one learned scalar per layer, the
same ratio on both axes. The size itself is rounded without a gradient; alpha learns through the
mixing weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import dynopool_layers, dynopoolify, replace_dynopools
from .layer import DynOPool2d

__all__ = ["ShapeAdaptor2d", "shape_adaptify"]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ShapeAdaptor2d(nn.Module):
    """Shape Adaptor between a pooled branch (ratio ``r1``) and the identity (``r2 = 1``).

    Args:
        r1: ratio of the pooled branch (the human model's, 0.5 for a stride of 2).
        initial_ratio: the mixed ratio at initialization, strictly between ``r1`` and 1 (0.55:
            close to the human model's 0.5 while ``s`` can still move).
        aggregation: the pooled branch's pooling, ``'max'`` or ``'mean'``.
        name: label for reports.
    """

    def __init__(self, r1: float = 0.5, initial_ratio: float = 0.55, aggregation: str = "max",
                 name: str | None = None) -> None:
        super().__init__()
        if not 0 < r1 < initial_ratio < 1:
            raise ValueError(f"need 0 < r1 < initial_ratio < 1, got r1={r1}, initial_ratio={initial_ratio}")
        if aggregation not in ("max", "mean"):
            raise ValueError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
        weight = (1 - initial_ratio) / (1 - r1)  # s with r1*s + (1 - s) = initial_ratio
        self.alpha = nn.Parameter(torch.tensor(math.log(weight / (1 - weight))))
        self.r1, self.aggregation, self.name = r1, aggregation, name or type(self).__name__
        self.output_size: tuple[int, int] | None = None

    @property
    def ratio(self) -> float:
        """The current mixed ratio ``s*r1 + (1 - s)``."""
        weight = float(torch.sigmoid(self.alpha.detach()))
        return weight * self.r1 + (1 - weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"{self.name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        ratio = self.ratio
        height, width = (int(s) for s in x.shape[-2:])
        size = (max(round(height * ratio), 1), max(round(width * ratio), 1))
        self.output_size = size
        kernel = max(round(1 / self.r1), 1)
        pooled = F.max_pool2d(x, kernel) if self.aggregation == "max" else F.avg_pool2d(x, kernel)
        weight = torch.sigmoid(self.alpha)
        return weight * _resize(pooled, size) + (1 - weight) * _resize(x, size)

    def extra_repr(self) -> str:
        return f"r1={self.r1}, ratio={self.ratio:.4g}, aggregation={self.aggregation!r}"


def shape_adaptify(model: nn.Module, initial_ratio: float = 0.55) -> nn.Module:
    """Convert ``model`` like :func:`~dynopool_nas.dynopoolify` (the same places, the same shared
    branches), with a :class:`ShapeAdaptor2d` wherever a DynOPool would go. Each adaptor's ``r1``
    is the human model's ratio; where that is below 0.5 (ResNet's stem, 0.25) it is kept."""
    converted = dynopoolify(model)

    def adaptor(layer: DynOPool2d) -> ShapeAdaptor2d:
        r1 = min(layer.scale)
        return ShapeAdaptor2d(r1, max(initial_ratio, r1 + 0.05), layer.aggregation, layer.name)

    replace_dynopools(converted, adaptor)
    if any(True for _ in dynopool_layers(converted)):
        raise RuntimeError("shape_adaptify left a DynOPool2d in place")
    return converted
