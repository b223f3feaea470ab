"""The mathematics of DynOPool in one place (thesis chapter 4, section 5.2.2).

Everything that needs an output size -- the layer, the GMACs cost model, the exporter --
calls :func:`ste_output_size`; everything that samples calls :func:`pool_queries` (through
:func:`dynopool2d` for the learned layer).

All ``2*H_out x 2*W_out`` query points of eq. 4.2 lie on one regular grid: query row ``k``
sits at normalized coordinate ``-1 + (2k+1)/(2*h)``, i.e. at input pixel coordinate
``u_k = (k + 1/2) * H_in / (2*h) - 1/2``. DynOPool is therefore a separable bilinear
resample to ``(2*H_out, 2*W_out)`` followed by a 2x2, stride-2 aggregation, which is how
it is computed here.

Each query is ``grid_sample``'s bilinear sample (``padding_mode='border'``,
``align_corners=False``), NaN and infinity included: the four pixels around the query are
weighted, a pixel past the last row or column is left out, and a pixel inside the input
with weight 0 still counts (``0 * inf`` is NaN there, as in ``grid_sample``). Where every
query is a pixel (``r = 1/2`` on even sizes) the values are ``max_pool2d``'s
(``avg_pool2d``'s for mean), whatever the pixels hold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dynopool_nas import _extension

Aggregation = Literal["max", "mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean")


def check_aggregation(aggregation: str) -> Aggregation:
    """``aggregation`` if it is one of :data:`AGGREGATIONS` (how a cell combines its four
    query points, eq. 4.6), else a ValueError naming the choices."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return aggregation  # type: ignore[return-value]


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
    gradient. They are clamped to ``[0, in_size - 1]`` as ``grid_sample(padding_mode='border')``
    does, which also counts a point exactly on the border as clamped (no gradient).
    """
    dtype = torch.float64 if size.dtype == torch.float64 else torch.float32
    k = torch.arange(2 * out_size, device=size.device, dtype=dtype)
    u = (k + 0.5) * (in_size / (2.0 * size.to(dtype))) - 0.5
    inside = (u > 0) & (u < in_size - 1)
    return torch.where(inside, u, u.detach().clamp(0.0, in_size - 1))


def _taps(coords: Tensor, in_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lower and upper pixel index and the weight of the upper one, for linear interpolation
    at fractional pixel ``coords`` in ``[0, in_size - 1]`` (the weight keeps the coordinates'
    gradient, if any). On the last pixel the upper index repeats the lower one: there is no
    upper pixel, and :func:`_blend` leaves it out."""
    lower = coords.detach().floor()
    weight = coords - lower
    lower = lower.long()
    return lower, (lower + 1).clamp_max(in_size - 1), weight


def _blend(lower_values: Tensor, upper_values: Tensor, weight: Tensor, has_upper: Tensor) -> Tensor:
    """``(1 - w) * a + w * b`` as ``grid_sample`` weights two neighbours (so that an infinite
    ``a`` with ``w < 1`` stays infinite, where ``a + w * (b - a)`` gives NaN); just ``a`` where
    there is no upper neighbour (past the border)."""
    blended = lower_values * (1 - weight) + upper_values * weight
    return torch.where(has_upper, blended, lower_values)


def _resample(x: Tensor, coords: Tensor, dim: int) -> Tensor:
    """Linear interpolation along ``dim`` at fractional pixel ``coords`` (whole-slice copies)."""
    lower, upper, weight = _taps(coords, x.shape[dim])
    shape = [1] * x.dim()
    shape[dim] = -1
    lower_values, upper_values = x.index_select(dim, lower), x.index_select(dim, upper)
    return _blend(lower_values, upper_values, weight.to(x.dtype).view(shape), (upper != lower).view(shape))


