"""Real one-shot NNI searches (NasExperiment) over tiny spaces on the bundled digits."""

import json
import logging
import math
import warnings

import pytest
import torch
from nni.nas.evaluator.pytorch import Classification
from nni.nas.experiment import NasExperiment
from nni.nas.strategy import DARTS, ENAS, Proxyless, RandomOneShot
from torch.utils.data import DataLoader, Subset

from dynopool_nas import DigitsDataset, GMACsCost, count_macs, create_model, dynopool_layers, dynopoolify
from search_spaces.arch import build_model, load_architecture, save_architecture
from search_spaces.cells import DynOPoolCellSpace
from search_spaces.converted import ConvertedSpace
from search_spaces.efficientnet import EfficientNetSpace
from strategies import DynOPoolDARTS, DynOPoolGumbelDARTS, GMACsConstraint
from strategies.constraint import supernet_cost
from strategies.export import export_architecture

SIZE = 12
INPUT = (1, SIZE, SIZE)


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


def _evaluator(epochs: int, train_images: int = 512, batch_size: int = 32, size: int = SIZE) -> Classification:
    train = Subset(DigitsDataset("train", size), range(train_images))
    val = Subset(DigitsDataset("val", size), range(128))
    return Classification(
        train_dataloaders=DataLoader(train, batch_size=batch_size, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=128),
        max_epochs=epochs, num_classes=10, learning_rate=0.01, accelerator="cpu",
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )


def _search(space, strategy, epochs: int = 1, **evaluator_options):
    torch.manual_seed(0)
    experiment = NasExperiment(space, _evaluator(epochs, **evaluator_options), strategy)
    experiment.run()
    return experiment


def test_darts_over_the_cell_space_searches_reports_and_exports(tmp_path):
    space = DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3)
    initial = {layer.name: layer.alpha.detach().clone() for _, layer in dynopool_layers(space)}
    strategy = DynOPoolDARTS(input_size=INPUT, alpha_learning_rate=0.05, constraint=GMACsConstraint(lam=1.0))
    _search(space, strategy)
    module = strategy.oneshot_module

    scales = module.scale_parameters()
    assert len(scales) == 2 and all(not torch.equal(p, initial[n]) for p, n in zip(scales, ("reduce1", "reduce2")))
    weight_optimizer = module.optimizers()[0] if isinstance(module.optimizers(), list) else module.optimizers()
    weight_ids = {id(p) for group in weight_optimizer.optimizer.param_groups for p in group["params"]}
    assert not weight_ids & {id(p) for p in scales}
    arch_groups = module.architecture_optimizers().optimizer.param_groups
    assert [(g["lr"], g["weight_decay"]) for g in arch_groups] == [(3e-4, 1e-3), (0.05, 0.0)]

    # every epoch's report carries these; NNI's in-process engine keeps the 'default' of each
    reports = module.history
    assert {"default", "gmacs", "params", "reduce1.h", "reduce1.w"} <= set(reports[-1])
    assert 0 <= reports[-1]["default"] <= 1 and reports[-1]["gmacs"] > 0
    metrics = strategy._mutated_model_space.metrics
    assert list(metrics.intermediates) == [r["default"] for r in reports] and metrics.final == reports[-1]["default"]

    arch = export_architecture(strategy)
    path = save_architecture(arch, tmp_path / "arch.json")
    loaded = load_architecture(path)
    assert loaded == json.loads(json.dumps(arch))
    model = build_model(DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3), loaded)
    assert {layer.name: list(layer.output_size) for _, layer in dynopool_layers(model)} == arch["sizes"]
    assert count_macs(model, INPUT).gmacs == pytest.approx(arch["metrics"]["gmacs"], rel=0.02)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(arch["metrics"]["params"], rel=0.01)


def test_gumbel_darts_searches_a_converted_model():
    strategy = DynOPoolGumbelDARTS(input_size=INPUT, alpha_learning_rate=0.05)
    _search(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), strategy)
    assert strategy.oneshot_module.history[-1]["features.3.h"] >= 2


