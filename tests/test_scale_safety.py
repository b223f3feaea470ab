"""A learned scale never ends a run: projection after every optimizer step, a step size that does
not depend on the layer, refusal of outputs past the size limits, and clear argument errors."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dynopool_nas import DynOPool2d, param_groups, project_scales_

UP, DOWN = 1.0, -1.0


def _ramp(size: int = 8) -> torch.Tensor:
    ramp = torch.arange(float(size))
    return (ramp[:, None] + ramp[None, :]).view(1, 1, size, size)


def _push(layer: DynOPool2d, x: torch.Tensor, direction: float) -> torch.Tensor:
    """A loss that wants larger maps (``UP``) or smaller ones: on a ramp, the mean of the cells'
    maxima exceeds the input's mean by about ``H_in / (4 H_out)``."""
    return direction * layer(x).mean()


def _train(layer, optimizer, direction, steps, x=None):
    x = _ramp() if x is None else x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            _push(layer, x, direction).backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _in_range(layer: DynOPool2d) -> bool:
    low, high = layer.alpha_bounds()
    alpha = layer.alpha.detach().tolist()
    return all(lo * (1 - 1e-6) <= a <= hi * (1 + 1e-6) for a, lo, hi in zip(alpha, low, high))


@pytest.mark.parametrize("direction", [UP, DOWN])
@pytest.mark.parametrize(
    "make_optimizer",
    [lambda p: torch.optim.Adam([p], lr=0.1),
     lambda p: torch.optim.Adam([p], lr=0.1, betas=(0.5, 0.999), weight_decay=1e-3),  # NNI DARTS's
     lambda p: torch.optim.SGD([p], lr=1.0, momentum=0.9)],
    ids=["adam", "darts-adam", "sgd"],
)
def test_a_scale_pushed_for_500_steps_stops_in_range_with_at_most_one_warning(direction, make_optimizer):
    layer = DynOPool2d(0.5, name="pool")
    caught = _train(layer, make_optimizer(layer.alpha), direction, steps=500)
    assert len(caught) <= 1 and _in_range(layer)
    r_h, r_w = layer.scale
    if direction == UP:
        assert (r_h, r_w) == pytest.approx((4.0, 4.0)) and layer.output_size == (32, 32)
        assert len(caught) == 1 and "pool" in str(caught[0].message) and "max_scale" in str(caught[0].message)
        assert layer.bound_hit
    else:
        assert layer.output_size == (2, 2) and 8 * r_h > layer.min_size


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_a_scale_held_at_a_bound_keeps_its_gradient_and_comes_back(direction):
    layer = DynOPool2d(0.5)
    optimizer = torch.optim.Adam([layer.alpha], lr=0.1)
    _train(layer, optimizer, direction, steps=100)
    at_bound = layer.scale
    optimizer.zero_grad()
    _push(layer, _ramp(), -direction).backward()
    assert (layer.alpha.grad != 0).all()
    _train(layer, optimizer, -direction, steps=20)
    assert all((r - b) * -direction > 0.05 * b for r, b in zip(layer.scale, at_bound))


def test_scale_bounds_hold_alpha_where_its_gradient_lives():
    layer = DynOPool2d(0.5, scale_bounds=(0.25, 1.0))
    optimizer = torch.optim.Adam([layer.alpha], lr=0.1)
    caught = _train(layer, optimizer, UP, steps=100)
    assert layer.scale == pytest.approx((1.0, 1.0), rel=1e-3) and layer.bound_hit
    assert len(caught) == 1 and "scale_bounds" in str(caught[0].message)
    _train(layer, optimizer, DOWN, steps=20)
    assert max(layer.scale) < 0.9


def test_the_absolute_size_bound_applies_to_the_input_seen():
    layer = DynOPool2d(0.5, max_size=24)
    caught = _train(layer, torch.optim.Adam([layer.alpha], lr=0.1), UP, steps=200)
    assert layer.output_size == (24, 24) and len(caught) == 1 and "max_size=24" in str(caught[0].message)


def test_a_deep_copy_is_projected_too():
    layer = copy.deepcopy(DynOPool2d(0.5))
    _train(layer, torch.optim.SGD([layer.alpha], lr=10.0), UP, steps=5)
    assert _in_range(layer) and layer.scale == pytest.approx((4.0, 4.0))


