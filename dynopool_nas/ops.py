"""The mathematics of DynOPool in one place (thesis chapter 4, section 5.2.2).

Everything that needs an output size -- the layer, the GMACs cost model, the exporter --
calls :func:`ste_output_size`; everything that samples calls :func:`dynopool2d`.

All ``2*H_out x 2*W_out`` query points of eq. 4.2 lie on one regular grid: query row ``k``
sits at normalized coordinate ``-1 + (2k+1)/(2*h)``, i.e. at input pixel coordinate
``u_k = (k + 1/2) * H_in / (2*h) - 1/2``. DynOPool is therefore a separable bilinear
resample to ``(2*H_out, 2*W_out)`` followed by a 2x2, stride-2 aggregation, which is how
:func:`dynopool2d` computes it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Aggregation = Literal["max", "mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean")


def ste_output_size(in_size: Tensor | float, scale: Tensor, min_size: float = 1.5) -> Tensor:
    """Straight-through output size of a DynOPool (eq. 4.1, 4.3, 4.4 and section 5.2.2).

    ``size = max(in_size * scale, min_size)``; the returned tensor holds ``round(size)``
    exactly in its value and has the gradient of the continuous ``size``.

    Args:
        in_size: input size per axis, a number or a tensor (itself straight-through, so that
            gradients reach every upstream scale).
        scale: the scale factor ``r`` per axis (``1 / alpha``, eq. 4.6).
        min_size: the lower bound that keeps every feature map at least 2 wide.
    """
    size = torch.clamp_min(in_size * scale, min_size)
    return (size - size.detach()) + torch.round(size.detach())


def query_coordinates(in_size: int, out_size: int, size: Tensor) -> Tensor:
    """Input pixel coordinates ``u_k`` of the ``2*out_size`` query rows of one axis (eq. 4.2).

    ``size`` is the (straight-through or continuous) output size; the coordinates carry its
    gradient. They are clamped to the input as ``grid_sample(padding_mode='border')`` does,
    which also counts a point exactly on the border as clamped (no gradient).
    """
    dtype = torch.float64 if size.dtype == torch.float64 else torch.float32
    k = torch.arange(2 * out_size, device=size.device, dtype=dtype)
    u = (k + 0.5) * (in_size / (2.0 * size.to(dtype))) - 0.5
    inside = (u > 0) & (u < in_size - 1)
    return torch.where(inside, u, u.detach().clamp(0.0, in_size - 1))


def _resample_axis(x: Tensor, dim: int, coords: Tensor) -> Tensor:
    """Linear interpolation of ``x`` along ``dim`` at fractional pixel ``coords``."""
    in_size = x.shape[dim]
    lower = coords.detach().floor()
    weight = (coords - lower).to(x.dtype)
    lower = lower.long()
    upper = (lower + 1).clamp_max(in_size - 1)
    if dim == x.dim() - 2:
        weight = weight.unsqueeze(-1)
    return torch.lerp(x.index_select(dim, lower), x.index_select(dim, upper), weight)


def dynopool2d(
    x: Tensor,
    size: Tensor,
    out_size: tuple[int, int],
    aggregation: Aggregation = "max",
) -> Tensor:
    """Resize ``x`` (N, C, H, W) to ``out_size`` by DynOPool's sampling (eq. 4.1, 4.2).

    Each output cell is the aggregation (max by default) of four bilinearly sampled query
    points at ``p +- (1/4) * (2/size)`` around its centre ``p``.

    Args:
        x: input feature map.
        size: output size per axis used to place the query points, shape (2,). In training it
            is the straight-through size from :func:`ste_output_size`, so the gradient reaches
            the scale; pass a continuous size to evaluate the continuous surrogate.
        out_size: integer output size (H_out, W_out), the rounded value of ``size``.
        aggregation: ``'max'`` (the paper's choice) or ``'mean'``.
    """
    out_h, out_w = out_size
    in_h, in_w = x.shape[-2:]
    rows = query_coordinates(in_h, out_h, size[0])
    cols = query_coordinates(in_w, out_w, size[1])
    queries = _resample_axis(_resample_axis(x, x.dim() - 2, rows), x.dim() - 1, cols)
    if aggregation == "max":
        return F.max_pool2d(queries, kernel_size=2, stride=2)
    return F.avg_pool2d(queries, kernel_size=2, stride=2)