def _final_gmacs(constraint, epochs=2, size=SIZE, seed=0, alpha_lr=0.05):
    strategy = DynOPoolDARTS(input_size=(1, size, size), alpha_learning_rate=alpha_lr, constraint=constraint)
    torch.manual_seed(seed)  # the space's initial weights too, not only the search
    _search(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), strategy, epochs=epochs, size=size)
    return strategy, export_architecture(strategy)["metrics"]["gmacs"]


def test_a_positive_lambda_exports_fewer_gmacs_than_lambda_zero():
    # at alpha lr 0.05 the unpriced scales of this tiny model run past 0 within two epochs
    _, free = _final_gmacs(GMACsConstraint(lam=0.0), alpha_lr=0.02)
    _, priced = _final_gmacs(GMACsConstraint(lam=0.1), alpha_lr=0.02)
    assert priced < free


@pytest.mark.parametrize("size", [12, 32])
def test_lambda_is_relative_to_the_initial_gmacs_unless_asked_otherwise(size):
    cost = GMACsCost.from_model(dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1)), (1, size, size))
    loss = torch.tensor(1.0)
    relative, _ = GMACsConstraint(lam=0.5).bind(cost)(loss)
    assert float(relative) == pytest.approx(1.5)  # the same at every input size: unit-free
    absolute, _ = GMACsConstraint(lam=0.5, relative=False).bind(cost)(loss)  # eq. 4.8 as in the thesis
    assert float(absolute) == pytest.approx(1.0 + 0.5 * cost.initial_gmacs)


def test_a_budget_search_ends_within_five_percent_of_its_target():
    # 32x32 inputs: a one-pixel step of the first map changes its cost by ~6%, fine enough for +-5%
    initial = GMACsCost.from_model(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), (1, 32, 32)).initial_gmacs
    budget = 0.7 * initial
    _, final = _final_gmacs(GMACsConstraint(budget=budget), epochs=3, size=32)
    assert math.isclose(final, budget, rel_tol=0.05), (final, budget)


@pytest.mark.parametrize("strategy", [DARTS(), Proxyless(), RandomOneShot(), ENAS()], ids=lambda s: type(s).__name__)
def test_strategies_that_cannot_learn_the_scale_refuse_with_a_reason(strategy):
    experiment = NasExperiment(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), _evaluator(1), strategy)
    with pytest.raises(TypeError, match="DynOPoolDARTS"):
        experiment.run()


@pytest.mark.parametrize(
    ("arch", "message"),
    [({"schema_version": 2, "input_size": [1, 8, 8], "choices": {}, "scales": {}, "sizes": {}}, "schema version"),
     ({"schema_version": 1, "choices": {}, "scales": {}, "sizes": {}}, "input_size"),
     ({"schema_version": 1, "input_size": [1, 8, 8], "choices": {}, "scales": {"a": [0, 1]}, "sizes": {}}, "positive")],
)
def test_malformed_architectures_are_refused(tmp_path, arch, message):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    with pytest.raises(ValueError, match=message):
        load_architecture(path)


def test_an_architecture_from_another_space_is_refused():
    arch = {"schema_version": 1, "input_size": [1, 12, 12], "choices": {}, "scales": {"elsewhere": [0.5, 0.5]},
            "sizes": {}}
    with pytest.raises(ValueError, match="do not match"):
        build_model(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), arch)


@pytest.mark.slow
def test_darts_over_the_efficientnet_space_searches_and_exports():
    space = EfficientNetSpace(num_classes=10, in_chans=1)
    strategy = DynOPoolDARTS(input_size=(1, 32, 32), alpha_learning_rate=0.05, constraint=GMACsConstraint(lam=1.0))
    _search(space, strategy, size=32, train_images=128, batch_size=32)
    arch = export_architecture(strategy)
    assert {f"s{i}_kernel" for i in range(7)} <= set(arch["choices"]) and len(arch["scales"]) == 5
    model = build_model(EfficientNetSpace(num_classes=10, in_chans=1), arch)
    assert count_macs(model, (1, 32, 32)).gmacs == pytest.approx(arch["metrics"]["gmacs"], rel=0.02)


