"""Latency as a constraint wherever GMACs is one: the constraint (lambda and budget), the DARTS
search, the command line and its settings, the trial program, arch.json and compare."""

import logging
import math
import os
import warnings

import nni
import pytest
import torch
from nni.nas.nn.pytorch import ModelSpace, MutableBatchNorm2d, MutableConv2d
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch.utils.cpp_extension import get_default_build_root
from torch.utils.data import DataLoader, Subset

from dynopool_nas import (
    DigitsDataset,
    DynOPool2d,
    LatencyCost,
    LatencyTable,
    create_model,
    dynopool_layers,
    dynopoolify,
    measure_model,
)
from search_spaces.arch import OPTIONAL_METRICS, architecture_record, build_model, load_architecture
from search_spaces.cells import DynOPoolCellSpace
from search_spaces.converted import ConvertedSpace
from search_spaces.registry import make_space
from strategies import DynOPoolDARTS, GMACsConstraint, LatencyConstraint
from strategies.commands.cli import _settings, build_parser, main
from strategies.commands.compare import run_compare
from strategies.commands.search import _constraint, run_search
from strategies.commands.settings import CompareSettings, SearchSettings
from strategies.commands.trial import run_trial
from strategies.constraint import (
    ANCHOR_PROCESSES,
    SEARCH_SCALES,
    SETTLE_ROUNDS,
    SETTLE_TOLERANCE,
    LatencyAnchor,
    _priced_blocks,
    supernet_latency_cost,
)
from strategies.export import export_architecture
from strategies.supernet import derived_model

# Short samples, few rounds, one thread: the machine is shared, and no test asserts a tight timing
# against the clock; budgets are checked against the predicted cost, which is deterministic once
# the table holds its points.
QUICK = {"threads": 1, "repeats": 3, "warmup": 1, "cache": False, "progress": False}
SIZE = 32
INPUT = (1, SIZE, SIZE)


@pytest.fixture(autouse=True)
def _quiet_and_cached_apart(tmp_path, monkeypatch):
    logging.getLogger("nni").setLevel(logging.ERROR)
    # no default table may write to the user's cache; torch's kernels stay where they are built
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def table():
    """One table for the module: every layer of small_cnn is timed once."""
    return LatencyTable(**QUICK)


def _small_cnn_cost(table, size=SIZE):
    model = dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1))
    return model, LatencyCost.from_model(model, (1, size, size), table)


