"""Op-level correctness of DynOPool on every path: the compiled ops' autograd, second
derivatives, NaN and infinity, and the kernels' build folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import reference_dynopool, reference_layer
from test_layer import _layer, backward_path, kernels  # noqa: F401  (fixtures)

from dynopool_nas import _extension
from dynopool_nas.ops import pool_queries, query_coordinates

# query coordinates (input pixels) of 4 query rows in 5 and 4 query columns in 6, none on a
# pixel (a kink of the bilinear map) and none on the border; 4 != 5 and 4 != 6 (not r = 1/2)
ROWS = [0.31, 1.62, 2.47, 3.18]
COLS = [0.22, 1.81, 3.34, 4.67]


def _inputs(dtype=torch.float64):
    x = torch.randn(2, 1, 5, 6, dtype=dtype, requires_grad=True)
    rows = torch.tensor(ROWS, dtype=dtype, requires_grad=True)
    cols = torch.tensor(COLS, dtype=dtype, requires_grad=True)
    return x, rows, cols


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_first_and_second_derivatives_match_finite_differences(aggregation, backward_path):  # noqa: F811
    inputs = _inputs()

    def pool(x, rows, cols):
        return pool_queries(x, rows, cols, aggregation)

    assert torch.autograd.gradcheck(pool, inputs)
    assert torch.autograd.gradgradcheck(pool, inputs, fast_mode=True)


def test_a_gradient_penalty_gets_exact_second_derivatives(backward_path):  # noqa: F811
    """d/dw and d/dalpha of ||d loss / d input||^2 through a convolution and a DynOPool, against
    central differences (alpha: of the continuous surrogate, as its straight-through gradient
    is at alpha = H_in / H_out, where the rounded size equals the continuous one)."""
    in_size, out_size = (13, 17), (7, 5)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, *in_size, dtype=torch.float64)
    upstream = torch.randn(2, 3, *out_size, dtype=torch.float64)
    layer = _layer(tuple(i / o for i, o in zip(in_size, out_size)))

    def penalty(pool) -> torch.Tensor:
        images = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((pool(conv(images)) * upstream).sum(), images, create_graph=True)
        return (grad**2).sum()

    penalty(layer).backward()

    def surrogate(alpha: tuple[float, float]) -> float:
        sizes = [torch.tensor(i / a, dtype=torch.float64) for i, a in zip(in_size, alpha)]
        return float(penalty(lambda y: reference_dynopool(y, *sizes, *out_size)).detach())

    alpha, eps = layer.alpha.tolist(), 1e-6
    for axis in range(2):
        up, down = list(alpha), list(alpha)
        up[axis] += eps
        down[axis] -= eps
        fd = (surrogate(tuple(up)) - surrogate(tuple(down))) / (2 * eps)
        assert layer.alpha.grad[axis].item() == pytest.approx(fd, rel=1e-5)
        assert abs(fd) > 1e-3
    weight = conv.weight
    for index in [(0, 0, 0, 0), (1, 1, 1, 2), (2, 0, 2, 1)]:
        values = []
        for step in (eps, -2 * eps, eps):
            with torch.no_grad():
                weight[index] += step
            values.append(float(penalty(layer).detach()))
        high, low = values[:2]
        assert weight.grad[index].item() == pytest.approx((high - low) / (2 * eps), rel=1e-6)


def test_the_compiled_op_differentiates_like_the_layer(kernels):  # noqa: F811
    def op(x, rows, cols):
        return torch.ops.dynopool_nas.max_forward(x, rows, cols)[0]

    inputs = _inputs()
    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs, fast_mode=True)
    result = torch.library.opcheck(torch.ops.dynopool_nas.max_forward.default, tuple(t.detach() for t in inputs))
    assert set(result.values()) == {"SUCCESS"}


def test_the_compiled_backward_op_refuses_to_drop_a_gradient(kernels):  # noqa: F811
    x, rows, cols = (t.detach() for t in _inputs())
    values, codes = torch.ops.dynopool_nas.max_forward(x, rows, cols)
    args = (torch.randn_like(values), x, codes, rows, cols, True)
    result = torch.library.opcheck(torch.ops.dynopool_nas.max_backward.default, args)
    assert set(result.values()) == {"SUCCESS"}
    with pytest.raises(RuntimeError, match=r"no derivative of its own.*create_graph=True"):
        torch.ops.dynopool_nas.max_backward(args[0], x.requires_grad_(True), *args[2:])


def _with_non_finite(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    draw = torch.rand(shape, dtype=torch.float64, generator=generator)
    x[draw < 0.04] = float("inf")
    x[(draw >= 0.04) & (draw < 0.08)] = -float("inf")
    x[(draw >= 0.08) & (draw < 0.1)] = float("nan")
    return x


@pytest.mark.parametrize("alpha", [(2.3, 1.7), (0.6, 0.8), (1 / 1.3, 3.1)], ids=["down", "up", "mixed"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_nan_and_infinity_are_sampled_as_grid_sample_samples_them(alpha, aggregation, backward_path):  # noqa: F811
    """A NaN reaches only the queries that read it, an infinity with a positive weight stays
    infinite, 0 * inf inside the input is NaN and a pixel past the border is not read."""
    for seed in range(3):
        x = _with_non_finite((2, 3, 9, 11), seed)
        out = _layer(alpha, aggregation=aggregation)(x)
        expected = reference_layer(x, torch.tensor(alpha, dtype=torch.float64), aggregation)
        assert torch.allclose(out, expected, atol=1e-12, rtol=0, equal_nan=True)
        assert expected.isinf().any() and expected.isfinite().any()


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_nan_and_infinity_at_half_scale_are_max_pools(aggregation, backward_path):  # noqa: F811
    x = _with_non_finite((2, 3, 10, 12), 0)
    out = _layer((2.0, 2.0), aggregation=aggregation)(x)
    expected = F.max_pool2d(x, 2) if aggregation == "max" else F.avg_pool2d(x, 2)
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.nan_to_num(), expected.nan_to_num())


def test_the_sources_are_laid_out_per_device():
    """The schema once, the CPU kernels beside it; every file the build reads is hashed."""
    sources = _extension.read_sources()
    assert {"dynopool.cpp", "cpu/dynopool_kernel.cpp"} <= set(sources)
    assert b"TORCH_LIBRARY(dynopool_nas" in sources["dynopool.cpp"]
    assert b"TORCH_LIBRARY_IMPL(dynopool_nas, CPU" in sources["cpu/dynopool_kernel.cpp"]
    assert not any(b"TORCH_LIBRARY(" in source for name, source in sources.items() if name != "dynopool.cpp")


@pytest.mark.parametrize("edit", ["schema", "kernel", "new header", "moved"])
def test_the_build_folder_changes_with_any_source(edit):
    sources = _extension.read_sources()
    edited = dict(sources)
    if edit == "schema":
        edited["dynopool.cpp"] += b"\n// changed\n"
    elif edit == "kernel":
        edited["cpu/dynopool_kernel.cpp"] += b"\n// changed\n"
    elif edit == "new header":
        edited["cpu/helpers.h"] = b"#pragma once\n"
    else:
        edited["cpu/kernel.cpp"] = edited.pop("cpu/dynopool_kernel.cpp")
    assert _extension.build_name(edited) != _extension.build_name(sources)
    assert _extension.build_name(dict(reversed(sources.items()))) == _extension.build_name(sources)


def test_two_sources_of_one_file_name_are_refused(tmp_path):
    """torch names each object file after its source's file name alone: a second
    ``dynopool.cpp`` in a device folder would overwrite the first's object."""
    sources = {"dynopool.cpp": b"", "cpu/dynopool.cpp": b""}
    with pytest.raises(ValueError, match="share a file name"):
        _extension._sources_in(tmp_path, sources)