def _queries(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The ``2*H_out x 2*W_out`` bilinearly sampled query points (eq. 4.2), separably: whole
    rows are copied and blended, then columns (on channels-last maps on the NHWC view, where
    every pixel is a contiguous block of channels). Each query reads only its own pixels, so a
    NaN reaches only the queries that read it, as in ``grid_sample``."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return _resample(_resample(x.permute(0, 2, 3, 1), rows, 1), cols, 2).permute(0, 3, 1, 2)
    return _resample(_resample(x, rows, -2), cols, -1)


def _query_grid(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The query grid, which at r = 1/2 on even sizes is the input itself (``u_k = k``)."""
    if (rows.numel(), cols.numel()) == (x.shape[-2], x.shape[-1]):
        return x
    return _queries(x, rows, cols)


def _pool_by_operators(x: Tensor, rows: Tensor, cols: Tensor, aggregation: str) -> Tensor:
    """DynOPool by PyTorch operators alone, differentiated by autograd (what TorchScript runs)."""
    grid = _query_grid(x, rows, cols)
    if aggregation == "max":
        return F.max_pool2d(grid, kernel_size=2, stride=2)
    return F.avg_pool2d(grid, kernel_size=2, stride=2)


class Kernels(NamedTuple):
    """Compiled max DynOPool for one kind of device (the signatures of
    :func:`dynopool_nas._extension.max_forward` and :func:`~dynopool_nas._extension.max_backward`):
    the forward pass returns the output and the winner of each 2x2 window as a uint8 code
    ``2a + b`` for query ``(2p + a, 2q + b)``; the backward pass the gradients to the input (if
    asked), the row and the column coordinates."""

    forward: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    backward: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, bool], tuple[Tensor | None, Tensor, Tensor]]


CPU_KERNELS = Kernels(_extension.max_forward, _extension.max_backward)


def _kernels_for(x: Tensor, aggregation: str) -> Kernels | None:
    """Where DynOPool computes, decided here alone: compiled kernels for ``x``'s device, or None
    for PyTorch operators (mean aggregation; TorchScript tracing, which sees PyTorch operators;
    no kernels for the device, or none built). ``torch.compile`` puts the CPU kernels in its graph
    as the ops ``torch.ops.dynopool_nas.max_forward`` / ``max_backward`` (registered with their
    fake implementations and derivative); on CUDA it compiles the PyTorch operators."""
    if aggregation != "max" or torch.jit.is_tracing():
        return None
    if x.device.type == "cpu" and _extension.cpu_kernel_available():
        return CPU_KERNELS
    if x.device.type == "cuda" and _extension.kernels_enabled() and not torch.compiler.is_compiling():
        return _cuda_kernels(x)
    return None


@functools.cache
def _triton_module() -> Any:
    """:mod:`dynopool_nas._triton`, imported on the first CUDA tensor so that CPU users never
    import Triton; None where Triton is missing."""
    from dynopool_nas import _triton

    return _triton if _triton.triton is not None else None


def _cuda_kernels(x: Tensor) -> Kernels | None:
    """The Triton kernels where they can compute on ``x`` (a CUDA tensor of a supported dtype)."""
    module = _triton_module()
    if module is None or not module.available(x):
        return None
    return Kernels(module.max_forward, module.max_backward)


class _DynOPool(torch.autograd.Function):
    """DynOPool's sampling and 2x2 aggregation with a hand-written backward pass; the one
    autograd path of the learned layer and of the fixed-size resizer.

    Max runs in compiled kernels where :func:`_kernels_for` finds them (on the CPU: sampling
    and the 2x2 max in one pass, with a one-byte code of the winner; the backward pass in one
    pass over the output). Otherwise the query grid is built (:func:`_queries`) and pooled by
    ``max_pool2d`` (with indices) or ``avg_pool2d``, and the backward pass recomputes the grid
    rather than keeping it (memory as ``max_pool2d``'s). Where ``H_in = 2 * H_out`` and
    ``W_in = 2 * W_out`` (r = 1/2 on even sizes) every query is a pixel (``u_k = k``), so the
    values are ``max_pool2d(2, 2)``'s (``avg_pool2d``'s for mean).

    Backward: the coordinates' gradient is the bilinear derivative at each query (the forward
    difference on a pixel, as ``grid_sample`` takes it); coordinates on the border carry none
    (:func:`query_coordinates`). See :func:`_backward` for second derivatives.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, rows: Tensor, cols: Tensor, aggregation: str) -> Tensor:
        kernels = _kernels_for(x, aggregation)
        # the winner of each cell: a one-byte code from the kernels, max_pool2d's index otherwise
        if kernels is not None:
            values, winners = kernels.forward(x, rows, cols)
        elif aggregation == "max":
            values, winners = F.max_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2, return_indices=True)
        else:
            values, winners = F.avg_pool2d(_query_grid(x, rows, cols), kernel_size=2, stride=2), None
        ctx.kernels, ctx.aggregation = kernels, aggregation
        ctx.save_for_backward(x, winners, rows, cols)
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, winners, rows, cols = ctx.saved_tensors
        grads = _backward(grad, x, winners, rows, cols, ctx.aggregation, ctx.kernels, ctx.needs_input_grad[0])
        return (*grads, None)