def _search(constraint, epochs=2, alpha_lr=0.05, seed=0, space=None, size=SIZE, images=256):
    train = Subset(DigitsDataset("train", size), range(images))
    val = Subset(DigitsDataset("val", size), range(128))
    from nni.nas.evaluator.pytorch import Classification
    from nni.nas.experiment import NasExperiment

    evaluator = Classification(
        train_dataloaders=DataLoader(train, batch_size=32, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=128),
        max_epochs=epochs, num_classes=10, learning_rate=0.01, accelerator="cpu", enable_progress_bar=False,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    strategy = DynOPoolDARTS(input_size=(1, size, size), alpha_learning_rate=alpha_lr, constraint=constraint)
    torch.manual_seed(seed)
    NasExperiment(space or ConvertedSpace("small_cnn", num_classes=10, in_chans=1), evaluator, strategy).run()
    return strategy


# ----------------------------------------------------------------------------- the constraint


def test_the_latency_constraint_takes_one_mode_and_says_so_in_milliseconds():
    with pytest.raises(ValueError, match=r"LatencyConstraint takes exactly one of lam \(eq. 4.8\) and budget_ms"):
        LatencyConstraint()
    with pytest.raises(ValueError, match="exactly one"):
        LatencyConstraint(lam=0.1, budget_ms=1.0)
    with pytest.raises(ValueError, match=r"budget_ms must be a positive number of ms, got -1"):
        LatencyConstraint(budget_ms=-1.0)
    with pytest.raises(ValueError, match="lam must be a non-negative number"):
        LatencyConstraint(lam=float("nan"))
    with pytest.raises(RuntimeError, match=r"LatencyConstraint.bind\(cost\) must be called"):
        LatencyConstraint(lam=0.1)(torch.tensor(1.0))
    # GMACs keeps its own words
    with pytest.raises(ValueError, match=r"GMACsConstraint takes exactly one of lam \(eq. 4.8\) and budget \(GMACs"):
        GMACsConstraint()
    with pytest.raises(ValueError, match="budget must be a positive number of GMACs"):
        GMACsConstraint(budget=0)


def test_lambda_prices_the_predicted_latency_relative_to_its_initial_value(table):
    model, cost = _small_cnn_cost(table)
    loss = torch.tensor(1.0)
    relative, logged = LatencyConstraint(lam=0.5).bind(cost)(loss)
    assert float(relative) == pytest.approx(1.5)
    assert set(logged) == {"expected_latency_ms"} and float(logged["expected_latency_ms"]) == pytest.approx(
        cost.initial_ms)
    absolute, _ = LatencyConstraint(lam=0.5, relative=False).bind(cost)(loss)
    assert float(absolute) == pytest.approx(1.0 + 0.5 * cost.initial_ms)
    absolute.backward()  # the term reaches the scales, and shrinking a map is never dearer
    grads = torch.cat([layer.alpha.grad for _, layer in dynopool_layers(model)])
    assert (grads <= 0).all() and (grads < 0).any()


def test_a_latency_budget_is_projected_onto_and_one_out_of_reach_warns_in_ms(table):
    model, cost = _small_cnn_cost(table)
    layers = [layer for _, layer in dynopool_layers(model)]
    with torch.no_grad():  # start from larger maps than the budget allows
        for layer in layers:
            layer.alpha.fill_(1.1)
    budget = 0.95 * cost.initial_ms
    start = float(cost(hard=True))
    assert start > budget
    LatencyConstraint(budget_ms=budget).bind(cost).project()
    assert math.isclose(float(cost(hard=True)), budget, rel_tol=0.05), (float(cost(hard=True)), budget, start)
    unreachable = LatencyConstraint(budget_ms=1e-6).bind(cost)
    out_of_reach = r"latency budget 1e-06 is out of reach: .* reach [0-9.e-]+ to [0-9.e-]+ ms"
    with pytest.warns(RuntimeWarning, match=out_of_reach):
        unreachable.project()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unreachable.project()
    assert set(cost.feature_map_sizes().values()) == {(2, 2)}


def test_reach_names_the_range_a_budget_can_lie_in_and_moves_no_scale(table):
    model, cost = _small_cnn_cost(table)
    layers = [layer for _, layer in dynopool_layers(model)]
    before = [layer.alpha.detach().clone() for layer in layers]
    lowest, highest = LatencyConstraint(lam=0.1).bind(cost).reach()
    assert all(torch.equal(layer.alpha, alpha) for layer, alpha in zip(layers, before))
    assert lowest < float(cost(hard=True)) < highest
    inside = math.sqrt(lowest * highest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a budget inside the range is reached without a warning
        LatencyConstraint(budget_ms=inside).bind(cost).project()
    assert math.isclose(float(cost(hard=True)), inside, rel_tol=0.05), (float(cost(hard=True)), inside)
    with pytest.warns(RuntimeWarning, match="out of reach"):
        LatencyConstraint(budget_ms=0.5 * lowest).bind(cost).project()
    assert math.isclose(float(cost(hard=True)), lowest, rel_tol=1e-6)
    # a budget that goes out of reach between two checks is named when asked (a search asks after every epoch)
    constraint = LatencyConstraint(budget_ms=inside).bind(cost)
    constraint.project()
    constraint.budget = 0.5 * lowest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constraint.project()  # the second call does not read the reach back
    with pytest.warns(RuntimeWarning, match="out of reach"):
        constraint.project(check=True)


# ----------------------------------------------------------------------------- the search


def test_a_latency_budget_search_holds_its_budget_and_exports_the_latency(table, tmp_path):
    _, cost = _small_cnn_cost(table)
    budget = 0.95 * cost.initial_ms  # the scales start at the space's own: every layer's size is measured
    strategy = _search(LatencyConstraint(budget_ms=budget, table=table, anchor="predicted"))
    module = strategy.oneshot_module
    final = module.history[-1]
    assert {"default", "gmacs", "params", "latency_ms", "expected_latency_ms", "expected_gmacs"} <= set(final)
    assert math.isclose(final["latency_ms"], budget, rel_tol=0.05), (final["latency_ms"], budget)
    assert module.latency_cost is module.penalty.cost and module.latency_cost.table is table
    arch = export_architecture(strategy)
    assert arch["metrics"]["latency_ms"] == final["latency_ms"]
    # the derived model, priced as a model of its own in the same table, costs what the search held
    model = build_model(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), arch)
    assert float(LatencyCost.from_model(model, INPUT, table)()) == pytest.approx(final["latency_ms"], rel=0.25)


def test_a_positive_latency_lambda_ends_faster_than_lambda_zero(table):
    free, priced = (_search(LatencyConstraint(lam=lam, table=table, anchor="predicted"), epochs=1, alpha_lr=0.1)
                    .oneshot_module.history[-1] for lam in (0.0, 1.0))
    assert priced["latency_ms"] < free["latency_ms"]
    assert priced["gmacs"] < free["gmacs"]


def test_a_cell_supernet_is_priced_as_the_architecture_it_derives():
    # a supernet times a cell's operations one by one (mixed convolutions at each width as the plain layer),
    # its derived model the cells whole, with the work between the operations: the sum is calibrated to the latter
    table = LatencyTable(**(QUICK | {"repeats": 7}))
    supernet = DynOPoolDARTS(input_size=(1, 16, 16)).mutate_model(
        DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3))
    choices = [parameter for name, parameter in supernet.named_parameters() if "_arch_alpha" in name]
    with torch.no_grad():
        for alpha in choices:  # the first candidate of every choice: width 4, one cell per stage, conv3x3
            alpha.copy_(-torch.arange(len(alpha), dtype=alpha.dtype))
    cost = supernet_latency_cost(supernet, (1, 16, 16), table, anchor="predicted")
    assert float(cost()) != float(cost(hard=True))  # the choices' probabilities weight the expectation
    assert 0.6 < cost.calibration < 1.6  # the operations' sum alone is close already
    points = len(table)
    with torch.no_grad():
        start = LatencyCost.from_model(derived_model(supernet), (1, 16, 16), table, scales=SEARCH_SCALES)
        assert len(table) == points  # calibrated to these very points
        assert float(cost(hard=True)) == pytest.approx(float(start()), rel=1e-9)
        for alpha in choices:  # the last candidate: width 8, two cells per stage, identity; and larger maps
            alpha.mul_(-1.0)
        for _, layer in dynopool_layers(supernet):
            layer.alpha.mul_(0.8)
        moved = LatencyCost.from_model(derived_model(supernet), (1, 16, 16), table, scales=SEARCH_SCALES)
        assert float(moved()) != pytest.approx(float(start()), rel=0.05)  # another architecture
        # the two sets of points are timed apart: on a busy machine they differ by up to 25% (0.75-0.93 seen)
        assert float(cost(hard=True)) == pytest.approx(float(moved()), rel=0.35)