def test_a_second_checkout_loads_the_built_kernels_without_rebuilding(tmp_path, kernels):  # noqa: F811
    """Two checkouts with the same sources share one build: loading from another path must not
    recompile (the build would rewrite the library)."""
    sources = _extension.read_sources()
    library = _extension.build_directory(sources) / f"{_extension.build_name(sources)}.so"
    before = library.stat().st_mtime_ns
    checkout = tmp_path / "checkout" / "csrc"
    for name, source in sources.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes(source)
    script = (
        "import sys, pathlib; from dynopool_nas import _extension; "
        "_extension._CSRC = pathlib.Path(sys.argv[1]); assert _extension.cpu_kernel_available()"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(checkout)], check=True, env=env,
                   cwd=Path(__file__).parents[1], timeout=300)
    assert library.stat().st_mtime_ns == before


def test_without_a_compiler_the_layer_falls_back_with_one_warning(tmp_path):
    """A machine with no C++ compiler gets one warning and the PyTorch operators, forward and
    backward (a fresh build folder, so that no earlier build is loaded)."""
    script = (
        "import warnings, torch; from dynopool_nas import DynOPool2d, _extension\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always'); layer = DynOPool2d(); x = torch.randn(1, 2, 8, 8)\n"
        "    layer(x).sum().backward(); layer(x)\n"
        "built = [w for w in caught if 'could not build the C++ kernels' in str(w.message)]\n"
        "assert len(built) == 1 and issubclass(built[0].category, RuntimeWarning), [str(w.message) for w in caught]\n"
        "assert not _extension.cpu_kernel_available() and layer.alpha.grad is not None\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path),
           "CXX": str(tmp_path / "no-compiler")}
    env.pop(_extension.DISABLE_VARIABLE, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=Path(__file__).parents[1], timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_layer_with_nan_input_keeps_finite_cells_finite(backward_path):  # noqa: F811
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    x[0, 0, 5, 7] = float("nan")
    out = _layer((1 / 0.6, 1 / 0.45))(x)
    assert 0 < out.isnan().sum() <= 4  # the cells whose queries read the pixel, not its whole row



@pytest.fixture
def two_threads():
    """Two intra-op threads for one test (the suite runs with one), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _channels_last(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


def test_channels_last_gradients_on_two_threads_match_the_reference(kernels, two_threads):  # noqa: F811
    """Off the pixel grid, neighbouring output rows add into the same input rows: threads that
    split a channels-last map by output rows lost additions to the input gradient (up to 1.5 on
    entries of 3.6). The kernels' input and size gradients, 50 backward passes in a row, against
    grid_sample in float64."""
    x = _channels_last(1, 256, 5, 64)  # two output rows, one per thread, that share input row 2
    continuous = [s * r for s, r in zip(x.shape[2:], (0.43, 0.61))]
    sizes = [torch.tensor(size, dtype=torch.float64, requires_grad=True) for size in continuous]
    out_size = [round(size) for size in continuous]
    x_ref = x.clone().requires_grad_(True)
    ref = reference_dynopool(x_ref, *sizes, *out_size)
    upstream = _channels_last(*ref.shape, seed=1)
    (ref * upstream).sum().backward()
    rows, cols = (query_coordinates(s, o, size) for s, o, size in zip(x.shape[2:], out_size, sizes))
    for coords, s in zip((rows, cols), x.shape[2:]):  # no query on a pixel, a kink of the bilinear map
        inside = coords[(coords > 0) & (coords < s - 1)].detach()
        assert (inside - inside.round()).abs().min() > 1e-3
    values, codes = torch.ops.dynopool_nas.max_forward(x, rows.detach(), cols.detach())
    assert torch.allclose(values, ref, atol=1e-12, rtol=0)
    results = [torch.ops.dynopool_nas.max_backward(upstream, x, codes, rows.detach(), cols.detach(), True)
               for _ in range(50)]
    torch.set_num_threads(1)  # the comparisons: a busy machine makes each parallel op slow
    for grad_x, grad_rows, grad_cols in results:
        assert torch.allclose(grad_x, x_ref.grad, atol=1e-12, rtol=0)
        grad_sizes = torch.autograd.grad([rows, cols], sizes, [grad_rows, grad_cols], retain_graph=True)
        for got, expected in zip(grad_sizes, sizes):
            assert torch.allclose(got, expected.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    ("shape", "scale", "reverse"),
    [((1, 256, 8, 64), (0.43, 0.61), False), ((2, 64, 24, 20), (1.7, 0.9), False),
     ((2, 64, 8, 20), (2.7, 0.9), False), ((1, 128, 30, 16), (0.61, 0.43), True)],
    ids=["down", "up", "dense-rows", "unordered-rows"],
)
def test_channels_last_backward_is_the_same_on_one_and_two_threads(
    shape, scale, reverse, kernels, two_threads  # noqa: F811
):
    """The channels-last backward pass off the pixel grid gives bit-for-bit the same three
    gradients on one thread and on two (20 times), and the NCHW kernel's up to rounding: query
    rows so dense that bands of output rows must widen until alternate bands share no input row
    (dense-rows), and query rows in decreasing order, which the op accepts (unordered-rows)."""
    x = _channels_last(*shape)
    rows, cols = (
        query_coordinates(size, round(size * r), torch.tensor(size * r, dtype=torch.float64))
        for size, r in zip(shape[2:], scale)
    )
    rows = rows.flip(0) if reverse else rows
    values, codes = torch.ops.dynopool_nas.max_forward(x, rows, cols)
    grad = _channels_last(*values.shape, seed=1)
    plain_codes = torch.ops.dynopool_nas.max_forward(x.contiguous(), rows, cols)[1]
    assert torch.equal(plain_codes, codes)
    planes = torch.ops.dynopool_nas.max_backward(grad.contiguous(), x.contiguous(), plain_codes, rows, cols, True)
    torch.set_num_threads(1)
    single = torch.ops.dynopool_nas.max_backward(grad, x, codes, rows, cols, True)
    torch.set_num_threads(2)
    for expected, got in zip(planes, single):
        assert torch.allclose(got, expected, atol=1e-12, rtol=1e-12)
    doubles = [torch.ops.dynopool_nas.max_backward(grad, x, codes, rows, cols, True) for _ in range(20)]
    torch.set_num_threads(1)
    for double in doubles:
        assert all(torch.equal(got, expected) for got, expected in zip(double, single))
        assert all(torch.allclose(got, expected, atol=1e-12, rtol=1e-12) for got, expected in zip(double, planes))
