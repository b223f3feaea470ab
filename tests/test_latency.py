import json
import os
import sys
import types

import pytest
import torch
from branches import TwoBranches, branch_gates
from torch import nn
from torch.utils.cpp_extension import get_default_build_root

from dynopool_nas import DynOPool2d, LatencyCost, LatencyTable, measure_model, measure_models
from dynopool_nas.latency import _measure, cache_dir, device_fingerprint, fit_affine, fit_monotone, model_table

# Tiny grids and short samples: the machine is shared, so no test asserts a tight timing.
SCALES = (0.5, 1.0)
# One thread: conftest's two threads on two busy cores wait on each other for whole time slices.
QUICK = {"threads": 1, "repeats": 3, "warmup": 1, "progress": False}


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    # torch's extension cache also follows XDG_CACHE_HOME: keep the kernels where they are built
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class CountingConv(nn.Conv2d):
    """A real convolution that counts its calls, including those of its copies."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def _chain(conv=nn.Conv2d, width=8, scale=0.5) -> nn.Sequential:
    return nn.Sequential(
        conv(3, width, 3, padding=1), nn.ReLU(), DynOPool2d(scale, name="p1"),
        conv(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), DynOPool2d(scale, name="p2"),
        conv(width, width, 3, padding=1), conv(width, width, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4),
    )


def test_fit_affine_is_least_squares_and_never_negative():
    a, b = fit_affine([1, 2, 3, 4], [3, 5, 7, 9])
    assert (a, b) == pytest.approx((1, 2))
    a, b = fit_affine([1, 2, 3, 4], [4, 3, 2, 1])  # decreasing: the best constant
    assert (a, b) == pytest.approx((2.5, 0))
    a, b = fit_affine([1, 2, 3], [0.5, 2.5, 4.5])  # negative intercept: through the origin
    assert a == 0 and b == pytest.approx((0.5 + 5 + 13.5) / 14)
    assert fit_affine([7], [2.0]) == (2.0, 0.0)


def test_fit_monotone_follows_the_grid_pools_violators_and_continues_with_the_affine_slope():
    fit = fit_monotone([1, 2, 3, 4, 5], [1.0, 3.0, 2.0, 4.0, 8.0])  # 3 then 2: pooled to 2.5
    assert fit.knots == ((1, 1.0), (2, 2.5), (3, 2.5), (4, 4.0), (5, 8.0))
    slope = fit_affine([1, 2, 3, 4, 5], [1.0, 3.0, 2.0, 4.0, 8.0])[1]
    assert fit.slope == pytest.approx(slope)
    x = torch.tensor(3.5, dtype=torch.float64, requires_grad=True)
    value = fit(x)
    value.backward()
    assert value.item() == pytest.approx(3.25) and x.grad.item() == pytest.approx(1.5)
    assert fit(torch.tensor(7.0, dtype=torch.float64)).item() == pytest.approx(8.0 + 2 * slope)
    assert fit(torch.tensor(-100.0, dtype=torch.float64)).item() == 0.0  # never negative
    grid = torch.linspace(-1, 8, 91, dtype=torch.float64)
    values = torch.stack([fit(v) for v in grid])
    assert (values.diff() >= 0).all()
    # equal work (an H x W and a W x H map) is averaged into one knot
    assert fit_monotone([2, 2, 4], [1.0, 3.0, 5.0]).knots == ((2, 2.0), (4, 5.0))
    # one knot: the affine tail on both sides; exactly at a knot, its value
    single = fit_monotone([3.0], [2.0])
    assert single(torch.tensor(3.0, dtype=torch.float64)).item() == 2.0
    assert fit(torch.tensor(4.0, dtype=torch.float64)).item() == pytest.approx(4.0)


def test_gradient_reaches_every_alpha_and_a_smaller_map_is_predicted_faster():
    # maps large enough that the work, not the call, dominates; scales off 1/2, where a DynOPool's
    # query points are pixels and its sampling is skipped (a real step down in its latency)
    model = _chain(width=32, scale=0.6)
    cost = LatencyCost.from_model(model, (3, 64, 64), LatencyTable(**QUICK), scales=SCALES)
    assert cost().item() == pytest.approx(cost.initial_ms) and cost.initial_ms > 0
    cost().backward()
    grads = torch.cat([model[2].alpha.grad, model[6].alpha.grad])
    assert (grads < 0).all()  # a larger alpha (smaller map) is faster
    with torch.no_grad():
        model[2].alpha.mul_(1.25)  # r = 0.48
    assert cost().item() < cost.initial_ms
    snapshot = cost.snapshot()
    assert isinstance(snapshot["latency_ms"], float)
    assert snapshot["sizes"] == {"p1": (31, 31), "p2": (19, 19)}  # 64 * 0.48 -> 31, * 0.6 -> 18.6
    assert sum(cost.layer_ms().values()) == pytest.approx(snapshot["latency_ms"])


def test_a_calibrated_cost_predicts_its_anchor_now_and_scales_every_prediction_by_one_factor():
    model = _chain(width=8, scale=0.6)
    cost = LatencyCost.from_model(model, (3, 32, 32), LatencyTable(**QUICK), scales=SCALES)
    summed, initial = float(cost(hard=True)), cost.initial_ms
    with torch.no_grad():
        model[2].alpha.mul_(1.25)
    moved = float(cost())
    factor = cost.calibrate(3 * moved)
    assert factor == pytest.approx(3.0) and cost.calibration == factor
    assert float(cost(hard=True)) == pytest.approx(3 * moved)
    assert cost.initial_ms == pytest.approx(3 * initial)  # a relative lambda prices the same
    assert sum(cost.layer_ms().values()) == pytest.approx(3 * moved)
    cost().backward()
    assert (model[2].alpha.grad < 0).all()
    assert cost.calibrate(summed) == pytest.approx(summed / moved)  # replaces the earlier factor
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of milliseconds"):
            cost.calibrate(bad)


def test_a_model_defaults_to_the_table_of_its_device_and_dtype():
    table = model_table(_chain().double())
    assert (table.device.type, table.dtype) == ("cpu", torch.float64)
    assert table.path.parent == cache_dir() and table.fingerprint["dtype"] == "float64"  # its cached table
    bare = model_table(torch.nn.ReLU())  # no parameter: the CPU in float32
    assert (bare.device.type, bare.dtype) == ("cpu", torch.float32)


def test_building_leaves_the_model_as_it_was():
    model = _chain().train()
    model[4].eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    for mode in ("inference", "training"):
        LatencyCost.from_model(model, (3, 16, 16), LatencyTable(mode=mode, **QUICK), scales=SCALES)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_cache_is_written_once_and_reused(tmp_path):
    model = _chain(CountingConv)
    CountingConv.calls = 0
    first = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), scales=SCALES)
    path = first.table.path
    assert path.parent == cache_dir() and str(path).startswith(str(tmp_path / "cache"))
    assert CountingConv.calls > 4 and first.table.measured == len(first.table)
    stored = json.loads(path.read_text())
    assert stored["fingerprint"] == device_fingerprint(threads=1)
    assert len(stored["entries"]) == first.table.measured
    # the two identical convolutions after p2 are one set of points
    keys = {term.name for term in first.terms}
    assert {"7", "8"} <= keys
    assert first.layer_ms()["7"] == first.layer_ms()["8"]

    written = path.stat().st_mtime_ns
    CountingConv.calls = 0
    second = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), scales=SCALES)
    assert CountingConv.calls == 4  # the probe's one forward pass; nothing timed
    assert second.table.measured == 0 and path.stat().st_mtime_ns == written
    assert second.initial_ms == first.initial_ms

    bigger = LatencyCost.from_model(model, (3, 20, 20), LatencyTable(**QUICK), scales=SCALES)
    assert 0 < bigger.table.measured < len(bigger.table)  # only the new sizes are measured


def test_the_fingerprint_names_threads_device_torch_and_dtype():
    one, two = device_fingerprint(threads=1), device_fingerprint(threads=2)
    assert one != two and one["threads"] == 1 and two["threads"] == 2
    assert one["torch"] == torch.__version__ and one["dtype"] == "float32" and one["name"]
    assert device_fingerprint(threads=1, dtype=torch.float64) != one
    assert LatencyTable(threads=1).path != LatencyTable(threads=2).path
    assert LatencyTable(threads=2).threads == 2


def test_a_cache_file_of_another_device_is_not_used(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"fingerprint": device_fingerprint(threads=99), "entries": {"x": 1.0}}))
    with pytest.warns(UserWarning, match="another device"):
        table = LatencyTable(path=path)
    assert len(table) == 0


def test_prediction_at_the_initial_sizes_is_near_a_measurement_of_the_whole_model():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), DynOPool2d(0.5),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), DynOPool2d(0.6), nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    cost = LatencyCost.from_model(model, (3, 48, 48), LatencyTable(**QUICK), scales=SCALES)
    # loose, and the least of three measurements: other jobs share the machine in bursts
    measured = min(measure_model(model, (3, 48, 48), threads=1) for _ in range(3))
    assert 0.3 < cost.initial_ms / measured < 3


def test_gates_weight_each_layer_by_its_probability():
    model = TwoBranches(channels=16, kernel=7)
    theta = torch.tensor(0.3, requires_grad=True)

    gates = branch_gates(theta)
    cost = LatencyCost.from_model(model, (3, 32, 32), LatencyTable(**QUICK), gates, scales=SCALES)
    layers = cost.layer_ms()
    p = torch.sigmoid(theta).item()
    expected = p * layers["small"] + (1 - p) * layers["large"] + layers["pool"]
    assert cost().item() == pytest.approx(expected, rel=1e-9)
    assert cost(hard=True).item() == pytest.approx(layers["small"] + layers["pool"], rel=1e-9)
    assert layers["large"] > layers["small"]  # 49 times the MACs
    cost().backward()
    assert theta.grad < 0  # more weight on the small branch lowers the latency


def test_model_without_dynopool_has_a_constant_cost():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.warns(UserWarning, match="no DynOPool2d"):
        cost = LatencyCost.from_model(model, (1, 8, 8), LatencyTable(**QUICK), scales=SCALES)
    assert not cost().requires_grad and cost().item() > 0
    assert cost.table.measured == 1  # no DynOPool: the whole model is one unit, timed at its one size


@pytest.mark.parametrize("input_size", [(32, 32), (1, 3, 32, 32), torch.zeros(1, 3, 8, 8)])
def test_input_size_must_be_channels_height_width(input_size):
    with pytest.raises(ValueError, match="channels, height, width"):
        LatencyCost.from_model(_chain(), input_size, LatencyTable(**QUICK))


def test_bad_mode_and_scales_are_refused():
    with pytest.raises(ValueError, match="mode"):
        LatencyTable(mode="train")
    with pytest.raises(ValueError, match="scales"):
        LatencyCost.from_model(_chain(), (3, 8, 8), LatencyTable(**QUICK), scales=(1.0, -0.5))


class ResidualBlock(nn.Module):
    """A block whose own forward does work between its children (a residual addition)."""

    forwards = 0

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        type(self).forwards += 1
        return x + self.act(self.conv(x))


def test_a_block_without_dynopool_is_timed_whole_with_its_own_work():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), DynOPool2d(0.5, name="p1"), ResidualBlock(8), ResidualBlock(8),
        DynOPool2d(0.6, name="p2"), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)),
    )
    ResidualBlock.forwards = 0
    cost = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), scales=SCALES)
    assert set(cost.layer_ms()) == {"0", "1", "2", "3", "4", "5"}  # blocks and the head whole, not their layers
    # the probe's forward calls each block once; the table's measurements call them many times more
    assert ResidualBlock.forwards > 2
    # the two identical blocks at the same size share one measurement
    grid = {key for key in cost.table.entries if "ResidualBlock" in key}
    assert len(grid) == len(SCALES) ** 2


def test_modules_holding_a_choice_are_split_at_its_gates():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), TwoBranches(channels=8))
    gates = {f"1.{key}": gate for key, gate in branch_gates(torch.tensor(0.0)).items()}
    cost = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), gates, scales=SCALES)
    assert set(cost.layer_ms()) == {"0", "1.small", "1.large", "1.pool"}


def test_variants_time_each_form_of_a_unit_and_weight_it_by_its_probability():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), DynOPool2d(0.5, name="pool"), nn.Conv2d(16, 16, 3, padding=1))
    theta = torch.tensor(-0.4, requires_grad=True)
    narrow = nn.Conv2d(8, 8, 3, padding=1)

    def variants(name, module, shapes):
        if name != "2":
            return None
        (n, _, h, w), = shapes
        p_narrow = lambda hard: (torch.sigmoid(theta) > 0.5).double() if hard else torch.sigmoid(theta)  # noqa: E731
        return [(narrow, (torch.Size((n, 8, h, w)),), p_narrow), (module, shapes, lambda hard: 1 - p_narrow(hard))]

    kept = torch.tensor(0.8)  # a choice that keeps the unit (a candidate's probability), besides its width
    cost = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), {"2": lambda hard: 1.0 if hard else kept},
                                  scales=SCALES, variants=variants)
    forms = [term for term in cost.terms if term.name == "2"]
    assert len(forms) == 2 and all(term.keys == ("2",) for term in forms)
    assert [s[:2] for s in forms[0].samples] == [s[:2] for s in forms[1].samples]  # one grid, two forms
    assert any("Conv2d(8, 8" in key for key in cost.table.entries)
    sizes = [size.double() for size in cost.sizes()]
    narrow_ms, wide_ms = (cost._value(term, sizes).item() for term in forms)
    rest = sum(cost._value(term, sizes).item() for term in cost.terms if term.name != "2")
    p = torch.sigmoid(theta).item()
    assert cost().item() == pytest.approx(rest + 0.8 * (p * narrow_ms + (1 - p) * wide_ms), rel=1e-6)
    assert cost(hard=True).item() == pytest.approx(rest + wide_ms, rel=1e-9)  # p < 0.5: the wide form
    cost().backward()
    assert theta.grad is not None


def test_a_variant_with_no_form_is_not_priced():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), DynOPool2d(0.5, name="pool"), nn.Softmax(dim=1))
    cost = LatencyCost.from_model(model, (3, 16, 16), LatencyTable(**QUICK), scales=SCALES,
                                  variants=lambda name, module, shapes: [] if name == "2" else None)
    assert set(cost.layer_ms()) == {"0", "1"}


def test_measure_models_times_every_model_and_the_table_its_measuring_time():
    small, large = nn.Conv2d(3, 4, 1), nn.Sequential(*(nn.Conv2d(3, 3, 5, padding=2) for _ in range(6)))
    times = measure_models({"small": small, "large": large}, (3, 32, 32), threads=1, repeats=5)
    assert set(times) == {"small", "large"} and all(t > 0 for t in times.values())
    table = LatencyTable(**QUICK)
    LatencyCost.from_model(_chain(), (3, 16, 16), table, scales=SCALES)
    assert table.measured > 0 and table.seconds > 0


class BuiltHere(nn.Conv2d):
    """A convolution that refuses to run in the process that built it."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3, padding=1)
        self.builder = os.getpid()

    def forward(self, x):
        if os.getpid() == self.builder:
            raise RuntimeError("run in the process that built it")
        return super().forward(x)