def test_a_search_reports_the_latency_its_derived_model_is_priced_at_after_every_epoch():
    table = LatencyTable(**QUICK)
    space = lambda: DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3)  # noqa: E731
    constraint = LatencyConstraint(lam=0.1, table=table, anchor="predicted")
    strategy = _search(constraint, epochs=2, space=space(), size=16, images=64)
    history = strategy.oneshot_module.history
    assert all(epoch["expected_latency_ms"] != epoch["latency_ms"] for epoch in history)
    points = len(table)
    model = build_model(space(), export_architecture(strategy))
    derived = float(LatencyCost.from_model(model, (1, 16, 16), table, scales=SEARCH_SCALES)())
    assert len(table) == points  # recalibrated on these very points at the end of the last epoch
    assert history[-1]["latency_ms"] == pytest.approx(derived, rel=1e-9)


def test_the_default_anchor_calibrates_the_supernet_to_its_derived_model_measured_in_a_fresh_process():
    table = LatencyTable(**QUICK)
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(_BlockSpace())
    constraint = LatencyConstraint(budget_ms=1.0, table=table)
    assert constraint.anchor == "measured"
    cost = constraint.supernet_cost(supernet, INPUT)
    summed = float(cost(hard=True)) / cost.calibration
    assert cost.calibration != 1.0 and summed > 0
    # the anchor is one end-to-end measurement: measured again, the derived model reads about the same
    again = measure_model(derived_model(supernet), INPUT, threads=1, fresh_process=True)
    assert float(cost(hard=True)) == pytest.approx(again, rel=0.5)
    with pytest.raises(ValueError, match="anchor must be one of"):
        LatencyConstraint(lam=0.1, anchor="guessed")


