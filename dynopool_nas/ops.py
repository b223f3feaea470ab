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

from typing import Any, Literal

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


class _PixelAlignedMax(torch.autograd.Function):
    """DynOPool with max aggregation where ``H_in = 2 * H_out`` and ``W_in = 2 * W_out``.

    Every query coordinate is then an input pixel (``u_k = k``), so the values are
    ``max_pool2d(2, 2)``'s. The bilinear map's derivative along an axis at a pixel is the
    forward difference there, read at each output's argmax; the coordinates' own gradient is
    zero on the border, as in ``grid_sample`` (:func:`query_coordinates`), so the differences
    read past the last row or column never count.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        values, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
        ctx.save_for_backward(x, indices)
        ctx.mark_non_differentiable(indices)
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, indices = ctx.saved_tensors
        grad_x = grad_rows = grad_cols = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
                grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
            )
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            in_w = x.shape[-1]
            out_h, out_w = indices.shape[-2:]
            flat, index = x.flatten(-2), indices.flatten(-2)
            last = flat.shape[-1] - 1
            # offset of the argmax inside its 2x2 window: 0, 1, W or W + 1
            corner = (torch.arange(out_h, device=x.device)[:, None] * (2 * in_w)
                      + torch.arange(out_w, device=x.device) * 2).flatten()
            offset = index - corner
            odd_row = (offset >= in_w).to(grad.dtype)
            odd_col = (offset & 1).to(grad.dtype)
            chosen = flat.gather(-1, index)
            down = (flat.gather(-1, (index + in_w).clamp_max(last)) - chosen) * grad.flatten(-2)
            right = (flat.gather(-1, (index + 1).clamp_max(last)) - chosen) * grad.flatten(-2)
            down, right = down.view_as(indices), right.view_as(indices)
            odd_row, odd_col = odd_row.view_as(indices), odd_col.view_as(indices)
            grad_rows = _interleave(down.sum((0, 1, 3)), (down * odd_row).sum((0, 1, 3)))
            grad_cols = _interleave(right.sum((0, 1, 2)), (right * odd_col).sum((0, 1, 2)))
        return grad_x, grad_rows, grad_cols


def _interleave(total: Tensor, odd: Tensor) -> Tensor:
    """Per-query-row gradient from per-cell totals and the part that chose the odd row."""
    return torch.stack([total - odd, odd], dim=-1).flatten()


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
    if aggregation == "max" and (in_h, in_w) == (2 * out_h, 2 * out_w):
        return _PixelAlignedMax.apply(x, rows.to(x.dtype), cols.to(x.dtype))
    queries = _resample_axis(_resample_axis(x, x.dim() - 2, rows), x.dim() - 1, cols)
    if aggregation == "max":
        return F.max_pool2d(queries, kernel_size=2, stride=2)
    return F.avg_pool2d(queries, kernel_size=2, stride=2)