def test_budget_projection_meets_a_reachable_budget_and_warns_once_for_an_unreachable_one():
    model = dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1))
    cost = GMACsCost.from_model(model, (1, 32, 32))
    reachable = GMACsConstraint(budget=0.8 * cost.initial_gmacs).bind(cost)  # 15x15, 7x7, 3x3 cost 0.799x
    reachable.project()
    assert math.isclose(float(cost(hard=True)), 0.8 * cost.initial_gmacs, rel_tol=0.05)
    unreachable = GMACsConstraint(budget=1e-9).bind(cost)
    with pytest.warns(RuntimeWarning, match="out of reach"):
        unreachable.project()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unreachable.project()


@pytest.mark.parametrize("budget", [1e6, 1e-9], ids=["above", "below"])
def test_a_budget_out_of_reach_holds_the_nearest_reachable_scales_and_warns_once_with_the_range(budget):
    model = dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1))
    cost = GMACsCost.from_model(model, (1, 32, 32))
    constraint = GMACsConstraint(budget=budget).bind(cost)
    with pytest.warns(RuntimeWarning, match=r"out of reach: .* reach [0-9.e-]+ to [0-9.e-]+ GMACs"):
        constraint.project()
    layers = [layer for _, layer in dynopool_layers(model)]
    held = [layer.alpha.detach().clone() for layer in layers]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(50):  # one projection per step: nothing moves further, nothing warns again
            constraint.project()
    assert all(torch.equal(layer.alpha, alpha) for layer, alpha in zip(layers, held))
    if budget > 1:  # as large as the maps get: no scale above 1, the input's size
        assert all(layer.scale == pytest.approx((1.0, 1.0)) for layer in layers)
    else:  # as small as they get: every map at its 2x2 floor, alpha finite
        assert set(cost.feature_map_sizes().values()) == {(2, 2)}
        assert all(torch.isfinite(layer.alpha).all() for layer in layers)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_a_search_with_a_budget_out_of_reach_finishes():
    # the scales once grew by e^2 per step towards 1e6 GMACs until the process ran out of memory
    strategy = DynOPoolDARTS(input_size=INPUT, alpha_learning_rate=0.05, constraint=GMACsConstraint(budget=1e6))
    with pytest.warns(RuntimeWarning, match="out of reach"):
        _search(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), strategy, train_images=64)
    assert math.isfinite(export_architecture(strategy)["metrics"]["gmacs"])


def test_a_search_at_a_huge_alpha_learning_rate_keeps_every_scale_in_range():
    # Adam at lr 1 moves alpha by about 1 per step: without a projection after the architecture
    # optimizer's step, it crosses alpha = 0 and the forward pass refuses the scale
    strategy = DynOPoolDARTS(input_size=INPUT, alpha_learning_rate=1.0)
    _search(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), strategy, train_images=128)
    alphas = strategy.oneshot_module.scale_parameters()
    assert all(torch.isfinite(alpha).all() and (alpha > 0).all() for alpha in alphas)


def test_a_budget_below_what_the_scales_reach_prices_the_choices_towards_cheaper_operations():
    supernet = DynOPoolDARTS(input_size=(1, 16, 16)).mutate_model(
        DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3))
    width = dict(supernet.named_parameters())["stem.0._arch_alpha.width"]  # candidates 4 and 8 channels

    def width_gradient(budget):
        constraint = GMACsConstraint(budget=budget).bind(supernet_cost(supernet, (1, 16, 16)))
        constraint.project()
        width.grad = None
        loss = torch.tensor(1.0, requires_grad=True)
        priced, _ = constraint(loss)
        priced.backward()
        return float(priced), width.grad

    lowest, highest = GMACsConstraint(budget=1.0).bind(supernet_cost(supernet, (1, 16, 16))).reach()
    held, gradient = width_gradient(math.sqrt(lowest * highest))  # the scales hold it: the choices are free
    assert held == 1.0 and (gradient is None or not gradient.any())
    with pytest.warns(RuntimeWarning, match="out of reach"):
        priced, gradient = width_gradient(0.5 * lowest)
    assert priced > 1.0
    assert gradient[1] > 0 > gradient[0]  # a descent step makes the wider stem less likely