def test_a_measured_anchor_is_measured_once_and_then_carried_by_the_tables_ratio(monkeypatch):
    table = LatencyTable(**QUICK)
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(_BlockSpace())
    anchor = LatencyAnchor("measured", table)
    start = anchor(supernet, INPUT)
    predicted = LatencyAnchor("predicted", table)
    assert anchor.ratio is not None and anchor.ratio != 1.0 and predicted.ratio is None
    assert start == pytest.approx(anchor.ratio * predicted(supernet, INPUT), rel=1e-9)

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again while the search runs")

    monkeypatch.setattr("strategies.constraint.measure_model", measured_again)
    with torch.no_grad():
        for _, layer in dynopool_layers(supernet):  # another architecture: larger maps
            layer.alpha.mul_(0.7)
    moved = anchor(supernet, INPUT)
    assert moved != pytest.approx(start, rel=0.02)
    assert moved == pytest.approx(anchor.ratio * predicted(supernet, INPUT), rel=1e-9)


def test_settle_measures_the_architecture_it_ends_with_until_one_lies_near_the_budget(monkeypatch):
    # a device that runs every model `slowdown` times its table prediction, known only by measuring
    table = LatencyTable(**QUICK)
    slowdown = {"factor": 1.0}
    measurements = []

    @torch.no_grad()
    def on_the_device(model, input_size=INPUT, **options):
        return slowdown["factor"] * float(LatencyCost.from_model(model, input_size, table, scales=SEARCH_SCALES)())

    def measured(model, input_size, **options):
        assert options.get("fresh_process")
        measurements.append(on_the_device(model, input_size))
        return measurements[-1]

    monkeypatch.setattr("strategies.constraint.measure_model", measured)
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(_BlockSpace())
    constraint = LatencyConstraint(budget_ms=1.0, table=table)
    constraint.bind(constraint.supernet_cost(supernet, INPUT))
    lowest, highest = constraint.reach()
    assert highest > 1.15 * lowest
    constraint.budget = math.sqrt(lowest * highest)
    slower = (highest / lowest) ** 0.25  # more than SETTLE_TOLERANCE, and the budget stays within reach
    constraint.project()
    assert len(measurements) == ANCHOR_PROCESSES  # the start

    def settle():
        before = len(measurements)
        assert constraint.settle(supernet, INPUT)
        ended_with = measurements[before]  # the architecture the search ended with, on the device
        rounds = (len(measurements) - before) // ANCHOR_PROCESSES
        assert rounds == (1 if abs(ended_with / constraint.budget - 1) <= SETTLE_TOLERANCE else SETTLE_ROUNDS)
        assert constraint._anchor.ratio == pytest.approx(slowdown["factor"], rel=1e-9)  # measured last on this device
        # whole-number sizes, and a quick table's points (3 samples each) priced one projection apart: loose
        assert on_the_device(derived_model(supernet)) == pytest.approx(constraint.budget, rel=0.15)

    settle()  # the device as measured at the start
    slowdown["factor"] = slower  # the device turns out slower than its anchor said
    settle()
    measured_so_far = len(measurements)
    # nothing to settle under a lambda, a predicted anchor or GMACs
    assert not LatencyConstraint(lam=0.1, table=table).settle(supernet, INPUT)
    assert not LatencyConstraint(budget_ms=1.0, table=table, anchor="predicted").settle(supernet, INPUT)
    assert not GMACsConstraint(budget=0.1).settle(supernet, INPUT)
    assert len(measurements) == measured_so_far


def test_a_measured_latency_budget_search_hands_over_the_architecture_it_measured_last():
    table = LatencyTable(**QUICK)
    probe = LatencyConstraint(budget_ms=1.0, table=table)  # where a budget in measured ms can lie
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(ConvertedSpace("small_cnn", num_classes=10, in_chans=1))
    lowest, highest = probe.bind(probe.supernet_cost(supernet, INPUT)).reach()
    constraint = LatencyConstraint(budget_ms=math.sqrt(lowest * highest), table=table)
    strategy = _search(constraint, epochs=1)
    final = strategy.oneshot_module.history[-1]
    anchor = constraint._anchor
    assert anchor.measured_ms is not None
    arch = export_architecture(strategy)
    assert arch["metrics"]["latency_ms"] == final["latency_ms"]
    held = (final["latency_ms"], constraint.budget, anchor.measured_ms, anchor.ratio)
    assert final["latency_ms"] == pytest.approx(constraint.budget, rel=0.05), held  # held after the last measurement
    model = build_model(ConvertedSpace("small_cnn", num_classes=10, in_chans=1), arch)
    with torch.no_grad():  # priced from the ratio measured last, on the architecture handed over or one step away
        predicted = float(LatencyCost.from_model(model, INPUT, table, scales=SEARCH_SCALES)())
    assert anchor.ratio * predicted == pytest.approx(final["latency_ms"], rel=0.1), (predicted, held)
    again = measure_model(model, INPUT, threads=1, fresh_process=True)
    assert again == pytest.approx(constraint.budget, rel=0.5), (again, held)  # tiny models, shared machine: loose


