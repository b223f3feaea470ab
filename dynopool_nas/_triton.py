"""Max DynOPool's Triton kernels, for CUDA tensors (thesis eq. 4.2; the CPU kernels' GPU twins).

The same operators as the CPU kernels (``csrc/cpu/dynopool_kernel.cpp``; the schema is in
``csrc/dynopool.cpp``), with the same semantics:

- :func:`max_forward` samples the four query points of every output cell (bilinear, at input
  pixel coordinates ``rows`` x ``cols``) and keeps the largest, with the winner's one-byte code
  ``2a + b`` for query ``(2p + a, 2q + b)``; the first maximum in row-major order wins and NaN
  propagates (the last NaN wins), as in ``max_pool2d``.
- :func:`max_backward` sends each cell's gradient to the winning query's four pixels (input
  gradient) and, through the bilinear derivative, to its row and its column coordinate (the
  forward difference on a pixel, as ``grid_sample`` takes it).

Both run on NCHW and channels-last maps (any strides, in fact; the layout only orders the work)
in float32, float16, bfloat16 and float64, computing in float32 (float64 for float64 maps).
Everything is deterministic, with no atomic operation: the coordinate gradients are summed per
program into a buffer that PyTorch reduces in a fixed order, and the input gradient is gathered
(each input pixel adds up the cells whose winning query reads it) instead of scattered.

The coordinates must be those of :func:`dynopool_nas.ops.query_coordinates`: nondecreasing, in
``[0, size - 1]`` (taps outside are clamped, never read out of bounds), and on the pixels where
``H_in = 2 * H_out`` and ``W_in = 2 * W_out`` (r = 1/2 on even sizes), where the kernels read the
2x2 windows directly, as ``max_pool2d`` does. Mean aggregation has no kernel here: it runs on
PyTorch operators (``avg_pool2d`` over the query grid).

Under ``TRITON_INTERPRET=1`` (read when this module is imported) the kernels run on CPU tensors in
Triton's interpreter, which is how the tests check them on machines without a GPU (the variable
must be set before triton is imported: ``tl.sum`` and other library functions are built then).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from triton import knobs
except ImportError:  # the kernels below are defined but never launched
    triton = tl = knobs = None

# whether the kernels of this module were built for Triton's interpreter (CPU tensors)
INTERPRETED: bool = knobs is not None and bool(knobs.runtime.interpret)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
COORDINATE_DTYPES = (torch.float32, torch.float64)
_TILE = 1024  # elements per program
_MAX_ELEMENTS = 2**31 - 1 - _TILE  # indices are 32-bit
_NUM_WARPS = 4


def _jit(fn: Any) -> Any:
    return fn if triton is None else triton.jit(fn)


def available(x: Tensor) -> bool:
    """Whether the kernels can compute on ``x``: Triton is importable and ``x`` is a 4-D CUDA tensor
    (a CPU tensor where this module was imported under ``TRITON_INTERPRET=1``) of a supported
    dtype with fewer than 2**31 elements."""
    if triton is None or x.dim() != 4 or x.dtype not in DTYPES or x.numel() > _MAX_ELEMENTS:
        return False
    return x.device.type == ("cpu" if INTERPRETED else "cuda")


# ---------------------------------------------------------------------------------------------
# Kernels


@_jit
def _tap(coords_ptr, index, mask, size):
    """Lower and upper pixel of query ``index`` on one axis and the upper one's weight: linear
    interpolation at the fractional pixel coordinate (eq. 4.2); the upper tap stops at the border."""
    u = tl.load(coords_ptr + index, mask=mask, other=0.0)
    floor = tl.floor(u)
    lower = tl.minimum(tl.maximum(floor.to(tl.int32), 0), size - 1)
    return lower, tl.minimum(lower + 1, size - 1), u - floor


@_jit
def _share(lower, upper, weight, pixel):
    """How much of a query sampled from taps ``lower``/``upper`` (the upper's ``weight``) comes
    from ``pixel`` on that axis (0 where the query does not read it)."""
    return tl.where(lower == pixel, 1 - weight, 0.0) + tl.where(upper == pixel, weight, 0.0)


@_jit
def _query(plane, row_tap, col_tap, row_stride, col_stride, mask, ACC: tl.constexpr):
    """A query point: its four pixels weighted as ``grid_sample`` weights them, ``(1 - w) a + w b``
    (an infinite pixel with a positive weight stays infinite; a pixel inside the input with weight
    0 still counts, since 0 * inf is NaN), rows first, as the CPU kernel; on the last row or
    column, which has no neighbour past it, the pixel alone."""
    row_lower, row_upper, row_weight = row_tap
    col_lower, col_upper, col_weight = col_tap
    row_weight, col_weight = row_weight.to(ACC), col_weight.to(ACC)
    top_left = tl.load(plane + row_lower * row_stride + col_lower * col_stride, mask=mask, other=0).to(ACC)
    bottom_left = tl.load(plane + row_upper * row_stride + col_lower * col_stride, mask=mask, other=0).to(ACC)
    top_right = tl.load(plane + row_lower * row_stride + col_upper * col_stride, mask=mask, other=0).to(ACC)
    bottom_right = tl.load(plane + row_upper * row_stride + col_upper * col_stride, mask=mask, other=0).to(ACC)
    below = row_upper != row_lower
    left = tl.where(below, (1 - row_weight) * top_left + row_weight * bottom_left, top_left)
    right = tl.where(below, (1 - row_weight) * top_right + row_weight * bottom_right, top_right)
    return tl.where(col_upper != col_lower, left * (1 - col_weight) + right * col_weight, left)


@_jit
def _best_of_four(a, b, c, d):
    """The largest of four queries and its code: the first maximum wins, NaN propagates and the
    last NaN wins, as in ``max_pool2d``."""
    larger_ab = tl.where(b > a, b, a)
    larger_cd = tl.where(d > c, d, c)
    largest = tl.where(larger_cd > larger_ab, larger_cd, larger_ab)
    after_a = (a != largest).to(tl.int32)
    after_b = (b != largest).to(tl.int32)
    after_c = (c != largest).to(tl.int32)
    nan_b, nan_c, nan_d = b != b, c != c, d != d
    any_nan = (a != a) | nan_b | nan_c | nan_d
    last_nan = tl.where(nan_d, 3, tl.where(nan_c, 2, nan_b.to(tl.int32)))
    code = tl.where(any_nan, last_nan, after_a * (1 + after_b * (1 + after_c)))
    return tl.where(any_nan, a + b + c + d, largest), code


@_jit
def _first_exceeding(coords_ptr, count, size, threshold, UPPER: tl.constexpr, STEPS: tl.constexpr):
    """The first query whose lower (or, with ``UPPER``, upper) tap exceeds ``threshold``, by binary
    search over the nondecreasing coordinates (``STEPS`` halvings cover ``count`` queries)."""
    lo = threshold * 0
    hi = lo + count
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        active = lo < hi
        lower, upper, _weight = _tap(coords_ptr, mid, active, size)
        tap = upper if UPPER else lower
        exceeds = tap > threshold
        lo = tl.where(active & ~exceeds, mid + 1, lo)
        hi = tl.where(active & exceeds, mid, hi)
    return lo


@_jit
def _tap_ranges(coords_ptr, count, size, ranges_ptr, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """For every pixel ``i`` of one axis, the queries whose taps include it: ``ranges[i]`` is the
    first, ``ranges[size + i]`` one past the last (the coordinates are nondecreasing)."""
    for start in range(0, size, BLOCK):
        index = start + tl.arange(0, BLOCK)
        inside = index < size
        tl.store(ranges_ptr + index, _first_exceeding(coords_ptr, count, size, index - 1, True, STEPS), mask=inside)
        tl.store(ranges_ptr + size + index, _first_exceeding(coords_ptr, count, size, index, False, STEPS),
                 mask=inside)


@_jit
def _unravel(index, channels, height, width, CHANNELS_LAST: tl.constexpr):
    """``(n, c, h, w)`` of element ``index`` of an (N, C, height, width) map, counted in its memory
    order (channels innermost for channels-last)."""
    if CHANNELS_LAST:
        c = index % channels
        w = (index // channels) % width
        h = (index // (channels * width)) % height
        n = index // (channels * width * height)
    else:
        w = index % width
        h = (index // width) % height
        c = (index // (width * height)) % channels
        n = index // (width * height * channels)
    return n, c, h, w


@_jit
def _max_forward_kernel(
    x_ptr, rows_ptr, cols_ptr, values_ptr, codes_ptr,
    total, channels, height, width, out_h, out_w,
    x_sn, x_sc, x_sh, x_sw, out_sn, out_sc, out_sh, out_sw,
    ALIGNED: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """One output cell per lane, in the output's memory order."""
    cell = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cell < total
    n, c, p, q = _unravel(cell, channels, out_h, out_w, CHANNELS_LAST)
    plane = x_ptr + n * x_sn + c * x_sc
    # the queries rounded to the map's dtype, compared in the accumulator's (the same order)
    dtype = values_ptr.dtype.element_ty
    if ALIGNED:  # every query is the pixel of the same index
        window = plane + (2 * p) * x_sh + (2 * q) * x_sw
        a = tl.load(window, mask=mask, other=0).to(ACC)
        b = tl.load(window + x_sw, mask=mask, other=0).to(ACC)
        c_ = tl.load(window + x_sh, mask=mask, other=0).to(ACC)
        d = tl.load(window + x_sh + x_sw, mask=mask, other=0).to(ACC)
    else:
        even_row = _tap(rows_ptr, 2 * p, mask, height)
        odd_row = _tap(rows_ptr, 2 * p + 1, mask, height)
        even_col = _tap(cols_ptr, 2 * q, mask, width)
        odd_col = _tap(cols_ptr, 2 * q + 1, mask, width)
        a = _query(plane, even_row, even_col, x_sh, x_sw, mask, ACC).to(dtype).to(ACC)
        b = _query(plane, even_row, odd_col, x_sh, x_sw, mask, ACC).to(dtype).to(ACC)
        c_ = _query(plane, odd_row, even_col, x_sh, x_sw, mask, ACC).to(dtype).to(ACC)
        d = _query(plane, odd_row, odd_col, x_sh, x_sw, mask, ACC).to(dtype).to(ACC)
    best, code = _best_of_four(a, b, c_, d)
    out = n * out_sn + c * out_sc + p * out_sh + q * out_sw
    tl.store(values_ptr + out, best.to(dtype), mask=mask)
    tl.store(codes_ptr + out, code.to(tl.uint8), mask=mask)


@_jit
def _max_backward_coords_kernel(
    grad_ptr, x_ptr, codes_ptr, rows_ptr, cols_ptr, grad_x_ptr, row_sums_ptr, col_sums_ptr, ranges_ptr,
    channels, height, width, out_h, out_w, lines, line_length, line_blocks,
    g_sn, g_sc, g_sh, g_sw, x_sn, x_sc, x_sh, x_sw, k_sn, k_sc, k_sh, k_sw, gx_sn, gx_sc, gx_sh, gx_sw,
    ALIGNED: tl.constexpr, CHANNELS_LAST: tl.constexpr, INPUT_GRAD: tl.constexpr, RANGES: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROW_STEPS: tl.constexpr,
    COL_STEPS: tl.constexpr, RANGE_BLOCK: tl.constexpr,
):
    """A tile of output cells: ``BLOCK_M`` lines by ``BLOCK_K`` cells along the contiguous axis
    (NCHW: lines (n, c, p), along q; channels-last: lines (n, p, q), along c). Each cell's gradient
    goes to its winning query's row and column coordinate, summed within the tile into
    ``row_sums`` / ``col_sums`` (even and odd query per output row or column). Where the queries
    are the pixels, the input gradient (``max_pool2d``'s) is written here too; off them, with
    ``RANGES``, the first program writes :func:`_tap_ranges` of both axes for the input gradient's
    gather (:func:`_max_backward_input_kernel`, launched next)."""
    if RANGES:  # noqa: SIM102 (a compile-time test, then a run-time one)
        if tl.program_id(0) == 0:
            _tap_ranges(rows_ptr, 2 * out_h, height, ranges_ptr, ROW_STEPS, RANGE_BLOCK)
            _tap_ranges(cols_ptr, 2 * out_w, width, ranges_ptr + 2 * height, COL_STEPS, RANGE_BLOCK)
    block_m = tl.program_id(0) // line_blocks
    block_k = tl.program_id(0) % line_blocks
    lines_1d = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    along_1d = block_k * BLOCK_K + tl.arange(0, BLOCK_K)
    line, along = lines_1d[:, None], along_1d[None, :]
    mask = (line < lines) & (along < line_length)
    if CHANNELS_LAST:
        q = line % out_w
        p = (line // out_w) % out_h
        n = line // (out_w * out_h)
        c = along
    else:
        p = line % out_h
        c = (line // out_h) % channels
        n = line // (out_h * channels)
        q = along
    g = tl.load(grad_ptr + n * g_sn + c * g_sc + p * g_sh + q * g_sw, mask=mask, other=0)
    code = tl.load(codes_ptr + n * k_sn + c * k_sc + p * k_sh + q * k_sw, mask=mask, other=0).to(tl.int32)
    a, b = code >> 1, code & 1
    qrow, qcol = 2 * p + a, 2 * q + b
    plane = x_ptr + n * x_sn + c * x_sc
    gradient = g.to(ACC)
    if ALIGNED:
        x00 = tl.load(plane + qrow * x_sh + qcol * x_sw, mask=mask, other=0).to(ACC)
        x10 = tl.load(plane + tl.minimum(qrow + 1, height - 1) * x_sh + qcol * x_sw, mask=mask, other=0).to(ACC)
        x01 = tl.load(plane + qrow * x_sh + tl.minimum(qcol + 1, width - 1) * x_sw, mask=mask, other=0).to(ACC)
        row_terms = gradient * (x10 - x00)
        col_terms = gradient * (x01 - x00)
        if INPUT_GRAD:  # the 2x2 windows tile the input: each pixel is written once
            window = grad_x_ptr + n * gx_sn + c * gx_sc + (2 * p) * gx_sh + (2 * q) * gx_sw
            zero = tl.full([BLOCK_M, BLOCK_K], 0, g.dtype)
            tl.store(window, tl.where(code == 0, g, zero), mask=mask)
            tl.store(window + gx_sw, tl.where(code == 1, g, zero), mask=mask)
            tl.store(window + gx_sh, tl.where(code == 2, g, zero), mask=mask)
            tl.store(window + gx_sh + gx_sw, tl.where(code == 3, g, zero), mask=mask)
    else:
        row_lower, row_upper, row_weight = _tap(rows_ptr, qrow, mask, height)
        col_lower, col_upper, col_weight = _tap(cols_ptr, qcol, mask, width)
        row_weight, col_weight = row_weight.to(ACC), col_weight.to(ACC)
        x00 = tl.load(plane + row_lower * x_sh + col_lower * x_sw, mask=mask, other=0).to(ACC)
        x01 = tl.load(plane + row_lower * x_sh + col_upper * x_sw, mask=mask, other=0).to(ACC)
        x10 = tl.load(plane + row_upper * x_sh + col_lower * x_sw, mask=mask, other=0).to(ACC)
        x11 = tl.load(plane + row_upper * x_sh + col_upper * x_sw, mask=mask, other=0).to(ACC)
        row_terms = gradient * ((1 - col_weight) * (x10 - x00) + col_weight * (x11 - x01))
        col_terms = gradient * ((1 - row_weight) * (x01 - x00) + row_weight * (x11 - x10))
    zero_terms = tl.full([BLOCK_M, BLOCK_K], 0, ACC)
    row_terms = tl.where(mask, row_terms, zero_terms)
    col_terms = tl.where(mask, col_terms, zero_terms)
    line_sums = row_sums_ptr + (block_k * lines + lines_1d) * 2
    line_ok = lines_1d < lines
    tl.store(line_sums, tl.sum(tl.where(a == 0, row_terms, zero_terms), axis=1), mask=line_ok)
    tl.store(line_sums + 1, tl.sum(tl.where(a == 1, row_terms, zero_terms), axis=1), mask=line_ok)
    if CHANNELS_LAST:  # a line is one output cell: its column is known
        col_line_sums = col_sums_ptr + (block_k * lines + lines_1d) * 2
        tl.store(col_line_sums, tl.sum(tl.where(b == 0, col_terms, zero_terms), axis=1), mask=line_ok)
        tl.store(col_line_sums + 1, tl.sum(tl.where(b == 1, col_terms, zero_terms), axis=1), mask=line_ok)
    else:  # the tile's columns are its q
        column_sums = col_sums_ptr + (block_m * line_length + along_1d) * 2
        along_ok = along_1d < line_length
        tl.store(column_sums, tl.sum(tl.where(b == 0, col_terms, zero_terms), axis=0), mask=along_ok)
        tl.store(column_sums + 1, tl.sum(tl.where(b == 1, col_terms, zero_terms), axis=0), mask=along_ok)


@_jit
def _max_backward_input_kernel(
    grad_ptr, codes_ptr, rows_ptr, cols_ptr, ranges_ptr, grad_x_ptr,
    total, channels, height, width,
    g_sn, g_sc, g_sh, g_sw, k_sn, k_sc, k_sh, k_sw, gx_sn, gx_sc, gx_sh, gx_sw,
    CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """The input gradient off the pixel grid, gathered, one input pixel ``(i, j)`` per lane in the
    input's memory order: for every query row ``qrow`` and column ``qcol`` whose taps include the
    pixel (from :func:`_tap_ranges`), the gradient of cell ``(qrow // 2, qcol // 2)`` where that
    query won, times the query's bilinear weight on the pixel."""
    pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pixel < total
    n, c, i, j = _unravel(pixel, channels, height, width, CHANNELS_LAST)
    row_first = tl.load(ranges_ptr + i, mask=mask, other=0)
    row_end = tl.load(ranges_ptr + height + i, mask=mask, other=0)
    col_first = tl.load(ranges_ptr + 2 * height + j, mask=mask, other=0)
    col_end = tl.load(ranges_ptr + 2 * height + width + j, mask=mask, other=0)
    g_plane = grad_ptr + n * g_sn + c * g_sc
    code_plane = codes_ptr + n * k_sn + c * k_sc
    result = tl.full([BLOCK], 0, ACC)
    for t in range(0, tl.max(row_end - row_first, axis=0)):
        qrow = row_first + t
        row_ok = mask & (qrow < row_end)
        row_lower, row_upper, row_weight = _tap(rows_ptr, qrow, row_ok, height)
        row_weight = row_weight.to(ACC)
        row_share = _share(row_lower, row_upper, row_weight, i)
        for s in range(0, tl.max(col_end - col_first, axis=0)):
            qcol = col_first + s
            ok = row_ok & (qcol < col_end)
            col_lower, col_upper, col_weight = _tap(cols_ptr, qcol, ok, width)
            col_weight = col_weight.to(ACC)
            col_share = _share(col_lower, col_upper, col_weight, j)
            g = tl.load(g_plane + (qrow // 2) * g_sh + (qcol // 2) * g_sw, mask=ok, other=0).to(ACC)
            code = tl.load(code_plane + (qrow // 2) * k_sh + (qcol // 2) * k_sw, mask=ok, other=0).to(tl.int32)
            result += tl.where(ok & (code == 2 * (qrow % 2) + qcol % 2), g * row_share * col_share, 0.0)
    out = grad_x_ptr + n * gx_sn + c * gx_sc + i * gx_sh + j * gx_sw
    tl.store(out, result.to(grad_x_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launches


@dataclass
class Launch:
    """One kernel launch: the kernel, its grid and its arguments in order, constexprs included."""

    kernel: Any
    grid: tuple[int]
    args: dict[str, Any]

    def __call__(self) -> None:
        self.kernel[self.grid](**self.args, num_warps=_NUM_WARPS)


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if _channels_last(x) else torch.contiguous_format


def _accumulator(x: Tensor) -> Any:
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _power_of_two(value: int, cap: int) -> int:
    return min(cap, triton.next_power_of_2(max(1, value)))


def _strides(prefix: str, t: Tensor) -> dict[str, int]:
    return dict(zip((f"{prefix}_sn", f"{prefix}_sc", f"{prefix}_sh", f"{prefix}_sw"), t.stride()))


def _aligned(x: Tensor, rows: Tensor, cols: Tensor) -> bool:
    """Whether the queries are the pixels: r = 1/2 on even sizes (``u_k = k`` exactly)."""
    return (rows.numel(), cols.numel()) == tuple(x.shape[-2:])


def _check_inputs(name: str, x: Tensor, rows: Tensor, cols: Tensor) -> None:
    for what, coords in (("rows", rows), ("cols", cols)):
        if coords.dim() != 1 or coords.numel() == 0 or coords.numel() % 2:
            raise ValueError(f"dynopool_nas.{name}: expected 2*H_out row and 2*W_out column coordinates (1-D, even, "
                             f"non-empty); got {what} of shape {tuple(coords.shape)}")
        if coords.dtype not in COORDINATE_DTYPES or coords.device != x.device:
            raise ValueError(f"dynopool_nas.{name}: {what} must be float32 or float64 on {x.device}, like the input; "
                             f"got {coords.dtype} on {coords.device}")
    if x.dim() != 4 or x.dtype not in DTYPES:
        raise ValueError(f"dynopool_nas.{name}: expected a 4-D float32, float16, bfloat16 or float64 input, got "
                         f"{x.dim()}-D {x.dtype}")
    out_elements = x.shape[0] * x.shape[1] * (rows.numel() // 2) * (cols.numel() // 2)
    if max(x.numel(), out_elements) > _MAX_ELEMENTS:
        raise ValueError(f"dynopool_nas.{name}: the Triton kernels index with 32 bits; a map of {x.numel()} elements "
                         f"resized to {out_elements} is too large: split the batch")


def forward_launch(x: Tensor, rows: Tensor, cols: Tensor, values: Tensor, codes: Tensor) -> Launch:
    """The forward kernel's launch for ``values`` and ``codes`` (N, C, H_out, W_out), of one layout."""
    total = values.numel()
    return Launch(_max_forward_kernel, (triton.cdiv(total, _TILE),), dict(
        x_ptr=x, rows_ptr=rows, cols_ptr=cols, values_ptr=values, codes_ptr=codes,
        total=total, channels=x.shape[1], height=x.shape[2], width=x.shape[3],
        out_h=values.shape[2], out_w=values.shape[3], **_strides("x", x), **_strides("out", values),
        ALIGNED=_aligned(x, rows, cols), CHANNELS_LAST=_channels_last(values), ACC=_accumulator(x), BLOCK=_TILE))


def _device_of(x: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``x``'s."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def max_forward(x: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Max DynOPool's output (N, C, H_out, W_out), its queries sampled at ``rows`` x ``cols``
    (``2*H_out`` and ``2*W_out`` input pixel coordinates), and the winner of each 2x2 window as a
    uint8 code ``2a + b`` for query ``(2p + a, 2q + b)``; both in ``x``'s memory format."""
    _check_inputs("max_forward", x, rows, cols)
    rows, cols = rows.detach().contiguous(), cols.detach().contiguous()
    shape = (x.shape[0], x.shape[1], rows.numel() // 2, cols.numel() // 2)
    values = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    codes = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=_memory_format(x))
    if values.numel():
        with _device_of(x):
            forward_launch(x, rows, cols, values, codes)()
    return values, codes


def coordinate_launch(grad: Tensor, x: Tensor, codes: Tensor, rows: Tensor, cols: Tensor,
                      grad_x: Tensor | None) -> Launch:
    """The launch of the kernel for the coordinates' gradient (and, on the pixel grid, the
    input's), with its buffers: partial sums, and the tap ranges the input gradient needs off the
    pixel grid."""
    batch, channels, out_h, out_w = grad.shape
    height, width = x.shape[2:]
    channels_last = _channels_last(codes)
    lines, line_length = (batch * out_h * out_w, channels) if channels_last else (batch * channels * out_h, out_w)
    block_k = _power_of_two(line_length, 64)
    block_m = _power_of_two(lines, _TILE // block_k)
    blocks_m, blocks_k = triton.cdiv(lines, block_m), triton.cdiv(line_length, block_k)
    accumulator = torch.float64 if x.dtype == torch.float64 else torch.float32
    row_sums = torch.empty(blocks_k, lines, 2, dtype=accumulator, device=x.device)
    col_shape = (blocks_k, lines, 2) if channels_last else (blocks_m, line_length, 2)
    col_sums = torch.empty(col_shape, dtype=accumulator, device=x.device)
    aligned = _aligned(x, rows, cols)
    ranges = None if aligned or grad_x is None else torch.empty(2 * (height + width), dtype=torch.int32,
                                                                 device=x.device)
    return Launch(_max_backward_coords_kernel, (blocks_m * blocks_k,), dict(
        grad_ptr=grad, x_ptr=x, codes_ptr=codes, rows_ptr=rows, cols_ptr=cols,
        grad_x_ptr=grad_x if grad_x is not None else x, row_sums_ptr=row_sums, col_sums_ptr=col_sums,
        ranges_ptr=ranges if ranges is not None else row_sums,
        channels=channels, height=height, width=width, out_h=out_h, out_w=out_w,
        lines=lines, line_length=line_length, line_blocks=blocks_k,
        **_strides("g", grad), **_strides("x", x), **_strides("k", codes),
        **_strides("gx", grad_x if grad_x is not None else x),
        ALIGNED=aligned, CHANNELS_LAST=channels_last, INPUT_GRAD=grad_x is not None and aligned,
        RANGES=ranges is not None, ACC=_accumulator(x), BLOCK_M=block_m, BLOCK_K=block_k,
        ROW_STEPS=rows.numel().bit_length(), COL_STEPS=cols.numel().bit_length(),
        RANGE_BLOCK=_power_of_two(max(height, width), _TILE)))


def input_launch(grad: Tensor, codes: Tensor, rows: Tensor, cols: Tensor, ranges: Tensor, grad_x: Tensor) -> Launch:
    """The launch of the kernel that gathers the input gradient off the pixel grid, reading the
    tap ``ranges`` that :func:`coordinate_launch`'s kernel wrote."""
    total = grad_x.numel()
    return Launch(_max_backward_input_kernel, (triton.cdiv(total, _TILE),), dict(
        grad_ptr=grad, codes_ptr=codes, rows_ptr=rows, cols_ptr=cols, ranges_ptr=ranges, grad_x_ptr=grad_x,
        total=total, channels=grad_x.shape[1], height=grad_x.shape[2], width=grad_x.shape[3],
        **_strides("g", grad), **_strides("k", codes), **_strides("gx", grad_x),
        CHANNELS_LAST=_channels_last(grad_x), ACC=_accumulator(grad_x), BLOCK=_TILE))


def _reduce_sums(row_sums: Tensor, col_sums: Tensor, grad: Tensor, channels_last: bool) -> tuple[Tensor, Tensor]:
    """The per-tile sums added up in a fixed order: gradients of the 2*H_out row and 2*W_out
    column coordinates (query ``2p + a`` is entry ``(p, a)``)."""
    batch, channels, out_h, out_w = grad.shape
    if channels_last:
        rows = row_sums.view(-1, batch, out_h, out_w, 2).sum((0, 1, 3))
        cols = col_sums.view(-1, batch, out_h, out_w, 2).sum((0, 1, 2))
    else:
        rows = row_sums.view(-1, batch * channels, out_h, 2).sum((0, 1))
        cols = col_sums.sum(0)
    return rows.reshape(-1), cols.reshape(-1)


def max_backward(grad: Tensor, x: Tensor, codes: Tensor, rows: Tensor, cols: Tensor,
                 input_grad: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """Gradients of max DynOPool to its input (``None`` unless ``input_grad``), its row and its
    column coordinates, from the output's gradient and :func:`max_forward`'s codes."""
    _check_inputs("max_backward", x, rows, cols)
    expected = (x.shape[0], x.shape[1], rows.numel() // 2, cols.numel() // 2)
    if tuple(grad.shape) != expected or tuple(codes.shape) != expected:
        raise ValueError(f"dynopool_nas.max_backward: grad and codes must have shape {expected} (N, C, H_out, W_out); "
                         f"got {tuple(grad.shape)} and {tuple(codes.shape)}")
    if codes.dtype != torch.uint8 or grad.dtype != x.dtype or grad.device != x.device or codes.device != x.device:
        raise ValueError(f"dynopool_nas.max_backward: expected {x.dtype} grad and uint8 codes on {x.device}; got "
                         f"{grad.dtype} grad on {grad.device}, {codes.dtype} codes on {codes.device}")
    rows, cols = rows.detach().contiguous(), cols.detach().contiguous()
    grad_x = torch.empty_like(x, memory_format=_memory_format(x)) if input_grad else None
    if grad.numel() == 0:
        zeros = torch.zeros(rows.numel() + cols.numel(), dtype=rows.dtype, device=x.device)
        return (grad_x.zero_() if grad_x is not None else None), zeros[: rows.numel()], zeros[rows.numel():]
    with _device_of(x):
        coordinates = coordinate_launch(grad, x, codes, rows, cols, grad_x)
        coordinates()
        if coordinates.args["RANGES"]:
            input_launch(grad, codes, rows, cols, coordinates.args["ranges_ptr"], grad_x)()
    grad_rows, grad_cols = _reduce_sums(coordinates.args["row_sums_ptr"], coordinates.args["col_sums_ptr"], grad,
                                        _channels_last(codes))
    return grad_x, grad_rows.to(rows.dtype), grad_cols.to(cols.dtype)
