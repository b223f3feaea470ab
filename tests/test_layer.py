import contextlib
import copy
import io
import math
import os
import random

import pytest
import torch
import torch.nn.functional as F
from reference import reference_dynopool, reference_layer

from dynopool_nas import DynOPool2d, FixedDynOPool2d, ShapeAdaptor2d, _extension


@pytest.fixture
def kernels():
    """The compiled CPU kernels, which must build unless switched off on purpose."""
    if os.environ.get(_extension.DISABLE_VARIABLE, "") not in ("", "0"):
        pytest.skip(f"the kernels are switched off by {_extension.DISABLE_VARIABLE}")
    assert _extension.cpu_kernel_available(), "the C++ kernels did not build; see the warning above"


@pytest.fixture(params=["kernel", "pytorch"])
def backward_path(request):
    """Runs a test once with the compiled CPU kernels and once with PyTorch's operators."""
    if request.param == "pytorch":
        with _extension.pytorch_fallback():
            yield request.param
        return
    request.getfixturevalue("kernels")
    yield request.param


def _layer(alpha: tuple[float, float], dtype=torch.float64, **kwargs) -> DynOPool2d:
    layer = DynOPool2d(**kwargs).to(dtype)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor(alpha, dtype=dtype))
    return layer


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 6, 10), (4, 5, 14, 4), (2, 16, 56, 56)])
def test_half_scale_on_even_sizes_is_max_pool(shape):
    x = torch.randn(shape)
    assert torch.allclose(DynOPool2d(0.5)(x), F.max_pool2d(x, 2, 2), atol=1e-6, rtol=0)


def test_half_scale_mean_is_avg_pool():
    x = torch.randn(2, 3, 10, 6)
    assert torch.allclose(DynOPool2d(0.5, aggregation="mean")(x), F.avg_pool2d(x, 2, 2), atol=1e-6)


def _distance_to_kink(in_size: int, size: int) -> float:
    """How close any query coordinate (eq. 4.2, in pixels) comes to a pixel centre, where
    bilinear sampling has a kink and only one-sided derivatives exist."""
    coords = [(k + 0.5) * in_size / (2 * size) - 0.5 for k in range(2 * size)]
    inside = [u for u in coords if -0.5 < u < in_size - 0.5]
    return min((abs(u - round(u)) for u in inside), default=1.0)


def _random_cases(count: int, seed: int = 0):
    """Random shapes and scales; a draw whose query points land on pixel centres (a kink of
    the bilinear map, where float rounding picks the one-sided derivative) is drawn again."""
    rng = random.Random(seed)
    while count:
        n, c = rng.choice([1, 2]), rng.choice([1, 3])
        h, w = rng.randint(3, 21), rng.randint(3, 21)
        r_h, r_w = rng.uniform(0.2, 3.0), rng.uniform(0.2, 3.0)
        size_h, size_w = max(round(h * r_h), 2), max(round(w * r_w), 2)
        if min(_distance_to_kink(h, size_h), _distance_to_kink(w, size_w)) < 1e-6:
            continue
        count -= 1
        yield n, c, h, w, 1.0 / r_h, 1.0 / r_w, rng.choice(["max", "mean"])


@pytest.mark.parametrize("case", list(_random_cases(24)))
def test_values_and_gradients_match_float64_grid_sample_reference(case, backward_path):
    n, c, h, w, alpha_h, alpha_w, aggregation = case
    torch.manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    layer = _layer((alpha_h, alpha_w), aggregation=aggregation)
    out = layer(x)
    ref_alpha = torch.tensor([alpha_h, alpha_w], dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = reference_layer(x_ref, ref_alpha, aggregation)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.allclose(layer.alpha.grad, ref_alpha.grad, atol=1e-9, rtol=1e-9)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-12)


