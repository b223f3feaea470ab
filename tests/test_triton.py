"""The Triton kernels (dynopool_nas._triton) checked on the CPU in Triton's interpreter, against the
compiled CPU kernels, the float64 grid_sample reference and max_pool2d; and compiled for an H200."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import reference_dynopool

from dynopool_nas import _extension, _triton
from dynopool_nas.ops import query_coordinates

pytest.importorskip("triton")

# (input H, W) -> (output H, W): off the grid, upsampling, pixel-aligned (r = 1/2), odd and tiny
CASES = [((9, 11), (4, 5)), ((5, 4), (8, 7)), ((8, 10), (4, 5)), ((5, 3), (2, 2))]
LAYOUTS = [torch.contiguous_format, torch.channels_last]

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# Triton builds its library functions (tl.sum, ...) when it is imported, interpreted only if the
# variable was set by then: so the kernel tests run in a fresh process, started by
# test_kernels_in_the_triton_interpreter, and are skipped in the suite's own process.
interpreted = pytest.mark.skipif(not INTERPRETING, reason="runs in a subprocess under TRITON_INTERPRET=1")


@pytest.fixture(scope="module")
def kernels():
    """``dynopool_nas._triton``, its kernels built for Triton's interpreter (CPU tensors)."""
    assert _triton.INTERPRETED
    return _triton


@pytest.fixture(scope="module")
def cpu_ops():
    """The compiled CPU kernels (``torch.ops.dynopool_nas``), the semantics to match."""
    if not _extension.cpu_kernel_available():
        pytest.skip("the compiled CPU kernels are not available here")
    return _extension


def _coordinates(in_size: tuple[int, int], out_size: tuple[int, int], sizes=None, dtype=torch.float32):
    """Query rows and columns of DynOPool's grid for (possibly continuous) output ``sizes``."""
    sizes = sizes if sizes is not None else [torch.tensor(float(s), dtype=dtype) for s in out_size]
    return tuple(query_coordinates(i, o, s) for i, o, s in zip(in_size, out_size, sizes))


def _input(in_size, layout=torch.contiguous_format, dtype=torch.float32, batch=2, channels=3):
    return torch.randn(batch, channels, *in_size, dtype=torch.float64).to(dtype).to(memory_format=layout)


@interpreted
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("in_size", "out_size"), CASES, ids=["off_grid", "upsampling", "aligned", "odd"])
def test_forward_and_backward_match_the_cpu_kernels(in_size, out_size, layout, kernels, cpu_ops):
    x = _input(in_size, layout)
    rows, cols = _coordinates(in_size, out_size)
    values, codes = kernels.max_forward(x, rows, cols)
    expected_values, expected_codes = cpu_ops.max_forward(x, rows, cols)
    assert values.shape == (2, 3, *out_size) and codes.dtype == torch.uint8
    assert values.is_contiguous(memory_format=layout) and codes.is_contiguous(memory_format=layout)
    torch.testing.assert_close(values, expected_values, rtol=1e-6, atol=1e-6)
    assert torch.equal(codes, expected_codes)

    grad = torch.randn(values.shape)
    result = kernels.max_backward(grad, x, codes, rows, cols, True)
    expected = cpu_ops.max_backward(grad, x, codes, rows, cols, True)
    for name, got, want in zip(("input", "rows", "cols"), result, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} gradient")
    no_input = kernels.max_backward(grad, x, codes, rows, cols, False)
    assert no_input[0] is None
    assert torch.equal(no_input[1], result[1]) and torch.equal(no_input[2], result[2])


class _KernelPool(torch.autograd.Function):
    """Max DynOPool on the Triton kernels, so that autograd carries their gradients to the sizes."""

    @staticmethod
    def forward(ctx, x, rows, cols, module):
        values, codes = module.max_forward(x, rows, cols)
        ctx.save_for_backward(x, codes, rows, cols)
        ctx.module = module
        return values

    @staticmethod
    def backward(ctx, grad):
        x, codes, rows, cols = ctx.saved_tensors
        return (*ctx.module.max_backward(grad, x, codes, rows, cols, ctx.needs_input_grad[0]), None)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("in_size", "out_size", "sizes"), [((9, 11), (4, 5), (4.3, 4.6)), ((5, 4), (8, 7), (8.2, 6.7))], ids=["down", "up"])