def test_project_scales_clamps_alphas_changed_by_hand():
    model = nn.Sequential(DynOPool2d(0.5), nn.Conv2d(1, 1, 1), DynOPool2d(0.5))
    model(torch.randn(1, 1, 8, 8))
    with torch.no_grad():
        model[0].alpha.fill_(-3.0)
        model[2].alpha.fill_(100.0)
    project_scales_(model)
    assert model[0].scale == pytest.approx((4.0, 4.0))
    assert model[2].output_size == (2, 2) and 4 * model[2].scale[0] > 1.5


class _TwoPaths(nn.Module):
    """Two DynOPools: one on an 8x8 map, one on a 64x64 map with 1000 times the downstream weight."""

    def __init__(self, scale: float = 0.5) -> None:
        super().__init__()
        self.small, self.large = DynOPool2d(scale), DynOPool2d(scale)

    def forward(self, x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return weight * (self.small(x[..., :8, :8]).mean() + 1000 * self.large(x).mean())


def _alphas_after(scale_step: str, steps: int, weight: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model, x = _TwoPaths(), _ramp(64)
    start = [m.alpha.detach().clone() for m in (model.small, model.large)]
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, alpha_lr=0.01, scale_step=scale_step), momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x, weight).backward()
        optimizer.step()
    return start, [m.alpha.detach() for m in (model.small, model.large)]


def test_a_normalized_scale_step_is_relative_and_the_same_for_every_layer():
    start, end = _alphas_after("normalized", steps=1)
    for a, b in zip(start, end):  # alpha_lr, divided by the momentum's gain 1 / (1 - 0.9)
        assert torch.allclose((b - a).abs() / a, torch.full((2,), 0.001), rtol=1e-4)
    start, end = _alphas_after("plain", steps=1)  # the thesis's step: its size is the layer's
    small, large = (float(((b - a) / a).abs().max()) for a, b in zip(start, end))
    assert large > 100 * small


@pytest.mark.parametrize("optimizer_options", [{"momentum": 0.9, "nesterov": True}, {"momentum": 0.5}, {}])
def test_a_steady_push_changes_a_scale_by_alpha_lr_of_itself_per_step(optimizer_options):
    layer = DynOPool2d(0.5)
    optimizer = torch.optim.SGD(param_groups(layer, lr=0.1, alpha_lr=0.01), **optimizer_options)
    for _ in range(100):
        before = layer.alpha.detach().clone()
        optimizer.zero_grad()
        (1e-3 * layer.alpha.sum()).backward()  # a constant gradient
        optimizer.step()
    # a momentum buffer holds steps relative to earlier, larger alphas: up to 10% more
    assert torch.allclose(1 - layer.alpha.detach() / before, torch.full((2,), 0.0105), rtol=0.05)


def test_normalized_scale_steps_ignore_the_size_of_the_loss():
    _, unit = _alphas_after("normalized", steps=8)
    _, scaled = _alphas_after("normalized", steps=8, weight=1e4)
    assert all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(unit, scaled))
    with pytest.warns(RuntimeWarning, match="upper bound"):  # plain steps that overshoot alpha = 0
        _, unit = _alphas_after("plain", steps=8)
        _, scaled = _alphas_after("plain", steps=8, weight=1e4)
    assert not torch.allclose(unit[0], scaled[0], rtol=0.1)


def test_param_groups_default_to_normalized_scale_steps_and_refuse_unknown_ones():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), DynOPool2d(0.5))
    assert param_groups(model, lr=0.1)[1]["scale_step"] == "normalized"
    assert param_groups(model, lr=0.1, scale_step="plain")[1]["scale_step"] == "plain"
    with pytest.raises(ValueError, match="scale_step"):
        param_groups(model, lr=0.1, scale_step="adam")


def test_huge_scales_are_refused_before_allocating():
    with pytest.raises(ValueError, match=r"stem.*max_scale=4"):
        DynOPool2d(1e4, name="stem")
    layer = DynOPool2d(0.5, name="features.3")
    with torch.no_grad():
        layer.alpha.fill_(1e-4)  # an arch.json with scale 1e4: a 640000 x 640000 output
    with pytest.raises(ValueError, match=r"features\.3.*\(640000, 640000\).*max_scale"):
        layer(torch.randn(1, 1, 64, 64))
    with torch.no_grad():
        layer.alpha.fill_(1e-45)  # a scale beyond float range
    with pytest.raises(ValueError, match=r"features\.3.*max_size"):
        layer(torch.randn(1, 1, 4, 4))
    wide = DynOPool2d(3.0, name="up")  # within max_scale, but 3 * 2048 > 4096 pixels
    with pytest.raises(ValueError, match=r"up.*\(3, 6144\).*max_size=4096"):
        wide(torch.randn(1, 1, 1, 2048))