@pytest.mark.parametrize(
    ("in_size", "out_size"), [((13, 17), (7, 5)), ((20, 9), (7, 13)), ((11, 11), (4, 19)), ((30, 24), (12, 16))]
)
def test_alpha_gradient_matches_finite_differences_of_continuous_surrogate(in_size, out_size):
    # At alpha = H_in / H_out the rounded size equals the continuous one, so the
    # straight-through gradient is the continuous surrogate's derivative there.
    assert min(_distance_to_kink(i, o) for i, o in zip(in_size, out_size)) > 1e-3
    torch.manual_seed(0)
    x = torch.randn(2, 3, *in_size, dtype=torch.float64)
    weights = torch.randn(2, 3, *out_size, dtype=torch.float64)
    alpha = [i / o for i, o in zip(in_size, out_size)]
    layer = _layer(tuple(alpha))
    (layer(x) * weights).sum().backward()

    def surrogate(a_h: float, a_w: float) -> float:
        size_h, size_w = (torch.tensor(i / a, dtype=torch.float64) for i, a in zip(in_size, (a_h, a_w)))
        return float((reference_dynopool(x, size_h, size_w, *out_size) * weights).sum())

    eps = 1e-7  # small enough that no max switches between neighbouring query points
    fd_h = (surrogate(alpha[0] + eps, alpha[1]) - surrogate(alpha[0] - eps, alpha[1])) / (2 * eps)
    fd_w = (surrogate(alpha[0], alpha[1] + eps) - surrogate(alpha[0], alpha[1] - eps)) / (2 * eps)
    assert layer.alpha.grad.tolist() == pytest.approx([fd_h, fd_w], rel=1e-5, abs=1e-7)
    assert abs(fd_h) > 1e-3 and abs(fd_w) > 1e-3


def test_output_size_rounds_and_upsamples_non_square():
    layer = DynOPool2d((0.43, 1.7))
    out = layer(torch.randn(1, 2, 20, 10))
    assert out.shape[-2:] == (round(20 * 0.43), round(10 * 1.7)) == layer.output_size
    assert layer.input_size == (20, 10)
    assert layer.size.tolist() == [9.0, 17.0] and layer.size.requires_grad
    assert layer.scale == pytest.approx((0.43, 1.7))


def test_min_size_bound_keeps_two_and_stops_the_gradient():
    layer = DynOPool2d((0.1, 0.5))
    out = layer(torch.randn(1, 1, 8, 8))
    assert out.shape[-2:] == (2, 4)
    out.sum().backward()
    assert layer.alpha.grad[0] == 0 and layer.alpha.grad[1] != 0


@pytest.mark.parametrize(
    "shape", [(1, 4, 9, 9), (3, 1, 7, 12), (2, 1, 3, 3)], ids=["batch1-odd", "one-channel", "tiny"]
)
def test_odd_sizes_single_channel_and_batch_one(shape):
    x = torch.randn(shape, dtype=torch.float64)
    alpha = torch.tensor([1 / 0.37, 1 / 0.81], dtype=torch.float64)
    out = _layer(tuple(alpha.tolist()))(x)
    assert torch.allclose(out, reference_layer(x, alpha), atol=1e-12)


@pytest.mark.parametrize("scale", [(0.6, 0.45), (0.5, 0.5)])
def test_channels_last_input_gives_the_same_result(scale, backward_path):
    x = torch.randn(2, 8, 16, 12, requires_grad=True)
    layer = DynOPool2d(scale)
    expected = layer(x)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    expected_grads = x.grad, layer.alpha.grad.clone()
    layer.alpha.grad = None
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    out = layer(x_cl)
    assert torch.allclose(out, expected, atol=1e-6)
    (out * upstream.to(memory_format=torch.channels_last)).sum().backward()
    assert torch.allclose(x_cl.grad, expected_grads[0], atol=1e-6)
    assert torch.allclose(layer.alpha.grad, expected_grads[1], rtol=1e-4, atol=1e-4)


def test_bfloat16_under_cpu_autocast_tracks_float32(backward_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), DynOPool2d((0.6, 0.45)))
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert torch.allclose(out.float(), expected, atol=0.05, rtol=0.02)
    out.float().sum().backward()
    assert model[1].alpha.grad.dtype == torch.float32 and torch.isfinite(model[1].alpha.grad).all()