def test_a_space_that_cannot_be_sent_to_a_fresh_process_is_measured_here_with_a_warning():
    class LocalSpace(_BlockSpace):  # defined in a function, as in a notebook: no other process can import it
        pass

    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(LocalSpace())
    with pytest.warns(RuntimeWarning, match=r"measured in this process.*define its classes in an importable module"):
        cost = LatencyConstraint(budget_ms=1.0, table=LatencyTable(**QUICK)).supernet_cost(supernet, INPUT)
    assert cost.calibration != 1.0 and float(cost(hard=True)) > 0


class _ResidualBlock(torch.nn.Module):
    """A block whose forward does work between its layers (the residual addition), with a width
    and a kernel choice."""

    def __init__(self, channels, width, kernel):
        super().__init__()
        self.body = torch.nn.Sequential(
            MutableConv2d(channels, width, kernel, padding=(kernel - 1) // 2, bias=False), MutableBatchNorm2d(width),
            torch.nn.ReLU(), MutableConv2d(width, channels, 1, bias=False),
        )

    def forward(self, x):
        return x + self.body(x)


class _BlockSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.pool = DynOPool2d(0.5, name="pool")
        self.block = _ResidualBlock(8, nni.choice("width", [8, 16]), nni.choice("kernel", [1, 3]))
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.block(self.pool(self.stem(x))))


def test_a_supernet_block_is_priced_whole_in_every_form_as_its_derived_block_is():
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(_BlockSpace())
    assert list(_priced_blocks(supernet, INPUT)) == ["block"]  # the block, with its addition, not its layers
    table = LatencyTable(**QUICK)
    cost = supernet_latency_cost(supernet, INPUT, table, anchor="predicted")
    assert sum(term.name == "block" for term in cost.terms) == 4  # 2 widths x 2 kernels
    memo = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            memo.update(module.export(memo))
    derived = _BlockSpace().freeze({key: value for key, value in memo.items() if key in ("width", "kernel")})
    points = len(table)
    own = LatencyCost.from_model(derived, INPUT, table, scales=SEARCH_SCALES)
    with torch.no_grad():
        assert float(cost(hard=True)) == pytest.approx(float(own()), rel=1e-9)  # the same units, the same points
    assert len(table) == points  # the derived model's units were all measured as the supernet's forms


class _WidenFirstBlock(torch.nn.Module):
    """A block whose first mixed layer does not read the block's input (a plain layer does)."""

    def __init__(self, width):
        super().__init__()
        self.widen = torch.nn.Conv2d(8, 16, 1)
        self.inner = MutableConv2d(16, width, 1)
        self.outer = MutableConv2d(width, 8, 1)

    def forward(self, x):
        return self.outer(self.inner(self.widen(x)))


class _WidenFirstSpace(_BlockSpace):
    def __init__(self):
        super().__init__()
        self.block = _WidenFirstBlock(nni.choice("width", [8, 16]))


def test_a_block_whose_forms_cannot_run_on_its_input_is_priced_layer_by_layer():
    supernet = DynOPoolDARTS(input_size=INPUT).mutate_model(_WidenFirstSpace())
    assert sorted(_priced_blocks(supernet, INPUT)) == ["block.inner", "block.outer"]


# ----------------------------------------------------------------------------- command line and settings


def test_the_latency_flags_set_their_settings_and_exclude_every_other_constraint(capsys):
    parser = build_parser()
    assert _settings(SearchSettings, parser.parse_args(["search", "--latency-budget-ms", "2.5"])) == SearchSettings(
        latency_budget_ms=2.5)
    assert _settings(SearchSettings, parser.parse_args(["search", "--latency-lambda", "0.1"])) == SearchSettings(
        latency_lambda=0.1)
    anchored = _settings(SearchSettings, parser.parse_args(["search", "--latency-budget-ms", "2", "--latency-anchor",
                                                            "measured"]))
    assert anchored == SearchSettings(latency_budget_ms=2.0, latency_anchor="measured")
    assert _constraint(anchored, None).anchor == "measured"  # what run_search searches with
    for flags in (["--gmacs-budget", "0.1", "--latency-budget-ms", "2"],
                  ["--latency-lambda", "1", "--gmacs-lambda", "1"],
                  ["--latency-lambda", "1", "--latency-budget-ms", "2"]):
        with pytest.raises(SystemExit):
            main(["search", *flags])
        assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"latency_budget_ms": 1.0, "gmacs_budget": 0.1},
      "at most one constraint of gmacs_lambda, gmacs_budget, latency_lambda, latency_budget_ms, not gmacs_budget and "
      "latency_budget_ms"),
     ({"latency_lambda": 0.1, "latency_budget_ms": 1.0}, "not latency_lambda and latency_budget_ms"),
     ({"latency_budget_ms": 0.0}, "latency_budget_ms must be a positive number, got 0.0"),
     ({"latency_lambda": -1.0}, "latency_lambda must be a non-negative number, got -1.0"),
     ({"latency_anchor": "guessed"}, "latency_anchor must be one of \\('measured', 'predicted'\\), got 'guessed'")],
)
def test_search_settings_refuse_two_constraints_and_bad_latency_values(changes, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**changes)