def test_larger_limits_can_be_asked_for():
    layer = DynOPool2d(8.0, max_scale=8, max_size=10_000)
    assert layer(torch.randn(1, 1, 2, 1250)).shape[-2:] == (16, 10_000)
    assert "max_scale=8" in repr(layer) and "max_size=10000" in repr(layer)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(torch.tensor(0.5), (0.5, 0.5)), (torch.tensor([0.5, 0.25]), (0.5, 0.25)),
     ((torch.tensor(0.5), 0.25), (0.5, 0.25)), (np.float32(0.5), (0.5, 0.5)), (np.array([0.5, 0.25]), (0.5, 0.25)),
     (1, (1.0, 1.0))],
)
def test_scales_given_as_tensors_and_numpy_numbers_are_accepted(scale, expected):
    assert DynOPool2d(scale).scale == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"scale": None}, TypeError), ({"scale": True}, TypeError), ({"scale": (True, 0.5)}, TypeError),
     ({"scale": "0.5"}, TypeError), ({"scale": torch.tensor(True)}, TypeError),
     ({"scale": torch.tensor([0.5, 0.5, 0.5])}, ValueError), ({"scale": torch.tensor(-0.5)}, ValueError),
     ({"scale_bounds": (0.1, 8.0)}, ValueError), ({"max_scale": math.inf}, ValueError),
     ({"max_scale": True}, ValueError), ({"max_size": 1}, ValueError), ({"max_size": 100.5}, ValueError)],
)
def test_bad_scale_arguments_say_what_is_expected(kwargs, error):
    with pytest.raises(error, match=r"scale|max_size"):
        DynOPool2d(**kwargs)


def test_normalization_applies_to_steps_that_take_a_closure():
    layer = DynOPool2d(0.5)
    optimizer = torch.optim.SGD(param_groups(layer, lr=0.1, alpha_lr=0.01), momentum=0.9)

    def closure():
        optimizer.zero_grad()
        loss = 1e3 * _push(layer, _ramp(), UP)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert torch.allclose(layer.alpha.detach(), torch.full((2,), 2.0 * (1 - 0.001)))


@pytest.mark.parametrize("scale_step", ["normalized", "plain"])
def test_fit_takes_normalized_scale_steps_by_default(scale_step):
    from torch.utils.data import DataLoader, TensorDataset

    from dynopool_nas import GMACsCost, dynopoolify
    from dynopool_nas.models import small_cnn
    from dynopool_nas.train import fit

    model = dynopoolify(small_cnn(num_classes=2, in_chans=1, width=4))
    cost = GMACsCost.from_model(model, (1, 16, 16))
    start = [m.alpha.detach().clone() for m in model.modules() if isinstance(m, DynOPool2d)]
    data = DataLoader(TensorDataset(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])), batch_size=4)
    kwargs = {} if scale_step == "normalized" else {"scale_step": scale_step}
    fit(model, data, data, cost, epochs=1, lr=0.05, progress=False, accelerator="cpu", **kwargs)
    end = [m.alpha.detach() for m in model.modules() if isinstance(m, DynOPool2d)]
    relative = torch.cat([((b - a) / a).abs() for a, b in zip(start, end)])
    # one Nesterov step (momentum 0.9, gain 1.9 on the first step, 10 on a steady push) of lr / 10
    expected = torch.full_like(relative, 1.9 * 0.005 / 10)
    assert torch.allclose(relative, expected, rtol=1e-3) == (scale_step == "normalized")


def test_a_scale_learned_up_to_its_bound_can_be_rebuilt():
    layer = DynOPool2d(0.5, max_scale=3.7)
    _train(layer, torch.optim.Adam([layer.alpha], lr=0.1), UP, steps=100)
    assert layer.scale[0] > 3.7  # 1 / float32(1 / 3.7)
    assert DynOPool2d(layer.scale, max_scale=3.7).scale == pytest.approx(layer.scale)