def test_values_and_gradients_match_the_float64_reference(in_size, out_size, sizes, dtype, kernels):
    """Continuous sizes put every query off the pixels; gradients reach the sizes through the
    coordinates (input, row and column gradients all checked at once)."""
    x64 = torch.randn(2, 3, *in_size, dtype=torch.float64)
    upstream = torch.randn(2, 3, *out_size, dtype=torch.float64)
    results = []
    for use_kernels in (True, False):
        x = x64.clone().requires_grad_(True)
        size_h, size_w = (torch.tensor(s, dtype=torch.float64, requires_grad=True) for s in sizes)
        if use_kernels:
            rows, cols = _coordinates(in_size, out_size, [size_h.to(dtype), size_w.to(dtype)])
            out = _KernelPool.apply(x.to(dtype), rows, cols, kernels)
        else:
            out = reference_dynopool(x, size_h, size_w, *out_size)
        (out.double() * upstream).sum().backward()
        results.append((out.detach().double(), x.grad, size_h.grad, size_w.grad))
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    for name, got, want in zip(("values", "input gradient", "size_h gradient", "size_w gradient"), *results):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance, msg=name)


@interpreted
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_half_scale_is_max_pool2d_with_ties_and_nan(layout, kernels):
    """r = 1/2 on even sizes: values, winners (first maximum, last NaN) and the input gradient are
    max_pool2d's, on small integers (many ties) with NaNs."""
    x = torch.randint(0, 3, (2, 3, 8, 10)).float()
    x[0, 0, 2, 3] = x[1, 2, 5, 5] = x[1, 2, 4, 4] = float("nan")
    x = x.to(memory_format=layout)
    rows, cols = _coordinates((8, 10), (4, 5))
    values, codes = kernels.max_forward(x, rows, cols)
    expected, indices = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(values, expected, equal_nan=True, rtol=0, atol=0)
    positions = torch.stack([indices // 10 % 2, indices % 10 % 2])
    assert torch.equal(codes.long(), 2 * positions[0] + positions[1])
    grad = torch.randn(values.shape)
    grad_x = kernels.max_backward(grad, x, codes, rows, cols, True)[0]
    expected_grad = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                                    indices)
    assert torch.equal(grad_x, expected_grad)


@interpreted
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_ties_nan_and_infinity_off_the_grid_like_the_cpu_kernels(layout, kernels, cpu_ops):
    """Plateaus (ties inside and across cells), NaN, and infinities, which stay infinite where
    weighted as ``grid_sample`` weights (``(1 - w) a + w b``, not ``a + w (b - a)``)."""
    x = torch.zeros(2, 3, 9, 11)
    x[:, 1] = torch.randint(0, 2, (2, 9, 11)).float()
    x[0, 2, 4, 4] = x[1, 0, 0, 10] = float("nan")
    x[0, 0, 3, 5], x[1, 2, 8, 7], x[1, 1, 2, 0] = float("inf"), float("-inf"), float("inf")
    x = x.to(memory_format=layout)
    rows, cols = _coordinates((9, 11), (4, 5))
    values, codes = kernels.max_forward(x, rows, cols)
    expected_values, expected_codes = cpu_ops.max_forward(x, rows, cols)
    torch.testing.assert_close(values, expected_values, equal_nan=True)
    assert torch.equal(codes, expected_codes)
    grad = torch.randn(values.shape)
    grad_x, grad_rows, grad_cols = kernels.max_backward(grad, x, codes, rows, cols, True)
    expected_x, expected_rows, expected_cols = cpu_ops.max_backward(grad, x, codes, rows, cols, True)
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-6, atol=1e-6)
    # a NaN reaches the coordinate of its winning query; the CPU kernel also spreads it to the
    # other query row of the cell, so compare where the CPU's sums are finite
    for got, want in ((grad_rows, expected_rows), (grad_cols, expected_cols)):
        assert got.isnan().any() and not (got.isnan() & ~want.isnan()).any()
        torch.testing.assert_close(got[want.isfinite()], want[want.isfinite()], rtol=1e-5, atol=1e-5)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_half_precision_tracks_the_cpu_kernels_and_float32(dtype, layout, kernels, cpu_ops):
    """Queries are rounded to the map's dtype and compared (as on the CPU); sums run in float32.
    Triton's interpreter rounds float32 to bfloat16 toward zero (a GPU, like the CPU, to nearest):
    bfloat16 values may differ from the CPU's by one step there."""
    x = _input((9, 11), layout, dtype)
    rows, cols = _coordinates((9, 11), (4, 5))
    values, codes = kernels.max_forward(x, rows, cols)
    expected_values, expected_codes = cpu_ops.max_forward(x, rows, cols)
    assert values.dtype == dtype
    step = 0 if dtype == torch.float16 else 2**-7
    torch.testing.assert_close(values, expected_values, rtol=step, atol=0)
    assert torch.equal(codes, expected_codes)
    values32 = kernels.max_forward(x.float(), rows, cols)[0]
    torch.testing.assert_close(values.float(), values32, rtol=1e-2, atol=1e-2)
    grad = torch.randn(values.shape).to(dtype)
    result = kernels.max_backward(grad, x, codes, rows, cols, True)
    expected = cpu_ops.max_backward(grad, x, codes, rows, cols, True)
    assert result[0].dtype == dtype and result[1].dtype == rows.dtype
    for name, got, want in zip(("input", "rows", "cols"), result, expected):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2, msg=f"{name} gradient")