def test_bad_inputs_name_the_layer_and_the_cause():
    layer = DynOPool2d(name="features.4")
    with pytest.raises(ValueError, match=r"features\.4.*4-D"):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match=r"features\.4.*floating"):
        layer(torch.ones(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        layer(torch.randn(1, 1, 0, 8))
    for bad in (float("nan"), -1.0, 0.0, math.inf):
        with torch.no_grad():
            layer.alpha.fill_(bad)
        with pytest.raises(ValueError, match=r"features\.4.*alpha"):
            layer(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": 0.0}, {"scale": float("nan")}, {"scale": (0.5, 0.5, 0.5)}, {"aggregation": "median"},
     {"scale_bounds": (2.0, 1.0)}, {"min_size": 0}],
)
def test_bad_constructor_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        DynOPool2d(**kwargs)


def test_scale_bounds_clamp_and_report_once():
    layer = DynOPool2d(0.5, scale_bounds=(0.25, 1.0))
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.5, 8.0]))  # r = (2.0, 0.125), both outside
    with pytest.warns(RuntimeWarning, match="scale_bounds"):
        out = layer(torch.randn(1, 1, 16, 16))
    assert layer.bound_hit and out.shape[-2:] == (16, 4)
    assert layer.scale == (1.0, 0.25)


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((2, 3, 8, 12), (0.5, 0.5)), ((1, 4, 6, 6), (0.5, 0.5)), ((2, 3, 9, 14), (0.37, 0.81)),
     ((1, 2, 7, 5), (1.6, 2.3))],
)
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_hand_written_backward_matches_autograd_of_the_sampler(shape, scale, aggregation, backward_path,
                                                               monkeypatch):
    import dynopool_nas.ops as ops

    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    results = []
    for hand_written in (True, False):
        if not hand_written:
            pool = F.max_pool2d if aggregation == "max" else F.avg_pool2d

            def autograd_version(x, rows, cols, _, pool=pool):
                return pool(ops._queries(x, rows, cols), 2, 2)

            monkeypatch.setattr(ops._DynOPool, "apply", autograd_version)
        layer = _layer((1 / scale[0], 1 / scale[1]), aggregation=aggregation)
        x.grad = None
        out = layer(x)
        (out * torch.linspace(-1, 2, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append((out.detach(), layer.alpha.grad.clone(), x.grad.clone()))
    (out_fast, alpha_fast, x_fast), (out_slow, alpha_slow, x_slow) = results
    if backward_path == "pytorch":  # the same operators in the same order
        assert torch.equal(out_fast, out_slow)
    else:  # the kernel evaluates the same formula in another floating-point order
        assert torch.allclose(out_fast, out_slow, atol=1e-12, rtol=0)
    assert torch.allclose(alpha_fast, alpha_slow, atol=1e-12) and alpha_fast.abs().sum() > 0
    assert torch.allclose(x_fast, x_slow, atol=1e-12)


def _run_both_paths(layer_alpha, x64, dtype):
    """Output and gradients of a max DynOPool once with the kernels and once with PyTorch's ops."""
    results = {}
    for path in ("kernel", "pytorch"):
        layer = _layer(layer_alpha, dtype=dtype)
        x = x64.to(dtype).clone().requires_grad_(True)
        with _extension.pytorch_fallback() if path == "pytorch" else contextlib.nullcontext():
            out = layer(x)
            upstream = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            (out * upstream.to(dtype)).sum().backward()
        results[path] = (out.detach(), x.grad, layer.alpha.grad)
    return results["kernel"], results["pytorch"]


@pytest.mark.parametrize("alpha", [(2.3, 1.7), (2.0, 2.0), (0.6, 0.8)])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-4),
                                                  (torch.bfloat16, 0.02)])