def test_run_search_writes_the_latency_its_model_measures_in_a_fresh_process(table, tmp_path):
    arch, model = run_search(SearchSettings(space="small_cnn", epochs=1, output=tmp_path, image_size=SIZE,
                                            batch_size=32, max_train_images=64, latency_lambda=0.5),
                             latency_table=table)
    saved = load_architecture(tmp_path / "arch.json")
    assert saved["metrics"]["latency_ms"] == arch["metrics"]["latency_ms"] > 0
    # the default anchor: measured in fresh processes before training, carried by the table's ratio since
    measured = measure_model(model, INPUT, fresh_process=True, threads=1)
    assert saved["metrics"]["latency_ms"] == pytest.approx(measured, rel=0.3)


# ----------------------------------------------------------------------------- trial, arch.json, compare


def test_a_trial_reports_its_latency_and_holds_a_latency_budget(table, tmp_path, monkeypatch):
    import nni

    reports = []
    monkeypatch.setattr(nni, "report_intermediate_result", reports.append)
    initial = LatencyCost.from_model(make_space("small_cnn", 10, 1).freeze({}), INPUT, table).initial_ms
    final = run_trial({"latency_budget": 0.95 * initial, "alpha_lr": 0.05}, space="small_cnn", epochs=1,
                      image_size=SIZE, output_dir=tmp_path, latency_table=table)
    assert reports and all("latency_ms" in report and report["latency_ms"] > 0 for report in reports)
    assert final["latency_ms"] == pytest.approx(0.95 * initial, rel=0.05)
    arch = load_architecture(tmp_path / "arch.json")
    assert arch["metrics"]["latency_ms"] == final["latency_ms"]
    with pytest.raises(ValueError, match=r"'gmacs_budget' .* and 'latency_budget' .* are both given"):
        run_trial({"gmacs_budget": 1e-3, "latency_budget": 1.0}, space="small_cnn", epochs=1, image_size=SIZE,
                  output_dir=tmp_path, latency_table=table)


def test_arch_json_records_latency_where_known_and_loads_without_it(tmp_path):
    metrics = {"default": 0.5, "gmacs": 1e-3, "params": 10}
    assert "latency_ms" not in architecture_record((1, 8, 8), {}, {}, {}, metrics=metrics)["metrics"]
    recorded = architecture_record((1, 8, 8), {}, {}, {}, metrics=metrics | {"latency_ms": 1.5, "other": 2})
    assert recorded["metrics"] == metrics | {"latency_ms": 1.5} and OPTIONAL_METRICS == ("latency_ms",)


def test_compare_predicts_and_measures_the_latency_of_every_model(table, tmp_path):
    search = tmp_path / "search"
    run_search(SearchSettings(space="small_cnn", epochs=1, output=search, image_size=SIZE, batch_size=32,
                              max_train_images=64), latency_table=table)
    frame = run_compare(CompareSettings([search], tmp_path / "compare", epochs=1, image_size=SIZE, batch_size=32,
                                        max_train_images=32, baselines=()), latency_table=table)
    predicted, measured = frame["latency_ms_predicted"].iloc[0], frame["latency_ms_measured"].iloc[0]
    assert predicted > 0 and measured > 0
    assert 0.2 < predicted / measured < 5, (predicted, measured)  # sums of layers vs end to end, on a busy machine
    report = (tmp_path / "compare" / "comparison.md").read_text()
    assert "latency predicted (ms)" in report and "latency measured (ms)" in report and "CPU threads" in report
    assert "cpu_latency_ms" not in frame