@interpreted
def test_expanded_gradient_and_repeated_runs_give_identical_bits(kernels):
    """``out.sum().backward()`` hands over a gradient with zero strides; no atomics: same bits."""
    x = _input((9, 11))
    rows, cols = _coordinates((9, 11), (4, 5))
    values, codes = kernels.max_forward(x, rows, cols)
    expanded = torch.ones(()).expand(values.shape)
    first = kernels.max_backward(expanded, x, codes, rows, cols, True)
    second = kernels.max_backward(expanded.contiguous(), x, codes, rows, cols, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@interpreted
def test_available_and_bad_input(kernels):
    x = _input((9, 11))
    rows, cols = _coordinates((9, 11), (4, 5))
    assert kernels.available(x)
    assert not kernels.available(x.long()) and not kernels.available(x[0])
    with pytest.raises(ValueError, match="2\\*H_out row"):
        kernels.max_forward(x, rows[:-1], cols)
    with pytest.raises(ValueError, match="float32 or float64"):
        kernels.max_forward(x, rows.half(), cols)
    values, codes = kernels.max_forward(x, rows, cols)
    with pytest.raises(ValueError, match="uint8 codes"):
        kernels.max_backward(values, x, codes.long(), rows, cols, True)
    with pytest.raises(ValueError, match="must have shape"):
        kernels.max_backward(values[:, :, 1:], x, codes, rows, cols, True)


COMPILE_SCRIPT = """
import torch, triton
from triton.backends.compiler import GPUTarget
from dynopool_nas import _triton
from dynopool_nas.ops import query_coordinates

assert not _triton.INTERPRETED
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.uint8: "u8", torch.int32: "i32"}

def compile_for_h200(launch):
    signature, constants = {}, {}
    for param in launch.kernel.params:
        value = launch.args[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        else:
            signature[param.name] = "*" + TYPES[value.dtype] if isinstance(value, torch.Tensor) else "i32"
    source = triton.compiler.ASTSource(launch.kernel, signature, constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32))

for in_size, out_size, layout, dtype, kinds in [
    ((9, 11), (4, 5), torch.contiguous_format, torch.float16, ("forward", "coordinates", "input")),
    ((9, 11), (4, 5), torch.channels_last, torch.bfloat16, ("coordinates", "input")),
    ((8, 10), (4, 5), torch.channels_last, torch.float32, ("forward", "coordinates")),
]:
    x = torch.randn(2, 3, *in_size).to(dtype=dtype, memory_format=layout)
    rows, cols = (query_coordinates(i, o, torch.tensor(float(o))) for i, o in zip(in_size, out_size))
    values = torch.empty(2, 3, *out_size, dtype=dtype).to(memory_format=layout)
    codes = torch.empty(2, 3, *out_size, dtype=torch.uint8).to(memory_format=layout)
    ranges = torch.empty(2 * sum(in_size), dtype=torch.int32)
    launches = {"forward": _triton.forward_launch(x, rows, cols, values, codes),
                "coordinates": _triton.coordinate_launch(values, x, codes, rows, cols, torch.empty_like(x)),
                "input": _triton.input_launch(values, codes, rows, cols, ranges, torch.empty_like(x))}
    for kind in kinds:
        assert compile_for_h200(launches[kind]).asm["cubin"], kind
print("compiled")
"""


@pytest.mark.skipif(INTERPRETING, reason="runs in the suite's own process")
def test_kernels_in_the_triton_interpreter():
    """This module's kernel tests, in a fresh process with TRITON_INTERPRET=1 (about 20 s)."""
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1], env=environment)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.skipif(INTERPRETING, reason="runs in the suite's own process")
def test_cpu_tensors_need_the_interpreter():
    assert not _triton.INTERPRETED and not _triton.available(torch.zeros(1, 1, 4, 4))


@pytest.mark.skipif(INTERPRETING, reason="runs in the suite's own process")
def test_kernels_compile_for_an_h200():
    """The interpreter accepts what the compiler may not: build the kernels (each layout, the
    pixel-aligned and off-grid variants, half precisions) down to sm_90 machine code, no GPU needed."""
    pytest.importorskip("triton.backends.nvidia")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parents[1], env=environment)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
