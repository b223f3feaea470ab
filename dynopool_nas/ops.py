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

from dynopool_nas import _extension

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


def _taps(coords: Tensor, in_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lower and upper pixel index and the weight of the upper one, for linear interpolation
    at fractional pixel ``coords`` (the weight keeps the coordinates' gradient, if any)."""
    lower = coords.detach().floor()
    weight = coords - lower
    lower = lower.long()
    return lower, (lower + 1).clamp_max(in_size - 1), weight


def _column_matrix(lower: Tensor, upper: Tensor, lower_weight: Tensor, upper_weight: Tensor, in_size: int) -> Tensor:
    """The (in_size, n) matrix whose column j holds ``lower_weight[j]`` at row ``lower[j]`` and
    ``upper_weight[j]`` at row ``upper[j]`` (summed where they coincide)."""
    columns = torch.arange(lower.numel(), device=lower.device)
    matrix = upper_weight.new_zeros(in_size, lower.numel())
    matrix = matrix.index_put((lower, columns), lower_weight.expand_as(columns), accumulate=True)
    return matrix.index_put((upper, columns), upper_weight.expand_as(columns), accumulate=True)


def _resample(x: Tensor, coords: Tensor, dim: int) -> Tensor:
    """Linear interpolation along ``dim`` at fractional pixel ``coords`` (whole-slice copies)."""
    lower, upper, weight = _taps(coords, x.shape[dim])
    weight_shape = [1] * x.dim()
    weight_shape[dim] = -1
    return torch.lerp(x.index_select(dim, lower), x.index_select(dim, upper), weight.to(x.dtype).view(weight_shape))


def _queries(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The ``2*H_out x 2*W_out`` bilinearly sampled query points (eq. 4.2), separably: rows by
    copying and blending whole rows; columns likewise on channels-last maps (on the NHWC view,
    where every pixel is a contiguous block of channels) and on GPUs, and by one matrix product
    on NCHW maps on the CPU, where a gather along the last, contiguous axis is several times
    slower (a NaN there reaches its whole query row, through the zero weights)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return _resample(_resample(x.permute(0, 2, 3, 1), rows, 1), cols, 2).permute(0, 3, 1, 2)
    if x.device.type != "cpu":
        return _resample(_resample(x, rows, -2), cols, -1)
    lower, upper, weight = _taps(cols, x.shape[-1])
    weight = weight.to(x.dtype)
    return _resample(x, rows, -2) @ _column_matrix(lower, upper, 1 - weight, weight, x.shape[-1])


def _query_grid(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The query grid, which at r = 1/2 on even sizes is the input itself (``u_k = k``)."""
    if (rows.numel(), cols.numel()) == (x.shape[-2], x.shape[-1]):
        return x
    return _queries(x, rows, cols)


def sample_max(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Max DynOPool's values for fixed query coordinates, without gradients to them: the
    compiled kernel where it may run, else the query grid and ``max_pool2d`` (also inside
    TorchScript, which never compiles the kernel's call)."""
    if torch.jit.is_scripting():
        return F.max_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2)
    return _eager_sample_max(x, rows, cols)


@torch.jit.unused
def _eager_sample_max(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    if _extension.usable_for(x):
        return _extension.max_forward(x, rows, cols)[0]
    return F.max_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2)


class _DynOPool(torch.autograd.Function):
    """DynOPool's sampling and 2x2 aggregation with a hand-written backward pass.

    Max on the CPU runs in compiled kernels (:mod:`dynopool_nas._extension`): the forward pass
    samples the four queries of each output cell and keeps the largest with a one-byte code of
    the winner; the backward pass takes one pass over the output. Otherwise the query grid is
    built (:func:`_queries`) and pooled by ``max_pool2d`` (with indices) or ``avg_pool2d``, and
    the backward pass recomputes the grid rather than keeping it (memory as ``max_pool2d``'s).
    Where ``H_in = 2 * H_out`` and ``W_in = 2 * W_out`` (r = 1/2 on even sizes) every query is a
    pixel (``u_k = k``), so the values are ``max_pool2d(2, 2)``'s (``avg_pool2d``'s for mean).

    Backward: the coordinates' gradient is the bilinear derivative at each query (the forward
    difference on a pixel, as ``grid_sample`` takes it); coordinates on the border carry none
    (:func:`query_coordinates`), so differences read past the last row or column never count.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, rows: Tensor, cols: Tensor, aggregation: str) -> Tensor:
        identity = (rows.numel(), cols.numel()) == tuple(x.shape[-2:])
        ctx.kernel = aggregation == "max" and _extension.usable_for(x)
        # the winner of each cell: a one-byte code from the kernel, max_pool2d's index otherwise
        if ctx.kernel:
            values, winners = _extension.max_forward(x, rows, cols)
        elif aggregation == "max":
            values, winners = F.max_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2, return_indices=True)
        else:
            values, winners = F.avg_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2), None
        ctx.identity, ctx.aggregation = identity, aggregation
        ctx.save_for_backward(x, winners, rows, cols)
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, winners, rows, cols = ctx.saved_tensors
        if ctx.kernel:
            return (*_extension.max_backward(grad, x, winners, rows, cols, ctx.needs_input_grad[0]), None)
        if ctx.identity and ctx.aggregation == "max":
            grad_x, grad_rows, grad_cols = _pixel_aligned_max_backward(grad, x, winners)
            return grad_x, grad_rows.to(rows.dtype), grad_cols.to(cols.dtype), None
        in_h, in_w = x.shape[-2:]
        query_shape = (rows.numel(), cols.numel())
        if ctx.aggregation == "max":
            grad_queries = F.max_unpool2d(grad, winners, kernel_size=2, stride=2, output_size=query_shape)
        else:
            grad_queries = grad.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) / 4
        row_lower, row_upper, row_weight = _taps(rows, in_h)
        col_lower, col_upper, col_weight = _taps(cols, in_w)
        row_weight, col_weight = row_weight.to(x.dtype), col_weight.to(x.dtype)
        lower_rows, upper_rows = x.index_select(-2, row_lower), x.index_select(-2, row_upper)
        blended_rows = torch.lerp(lower_rows, upper_rows, row_weight.unsqueeze(-1))
        # d(query)/d(col_j) = blended[upper_j] - blended[lower_j]: contract over every row first
        contracted = blended_rows.reshape(-1, in_w).T @ grad_queries.reshape(-1, grad_queries.shape[-1])
        columns = torch.arange(cols.numel(), device=x.device)
        grad_cols = contracted[col_upper, columns] - contracted[col_lower, columns]
        interpolation = _column_matrix(col_lower, col_upper, 1 - col_weight, col_weight, in_w)
        grad_rows_blended = grad_queries @ interpolation.T
        grad_rows = (grad_rows_blended * (upper_rows - lower_rows)).sum((0, 1, 3))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x)
            grad_x.index_add_(-2, row_lower, grad_rows_blended * (1 - row_weight).unsqueeze(-1))
            grad_x.index_add_(-2, row_upper, grad_rows_blended * row_weight.unsqueeze(-1))
        return grad_x, grad_rows.to(rows.dtype), grad_cols.to(cols.dtype), None


def _pixel_aligned_max_backward(grad: Tensor, x: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of max DynOPool at r = 1/2, where the query points are the pixels: the input
    gradient is ``max_pool2d``'s, and a query row's gradient is that gradient times the forward
    difference to the next row, summed over the row (likewise for columns)."""
    grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    grad_rows = (grad_x[..., :-1, :] * (x[..., 1:, :] - x[..., :-1, :])).sum((0, 1, 3))
    grad_cols = (grad_x[..., :-1] * (x[..., 1:] - x[..., :-1])).sum((0, 1, 2))
    return grad_x, F.pad(grad_rows, (0, 1)), F.pad(grad_cols, (0, 1))


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
        size: output size per axis used to place the query points, shape (2,): the
            straight-through size from :func:`ste_output_size`, whose value equals ``out_size``
            and whose gradient reaches the scale.
        out_size: integer output size (H_out, W_out).
        aggregation: ``'max'`` (the paper's choice) or ``'mean'``.
    """
    out_h, out_w = out_size
    in_h, in_w = x.shape[-2:]
    rows = query_coordinates(in_h, out_h, size[0])
    cols = query_coordinates(in_w, out_w, size[1])
    return _DynOPool.apply(x, rows, cols, aggregation)