def test_a_fresh_process_measures_a_copy_of_the_models_sent_there(monkeypatch):
    times = measure_models({"conv": BuiltHere(), "chain": _chain()}, (3, 16, 16), fresh_process=True, **QUICK)
    assert set(times) == {"conv", "chain"} and all(t > 0 for t in times.values())
    with pytest.raises(RuntimeError, match="run in the process that built it"):
        measure_model(BuiltHere(), (3, 16, 16), **QUICK)

    class Local(nn.Identity):
        pass

    with pytest.raises(ValueError, match="importable module, or measure with fresh_process=False"):
        measure_model(Local(), (3, 16, 16), fresh_process=True, **QUICK)  # cannot be pickled here
    only_here = types.ModuleType("only_in_this_process")
    only_here.Local = Local
    Local.__module__, Local.__qualname__ = only_here.__name__, "Local"
    monkeypatch.setitem(sys.modules, only_here.__name__, only_here)
    with pytest.raises(ValueError, match=r"No module named 'only_in_this_process'.*importable module"):
        measure_model(Local(), (3, 16, 16), fresh_process=True, **QUICK)  # pickled here, not rebuilt there


def test_points_are_interleaved_within_windows_in_their_given_order():
    calls: list[str] = []
    jobs = {key: (lambda key=key: (lambda: calls.append(key))) for key in "abcde"}
    times = _measure(jobs, torch.device("cpu"), repeats=4, warmup=1, window=2, seed=0, progress=False,
                     description="test")
    assert set(times) == set("abcde") and all(t >= 0 for t in times.values())
    windows = [set("ab"), set("cd"), set("e")]
    assert [set(calls[:10]), set(calls[10:20]), set(calls[20:])] == windows  # 1 warm-up + 4 rounds each
    with pytest.raises(ValueError, match="window must be a positive number"):
        LatencyTable(window=0, cache=False)


def test_a_layer_is_keyed_by_what_it_computes_not_by_how_it_was_built():
    from nni.nas.nn.pytorch import MutableConv2d

    from dynopool_nas.latency import _key

    shapes = (torch.Size((1, 8, 6, 6)),)
    plain = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU())
    built_by_nni = nn.Sequential(MutableConv2d(in_channels=8, out_channels=16, kernel_size=3, padding=1, bias=False),
                                 nn.ReLU())
    other_kernel = nn.Sequential(nn.Conv2d(8, 16, 5, padding=2, bias=False), nn.ReLU())
    assert _key(plain, shapes, "inference") == _key(built_by_nni, shapes, "inference")
    assert _key(plain, shapes, "inference") != _key(other_kernel, shapes, "inference")
    assert "Conv2d(8, 16, kernel_size=(3, 3)" in _key(built_by_nni, shapes, "inference")