def test_kernels_and_pytorch_fallback_agree_in_every_dtype(alpha, dtype, tolerance, kernels):
    torch.manual_seed(0)
    (out, *grads), (out_ref, *grads_ref) = _run_both_paths(alpha, torch.randn(2, 5, 14, 18, dtype=torch.float64),
                                                           dtype)
    assert torch.allclose(out.double(), out_ref.double(), rtol=tolerance, atol=tolerance)
    if dtype == torch.bfloat16:
        return  # bf16 rounds the queries differently on the two paths, so near-ties pick other winners
    for kernel, fallback in zip(grads, grads_ref):
        assert torch.allclose(kernel, fallback, rtol=tolerance, atol=tolerance * fallback.abs().max())


def test_kernel_breaks_ties_like_max_pool(kernels):
    x = torch.randint(-1, 2, (2, 3, 12, 10), dtype=torch.float64)  # many equal maxima
    (out, grad_x, grad_alpha), (out_ref, grad_x_ref, grad_alpha_ref) = _run_both_paths((2.0, 2.0), x, torch.float64)
    assert torch.equal(out, out_ref) and torch.equal(grad_x, grad_x_ref)
    assert torch.allclose(grad_alpha, grad_alpha_ref, atol=1e-12)


@pytest.mark.parametrize("alpha", [(2.0, 2.0), (2.3, 1.7)])
def test_kernel_propagates_nan_like_its_reference(alpha, kernels):
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    x[0, 0, 3, 4] = float("nan")
    out = _layer(alpha)(x)
    if alpha == (2.0, 2.0):  # the queries are the pixels: max_pool2d's semantics
        expected = F.max_pool2d(x, 2)
    else:  # bilinear weights of 0 still carry NaN, as in grid_sample
        expected = reference_layer(x, torch.tensor(alpha, dtype=torch.float64), "max")
    assert out.isnan().any() and torch.equal(out.isnan(), expected.isnan())


def test_no_extension_variable_selects_the_pytorch_fallback(monkeypatch):
    monkeypatch.setenv(_extension.DISABLE_VARIABLE, "1")
    assert not _extension.cpu_kernel_available()
    x = torch.randn(1, 2, 9, 9, requires_grad=True)
    DynOPool2d(0.43)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_output_may_be_modified_in_place_before_backward():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    model = torch.nn.Sequential(DynOPool2d(0.5), torch.nn.ReLU(inplace=True))
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(model[0].alpha.grad).all()


def test_a_trained_model_can_be_copied_averaged_frozen_and_pickled():
    from timm.utils import ModelEmaV3
    from torch.optim.swa_utils import AveragedModel

    from dynopool_nas import create_model, dynopool_layers, dynopoolify, freeze_dynopools

    model = dynopoolify(create_model("small_cnn", num_classes=4, in_chans=2))
    x = torch.randn(4, 2, 16, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model(x).square().mean().backward()
    optimizer.step()
    model(x)  # a forward pass with autograd on: the modules must keep none of its graph
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(x), model(x))
    freeze_dynopools(model, (2, 16, 16))
    ModelEmaV3(model).update(model)
    AveragedModel(model).update_parameters(model)
    assert all(name.endswith(("weight", "bias", "alpha", "running_mean", "running_var", "num_batches_tracked"))
               for name in model.state_dict())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    _, layer = next(iter(dynopool_layers(model)))
    assert layer.size.tolist() == [8.0, 8.0] and layer.size.requires_grad


@pytest.mark.parametrize("build", [
    lambda: DynOPool2d(0.5, aggregation="median"),
    lambda: FixedDynOPool2d((4, 4), aggregation="median"),
    lambda: ShapeAdaptor2d(aggregation="median"),
], ids=["DynOPool2d", "FixedDynOPool2d", "ShapeAdaptor2d"])
def test_every_resizer_refuses_an_unknown_aggregation_with_the_choices(build):
    with pytest.raises(ValueError, match=r"aggregation must be one of \('max', 'mean'\), got 'median'"):
        build()