def _backward(grad: Tensor, x: Tensor, winners: Tensor | None, rows: Tensor, cols: Tensor, aggregation: str,
              kernels: Kernels | None, input_grad: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """DynOPool's backward pass on every path: gradients to the input (if ``input_grad``), the
    row and the column coordinates, for the winners the forward pass recorded (kernel codes
    if ``kernels`` computed it, ``max_pool2d`` indices otherwise, None for mean).

    Under ``create_graph`` (autograd records this pass, for second derivatives such as a
    gradient penalty) it is computed by differentiable PyTorch operators on every path, so that
    the second derivatives are exact (with the winners held fixed, as for ``max_pool2d``);
    otherwise by the kernels, or by the fastest PyTorch form.
    """
    if torch.is_grad_enabled():
        if kernels is not None:
            winners = _indices_of_codes(winners, cols.numel())
        return _grid_backward(grad, x, winners, rows, cols, aggregation, input_grad)
    if kernels is not None:
        return kernels.backward(grad, x, winners, rows, cols, input_grad)
    if aggregation == "max" and (rows.numel(), cols.numel()) == tuple(x.shape[-2:]):
        return _pixel_aligned_max_backward(grad, x, winners, rows, cols)
    return _grid_backward(grad, x, winners, rows, cols, aggregation, input_grad)


def _indices_of_codes(codes: Tensor, query_w: int) -> Tensor:
    """``max_pool2d``'s flat indices into the query grid for the kernels' winner codes ``2a + b``
    (query ``(2p + a, 2q + b)`` of cell ``(p, q)``)."""
    out_h, out_w = codes.shape[-2:]
    p = torch.arange(out_h, device=codes.device).view(-1, 1)
    q = torch.arange(out_w, device=codes.device)
    codes = codes.long()
    return (2 * p + codes // 2) * query_w + 2 * q + codes % 2


def _grid_backward(grad: Tensor, x: Tensor, winners: Tensor | None, rows: Tensor, cols: Tensor, aggregation: str,
                   input_grad: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """The backward pass through the query grid, in differentiable PyTorch operators."""
    in_h, in_w = x.shape[-2:]
    query_shape = (rows.numel(), cols.numel())
    if aggregation == "max":
        grad_queries = F.max_unpool2d(grad, winners, kernel_size=2, stride=2, output_size=query_shape)
    else:
        grad_queries = grad.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) / 4
    row_lower, row_upper, row_weight = _taps(rows, in_h)
    col_lower, col_upper, col_weight = _taps(cols, in_w)
    row_weight, col_weight = row_weight.to(x.dtype), col_weight.to(x.dtype)
    lower_rows, upper_rows = x.index_select(-2, row_lower), x.index_select(-2, row_upper)
    blended_rows = _blend(lower_rows, upper_rows, row_weight.unsqueeze(-1), (row_upper != row_lower).unsqueeze(-1))
    # d(query)/d(col_j) = blended[upper_j] - blended[lower_j]: contract over every row first
    contracted = blended_rows.reshape(-1, in_w).T @ grad_queries.reshape(-1, grad_queries.shape[-1])
    columns = torch.arange(cols.numel(), device=x.device)
    grad_cols = contracted[col_upper, columns] - contracted[col_lower, columns]
    interpolation = _column_matrix(col_lower, col_upper, 1 - col_weight, col_weight, in_w)
    grad_rows_blended = grad_queries @ interpolation.T
    grad_rows = (grad_rows_blended * (upper_rows - lower_rows)).sum((0, 1, 3))
    grad_x = None
    if input_grad:
        grad_x = torch.zeros_like(x)
        grad_x.index_add_(-2, row_lower, grad_rows_blended * (1 - row_weight).unsqueeze(-1))
        grad_x.index_add_(-2, row_upper, grad_rows_blended * row_weight.unsqueeze(-1))
    return grad_x, grad_rows.to(rows.dtype), grad_cols.to(cols.dtype)


def _column_matrix(lower: Tensor, upper: Tensor, lower_weight: Tensor, upper_weight: Tensor, in_size: int) -> Tensor:
    """The (in_size, n) matrix whose column j holds ``lower_weight[j]`` at row ``lower[j]`` and
    ``upper_weight[j]`` at row ``upper[j]`` (summed where they coincide)."""
    columns = torch.arange(lower.numel(), device=lower.device)
    matrix = upper_weight.new_zeros(in_size, lower.numel())
    matrix = matrix.index_put((lower, columns), lower_weight.expand_as(columns), accumulate=True)
    return matrix.index_put((upper, columns), upper_weight.expand_as(columns), accumulate=True)


def _pixel_aligned_max_backward(grad: Tensor, x: Tensor, indices: Tensor, rows: Tensor,
                                cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of max DynOPool at r = 1/2, where the query points are the pixels: the input
    gradient is ``max_pool2d``'s, and a query row's gradient is that gradient times the forward
    difference to the next row, summed over the row (likewise for columns)."""
    grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    grad_rows = (grad_x[..., :-1, :] * (x[..., 1:, :] - x[..., :-1, :])).sum((0, 1, 3))
    grad_cols = (grad_x[..., :-1] * (x[..., 1:] - x[..., :-1])).sum((0, 1, 2))
    return grad_x, F.pad(grad_rows, (0, 1)).to(rows.dtype), F.pad(grad_cols, (0, 1)).to(cols.dtype)


def pool_queries(x: Tensor, rows: Tensor, cols: Tensor, aggregation: str = "max") -> Tensor:
    """DynOPool's output for query rows at input pixel coordinates ``rows`` and query columns at
    ``cols`` (from :func:`query_coordinates`; gradients reach them if they carry any): the
    2x2 aggregation of the bilinearly sampled query grid (eq. 4.2). One autograd Function
    computes it for every caller; TorchScript, which cannot call it, runs the same PyTorch
    operators and differentiates them by autograd."""
    if torch.jit.is_scripting():
        return _pool_by_operators(x, rows, cols, aggregation)
    return _apply(x, rows, cols, aggregation)


@torch.jit.unused
def _apply(x: Tensor, rows: Tensor, cols: Tensor, aggregation: str) -> Tensor:
    return _DynOPool.apply(x, rows, cols, aggregation)


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
    return pool_queries(x, rows, cols, aggregation)


def kernel_setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: tuple[Tensor, Tensor]) -> None:
    """``torch.library`` autograd for a compiled ``max_forward`` op called directly."""
    x, rows, cols = inputs
    ctx.save_for_backward(x, output[1], rows, cols)


def kernel_backward(kernels: Kernels) -> Callable[..., tuple[Tensor | None, Tensor, Tensor]]:
    """The derivative of a compiled ``max_forward`` op: :func:`_backward`, as for the layer."""

    def backward(ctx: Any, grad: Tensor, _grad_codes: Tensor | None) -> tuple[Tensor | None, Tensor, Tensor]:
        x, codes, rows, cols = ctx.saved_tensors
        return _backward(grad, x, codes, rows, cols, "max", kernels, ctx.needs_input_grad[0])

    return backward
