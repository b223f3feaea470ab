import pytest
import torch
from branches import TwoBranches, branch_gates
from torch import nn

import dynopool_nas.layer as layer_module
from dynopool_nas import DynOPool2d, GMACsCost, count_macs, dynopoolify, freeze_dynopools
from dynopool_nas.convert import dynopool_layers
from dynopool_nas.models import create_model


def test_fvcore_counts_match_timm_efficientnet_b0():
    report = count_macs(create_model("efficientnet_b0", 1000), (3, 224, 224))
    assert report.gmacs == pytest.approx(0.399, rel=0.01)
    assert report.dynopool == 0


@pytest.mark.parametrize(
    ("name", "gmacs"), [("vgg16_cifar", 0.31), ("resnet50_cifar", 1.31), ("mobilenetv2_cifar", 0.09)]
)
def test_cifar_models_cost_what_table_5_1_reports(name, gmacs):
    assert count_macs(create_model(name, 100), (3, 32, 32)).gmacs == pytest.approx(gmacs, rel=0.03)


def test_dynopool_sampling_and_max_are_counted():
    model = dynopoolify(create_model("vgg16_cifar", 100))
    report = count_macs(model, (3, 32, 32))
    pools = report.layers[report.layers["type"] == "DynOPool2d"]
    assert len(pools) == 4 and (pools["macs"] > 0).all()
    # r = 1/2 on 32x32: the query points are pixels; 3 comparisons per output of 64 channels
    assert pools["macs"].iloc[0] == 64 * 3 * 16 * 16
    assert 0 < report.dynopool_share < 0.01
    with torch.no_grad():
        model.features[6].alpha.fill_(1 / 0.6)  # 32 -> 19: lerp 38 rows x 32, then 38 x 38, then the max
    pools = count_macs(model, (3, 32, 32)).layers.query("type == 'DynOPool2d'")
    assert pools["macs"].iloc[0] == 64 * (38 * 32 + 38 * 38 + 3 * 19 * 19)


def test_a_frozen_dynopool_costs_what_the_learned_one_costs():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), DynOPool2d(0.6), nn.Conv2d(4, 4, 3, padding=1),
                          DynOPool2d(0.7))
    learned = count_macs(model, (1, 13, 13))
    frozen = count_macs(freeze_dynopools(model, (1, 13, 13)), (1, 13, 13))
    assert frozen.total == learned.total and frozen.dynopool == learned.dynopool
    # 13 -> 8 (16 query rows) -> 6: the sampling, then 3 operations per output, per channel
    assert learned.dynopool == 4 * (16 * (13 + 16) + 3 * 8 * 8) + 4 * (12 * (8 + 12) + 3 * 6 * 6)
    assert list(frozen.layers["type"]).count("FixedDynOPool2d") == 2


def _randomize_scales(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dynopool_layers(model):
            scale = 0.3 + 0.6 * torch.rand(2, generator=generator)
            layer.alpha.copy_(scale.reciprocal())


@pytest.mark.parametrize(
    ("name", "input_size", "placement"),
    [("vgg16_cifar", (3, 32, 32), "after"), ("resnet50_cifar", (3, 32, 40), "after"),
     ("mobilenetv2_cifar", (3, 36, 32), "after"), ("efficientnet_b0", (3, 64, 80), "after"),
     ("resnet50_cifar", (3, 32, 40), "before"), ("mobilenetv2_cifar", (3, 36, 32), "before"),
     ("efficientnet_b0", (3, 64, 80), "before")],
)
def test_gmacs_loss_equals_fvcore_at_init_and_after_the_scales_change(name, input_size, placement):
    model = dynopoolify(create_model(name, 10), placement=placement)
    cost = GMACsCost.from_model(model, input_size)
    assert cost().item() == count_macs(model, input_size).gmacs  # the same count, to the MAC
    _randomize_scales(model, seed=1)
    fresh = count_macs(model, input_size).gmacs
    assert cost().item() == fresh
    assert cost.initial_gmacs != pytest.approx(fresh, rel=0.05)  # the scales really changed the cost
    model(torch.zeros(1, *input_size))
    assert cost.feature_map_sizes() == {name: layer.output_size for name, layer in dynopool_layers(model)}


def _chain() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), DynOPool2d(0.5, name="p1"),
        nn.Conv2d(8, 8, 3, padding=1), DynOPool2d(0.5, name="p2"),
        nn.Conv2d(8, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def test_every_upstream_alpha_gets_the_gradient_of_the_continuous_cost(monkeypatch):
    model = _chain()
    cost = GMACsCost.from_model(model, (3, 32, 32))
    cost().backward()
    grads = torch.cat([model[1].alpha.grad, model[3].alpha.grad])
    assert (grads < 0).all()  # a larger alpha (smaller map) is cheaper

    # At r = 0.5 on 32x32 every size is an integer, so the straight-through gradient is the
    # derivative of the unrounded cost; compare with its central finite differences.
    monkeypatch.setattr(layer_module, "ste_output_size", lambda size, scale, low: torch.clamp_min(size * scale, low))
    eps = 1e-2
    for index, pool in enumerate((model[1], model[3])):
        for axis in range(2):
            with torch.no_grad():
                pool.alpha[axis] += eps
                up = cost().item()
                pool.alpha[axis] -= 2 * eps
                down = cost().item()
                pool.alpha[axis] += eps
            assert grads[2 * index + axis].item() == pytest.approx((up - down) / (2 * eps), rel=1e-3)


def test_snapshot_is_plain_numbers():
    model = _chain()
    snapshot = GMACsCost.from_model(model, (3, 32, 32)).snapshot()
    assert isinstance(snapshot["gmacs"], float)
    assert snapshot["sizes"] == {"p1": (16, 16), "p2": (8, 8)}


def test_model_without_dynopool_has_a_constant_cost():
    with pytest.warns(UserWarning, match="no DynOPool2d"):
        cost = GMACsCost.from_model(create_model("small_cnn", 10, in_chans=1), (1, 16, 16))
    assert not cost().requires_grad
    assert cost().item() == pytest.approx(count_macs(create_model("small_cnn", 10, in_chans=1), (1, 16, 16)).gmacs)


def test_gates_weight_each_layer_by_its_probability():
    model = TwoBranches()
    theta = torch.tensor(0.3, requires_grad=True)

    cost = GMACsCost.from_model(model, (3, 8, 8), gates=branch_gates(theta))
    small, large = 4 * 3 * 64, 4 * 3 * 25 * 64  # fvcore counts the weights of a convolution, not its bias
    pool = 4 * 3 * 16
    p = torch.sigmoid(theta).item()
    assert cost().item() * 1e9 == pytest.approx(p * small + (1 - p) * large + pool, rel=1e-6)
    assert cost(hard=True).item() * 1e9 == pytest.approx(small + pool, rel=1e-6)
    cost().backward()
    assert theta.grad < 0  # more weight on the small branch lowers the cost
