"""A measured, differentiable latency model: the hardware-aware analogue of :class:`~dynopool_nas.cost.GMACsCost`.

GMACs are a proxy; on a real device depthwise convolutions, memory-bound layers and odd feature-map
sizes make latency diverge from MACs (the reason ProxylessNAS and FBNet search against measured
latency tables). Those tables price a discrete choice; DynOPool needs the price of a *continuous*
feature-map size. So each unit of a model is timed alone on a grid of input sizes and fitted by a
smooth model of its input size ``(H, W)``, and the model's latency is the sum of its units' fits at
the DynOPools' straight-through sizes (:func:`~dynopool_nas.ops.ste_output_size`), built with the
same size-dependency probe as the GMACs cost.

Units (:func:`_units`): every DynOPool, and the largest modules that hold no DynOPool and no choice
of a supernet below themselves -- a residual block with its addition, a squeeze-excite with its
inline multiply, a DARTS cell with its sums, a whole model without a DynOPool. Timing blocks
rather than layers prices the work a container's ``forward`` does between its children, which a
sum of layers misses (on the cell and EfficientNet-derived spaces, layers alone predicted 70-90%
of the measured latency); only the inline work of the containers that hold a DynOPool or a
choice is not timed. Identical units at the same size share one measurement.

Measurement (:class:`LatencyTable`): each unit is run on a copy of itself, on random inputs of
the grid's sizes, batch 1 by default, under fixed threads (``torch.set_num_threads``, recorded in
the device fingerprint), after warm-up; the points are timed in windows of :data:`WINDOW`, taken
in the order of a model run at each grid size in turn (every unit's first grid point in call
order, then every unit's second, ...), in rounds, every round one call of each point of the
window in a new random order (interleaved: a burst of load on a shared machine spreads over the window's points
instead of biasing one, and every call follows another unit's as it does inside a model, where
calls of one unit repeated back to back read 10-25% faster; the window keeps the working set
about a model's, as a whole supernet's thousands of points interleaved at once did not: they
evicted oneDNN's primitive cache and read a supernet's layers 30-50% slower than a derived
model's), and a point's value is the median of its rounds. At one CPU thread a sample is the
thread's CPU time (every operator runs in the calling thread; time it spends preempted by another
process is not counted), otherwise wall-clock time after a synchronisation.
Points are cached per device in ``$XDG_CACHE_HOME/dynopool_nas/latency/<fingerprint>.json``
(``~/.cache`` by default), keyed by the unit's configuration and input shape, so identical units
are measured once, ever.

Noise on a shared machine: the median drops samples that another process disturbed, and the
thread clock drops preemption, but not a load that lasts a whole build and shares the core's
caches and memory bandwidth (two processes on this 2-core machine slow each other by 10-30%
even in CPU time); and with as many threads as busy cores a parallel operator waits for a
descheduled partner thread: measure with fewer threads than free cores, and rebuild (delete the
cache file) a table built under load.

Fit (:func:`fit_monotone`): the isotonic least-squares fit of a unit's measured grid against
``x``, the unit's input area ``H * W`` (the work of a convolution, a normalisation, an
activation or a pooling is proportional to it) or, for a DynOPool, its work per channel
(:func:`~dynopool_nas.cost._dynopool_work`, which also depends on its output size and on whether
its query points are pixels), interpolated linearly between its knots and continued beyond the
grid with the slope of the non-negative affine fit ``a + b * x`` (:func:`fit_affine`). It is
monotone by construction, so shrinking a map never raises the predicted latency. History of the
choice (``experiments/latency_validation.py --held-out``: fits on the 3 x 3 even-indexed sub-grid
of 5 x 5 scales, judged on the 16 points between them, 157 layers of three converted CIFAR
models, 1 thread on a loaded 2-core machine): the affine fit alone erred by 15% median and 50% at
the 90th percentile, bilinear interpolation of log latency by 7% and 64% but was non-monotone (a
larger map predicted faster, a wrong-signed gradient) in 124 of the 157 layers; the monotone
interpolant keeps the interpolant's median without its wrong signs (the page
``docs/results/latency.md`` has the numbers of the current version).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._utils import atomic_write, example_input
from .cost import Gate, GMACsCost, _dynopool_work, _Probe, _Source, _spatial, gate_keys
from .layer import DynOPool2d

__all__ = [
    "DEFAULT_SCALES", "LatencyCost", "LatencyTable", "MonotoneFit", "device_fingerprint", "fit_affine", "fit_monotone",
    "measure_model", "measure_models", "model_table",
]

DEFAULT_SCALES: tuple[float, ...] = (0.5, 0.71, 1.0, 1.41)
"""Scale factors of a layer's initial height and width; the grid is every (height, width) pair."""


MEASUREMENT_PROTOCOL = 3
"""Part of the device fingerprint: tables measured another way are not mixed with this one's
(3: one timed call per point and round, interleaved in windows of :data:`WINDOW` points taken
grid size by grid size, thread CPU time at one CPU thread, units as blocks, keyed by torch's
description of the unit)."""

WINDOW = 256
"""Points of a :class:`LatencyTable` interleaved together (see :func:`_measure`): about the
working set of a model (EfficientNet-B0 has ~200 layers), well inside oneDNN's primitive cache."""

MODES = ("inference", "training")
"""``inference``: forward without gradients, modules in eval mode; ``training``: forward and
backward (of the output's sum), modules in train mode, the input requiring a gradient."""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, threads: int | None = None
) -> dict[str, Any]:
    """What a measured latency depends on besides the layer: the CPU model (or the GPU's name),
    the thread count, the torch version and the dtype."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type,
        "name": name,
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "protocol": MEASUREMENT_PROTOCOL,
    }


def _fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    text = json.dumps(dict(fingerprint), sort_keys=True)
    slug = f"{fingerprint['device']}-{fingerprint['threads']}t"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dynopool_nas/latency`` (``~/.cache`` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dynopool_nas" / "latency"


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_affine(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Non-negative least squares ``y ~ a + b * x`` (``a, b >= 0``): the unconstrained fit when
    both are non-negative, else the better of the two one-parameter fits."""
    n = len(x)
    if n == 0:
        raise ValueError("fit_affine needs at least one point")
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((v - mean_x) ** 2 for v in x)
    if sxx > 0:
        b = sum((u - mean_x) * (v - mean_y) for u, v in zip(x, y)) / sxx
        a = mean_y - b * mean_x
        if a >= 0 and b >= 0:
            return a, b
    candidates = [(max(mean_y, 0.0), 0.0)]
    sx2 = sum(v * v for v in x)
    if sx2 > 0:
        candidates.append((0.0, max(sum(u * v for u, v in zip(x, y)) / sx2, 0.0)))
    return min(candidates, key=lambda ab: sum((ab[0] + ab[1] * u - v) ** 2 for u, v in zip(x, y)))


@dataclass(frozen=True)
class MonotoneFit:
    """A unit's latency as a function of its work ``x``: the piecewise-linear interpolant of
    ``knots`` (``x`` ascending, milliseconds non-decreasing) inside them, and beyond them lines of
    the affine fit's ``slope`` (:func:`fit_affine`) from the end knots. Non-decreasing everywhere,
    so a smaller map is never predicted slower and every gradient to a scale has the right sign.
    Evaluated with tensor operations only: no value is read back to the host (a GPU never waits)."""

    knots: tuple[tuple[float, float], ...]
    slope: float
    _tensors: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = field(
        default_factory=dict, compare=False, repr=False)

    def __call__(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in self._tensors:
            self._tensors[key] = (x.new_tensor([u for u, _ in self.knots]), x.new_tensor([v for _, v in self.knots]))
        knots_x, knots_y = self._tensors[key]
        below = (knots_y[0] + self.slope * (x - knots_x[0])).clamp_min(0.0)
        above = knots_y[-1] + self.slope * (x - knots_x[-1])
        if len(self.knots) == 1:
            return torch.where(x <= knots_x[0], below, above)
        right = torch.searchsorted(knots_x, x.detach().reshape(1)).clamp(1, len(self.knots) - 1)[0]
        x0, x1, y0, y1 = knots_x[right - 1], knots_x[right], knots_y[right - 1], knots_y[right]
        inside = y0 + (y1 - y0) / (x1 - x0) * (x - x0)
        return torch.where(x <= knots_x[0], below, torch.where(x >= knots_x[-1], above, inside))


def fit_monotone(x: Sequence[float], y: Sequence[float]) -> MonotoneFit:
    """The isotonic least-squares fit of ``y`` on ``x`` (pool-adjacent-violators; equal ``x``
    averaged) as the knots of a :class:`MonotoneFit`, with the slope of :func:`fit_affine` beyond
    them. It follows a measured grid where the affine fit cannot (a convolution whose algorithm
    changes with the map size) and keeps the affine fit's sign and tail."""
    if len(x) != len(y) or not x:
        raise ValueError("fit_monotone needs as many latencies as work values, at least one")
    by_x: dict[float, list[float]] = {}
    for u, v in zip(x, y):
        by_x.setdefault(float(u), []).append(float(v))
    blocks: list[list[float]] = []  # [x of the first point, sum of y, count, x of the last point]
    for u in sorted(by_x):
        blocks.append([u, sum(by_x[u]), len(by_x[u]), u])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1][1] += last[1]
            blocks[-1][2] += last[2]
            blocks[-1][3] = last[3]
    knots: list[tuple[float, float]] = []
    for first, total, count, last in blocks:
        for u in dict.fromkeys((first, last)):
            knots.append((u, total / count))
    return MonotoneFit(tuple(knots), fit_affine(x, y)[1])


# ----------------------------------------------------------------------------- measurement


def _clock_for(device: torch.device) -> Callable[[], float]:
    """The clock of a sample: on a CPU at one thread, the calling thread's CPU time (every
    operator runs in it, and time the thread spends preempted by another process is not
    counted); otherwise wall-clock time (several threads, or a GPU after a synchronisation)."""
    return time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def _time_ms(run: Callable[[], object], sync: Callable[[], None], clock: Callable[[], float]) -> float:
    sync()
    start = clock()
    run()
    sync()
    return (clock() - start) * 1e3


def _sync_for(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _runner(module: nn.Module, make_args: Callable[[], tuple[Any, ...]], mode: str) -> Callable[[], object]:
    """One call of ``module`` on fresh random arguments (made once), as ``mode`` runs it."""
    args = make_args()
    if mode == "inference":

        def run() -> object:
            with torch.no_grad():
                return module(*args)

        return run
    tensors = [a for a in args if isinstance(a, Tensor) and a.is_floating_point()]
    for tensor in tensors:
        tensor.requires_grad_(True)

    def run_training() -> object:
        output = module(*args)
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total = sum(o.float().sum() for o in outputs if isinstance(o, Tensor) and o.requires_grad)
        if isinstance(total, Tensor):
            total.backward()
        for tensor in tensors:
            tensor.grad = None
        module.zero_grad(set_to_none=True)
        return output

    return run_training


def _measure(
    jobs: Mapping[str, Callable[[], Callable[[], object]]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    window: int,
    seed: int,
    progress: bool,
    description: str,
) -> dict[str, float]:
    """Median milliseconds per call of every job (a factory of a runner), in interleaved rounds.

    Jobs are taken ``window`` at a time, in their given order (a model's units in call order).
    After warm-up, every round calls every job of the window once, in a new random order, and
    times that one call: each call follows another job's, as a layer follows another layer in a
    model. (Calls of one module repeated back to back run from warm instruction caches and branch
    predictors and read 10-25% faster than the same module inside a model.) The window bounds the
    working set to about a model's: interleaving thousands of units at once evicts oneDNN's
    primitive cache (1024 entries by default) and the CPU caches between two calls of a unit,
    reading a depthwise convolution of an EfficientNet block up to 4x slower than in the model."""
    if window < 1:
        raise ValueError(f"window must be a positive number of jobs, got {window!r}")
    sync, clock = _sync_for(device), _clock_for(device)
    samples: dict[str, list[float]] = {key: [] for key in jobs}
    keys = list(jobs)
    rng = random.Random(seed)
    with tqdm(total=len(keys) * (repeats + 1), desc=description, disable=not progress, leave=False) as bar:
        for start in range(0, len(keys), window):
            order = keys[start:start + window]
            for key in order:
                run = jobs[key]()
                for _ in range(max(warmup, 1)):
                    run()
                bar.update()
            for _ in range(repeats):
                rng.shuffle(order)
                for key in order:
                    samples[key].append(_time_ms(jobs[key](), sync, clock))
                    bar.update()
    return {key: statistics.median(values) for key, values in samples.items()}


def measure_models(
    models: Mapping[str, nn.Module],
    input_size: tuple[int, int, int] | Tensor,
    *,
    mode: str = "inference",
    threads: int | None = None,
    repeats: int = 31,
    warmup: int = 3,
    window: int = 1,
    progress: bool = False,
    fresh_process: bool = False,
) -> dict[str, float]:
    """End-to-end latency of every model on one image of ``input_size`` (or on the given batch),
    in milliseconds: the median of ``repeats`` samples, measured as the units of a
    :class:`LatencyTable` are (``mode``, threads, warm-up, one call per sample, the thread's CPU
    clock at one CPU thread). By default (``window=1``) each model runs alone, its calls back to
    back, as a model serving requests runs; ``window=len(models)`` interleaves all models in
    every round instead (a burst of load on a shared machine then reaches each alike, but
    models with many distinct layers evict each other's oneDNN primitives and caches).

    Short samples and a median are what make a shared machine usable: a sample that another
    process preempted is an outlier the median drops, whereas a long sample averages the
    preemption in (on 2 busy cores, 20 ms samples read a 1 ms model up to 2x slow).

    ``fresh_process=True`` measures in a new Python interpreter that has run nothing else
    (:func:`_in_fresh_process`), as a model is served: a process that has trained or built a
    table reads the same model 8-15% slow on a CPU (its heap and caches hold the earlier work)."""
    _check_mode(mode)
    if fresh_process:
        options = {"mode": mode, "threads": threads or torch.get_num_threads(), "repeats": repeats,
                   "warmup": warmup, "window": window}
        return _in_fresh_process(models, input_size, options)
    jobs: dict[str, Callable[[], Callable[[], object]]] = {}
    device = torch.device("cpu")
    for name, model in models.items():
        example = example_input(model, input_size)
        device = example.device
        copied = copy.deepcopy(model)
        copied.train(mode == "training")
        jobs[name] = lambda copied=copied, example=example: _runner(copied, lambda: (example.clone(),), mode)
    with _threads(threads or torch.get_num_threads()):
        return _measure(jobs, device, repeats=repeats, warmup=warmup, window=window, seed=0, progress=progress,
                        description="models")


UNPICKLING_FAILED = 3
"""Exit status of ``python -m dynopool_nas._fresh_process`` when it cannot rebuild the models sent
to it (a class it cannot import)."""


def _in_fresh_process(models: Mapping[str, nn.Module], input_size: tuple[int, int, int] | Tensor,
                      options: dict[str, Any]) -> dict[str, float]:
    """:func:`measure_models` run by ``python -m dynopool_nas._fresh_process``, the models sent
    pickled. Raises ``ValueError`` when they cannot be sent (a class defined in ``__main__``, a
    notebook or a function cannot be imported there), ``RuntimeError`` when the measurement fails."""
    unsendable = ("a model measured in a fresh process is sent there pickled, and this one cannot be ({}); define "
                  "its classes in an importable module, or measure with fresh_process=False")
    try:
        call = pickle.dumps((dict(models), input_size, options))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ValueError(unsendable.format(error)) from error
    search_path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
    with tempfile.TemporaryDirectory(prefix="dynopool-measure-") as folder:
        result = Path(folder) / "milliseconds.json"
        done = subprocess.run(
            [sys.executable, "-m", "dynopool_nas._fresh_process", str(result)], input=call, capture_output=True,
            env=os.environ | {"PYTHONPATH": search_path}, check=False,
        )
        reason = done.stderr.decode(errors="replace").strip()
        if done.returncode == UNPICKLING_FAILED:
            raise ValueError(unsendable.format(reason.splitlines()[-1] if reason else "it could not be rebuilt"))
        if done.returncode:
            raise RuntimeError(f"measuring in a fresh process failed:\n{reason[-3000:]}")
        return json.loads(result.read_text())


def measure_model(model: nn.Module, input_size: tuple[int, int, int] | Tensor, **options: Any) -> float:
    """End-to-end latency of one model in milliseconds (:func:`measure_models`, whose keyword
    ``options`` it takes)."""
    return measure_models({"model": model}, input_size, **options)["model"]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# ----------------------------------------------------------------------------- the table


@dataclass
class _Point:
    """One layer at one input size: how to build it and how to time it."""

    key: str
    module: nn.Module
    shapes: tuple[Any, ...]  # per positional argument: a shape tuple for a tensor, else the value
    feature: float  # the fit's x: input area, or a DynOPool's work per channel
    size: tuple[int, int] | None = None  # the grid's axis: the input size, or a DynOPool's output size


class LatencyTable:
    """Measured milliseconds per call of units at given input sizes, for one device fingerprint.

    Loaded from and saved to ``cache_dir() / <fingerprint>.json`` (atomically) unless ``path`` is
    given or ``cache=False``. :meth:`ensure` measures the points not in it yet, which
    :meth:`LatencyCost.from_model` calls; :attr:`measured` counts the points this object has
    measured and :attr:`seconds` the wall time it spent measuring them.

    Args:
        device: where layers run (the model's device is used by :meth:`LatencyCost.from_model`
            when no table is given).
        dtype: parameters' and inputs' dtype.
        threads: ``torch.set_num_threads`` while measuring (default: the current count).
        mode: ``'inference'`` (default) or ``'training'`` (forward and backward).
        repeats, warmup: interleaved rounds per point (one timed call each) and warm-up calls.
        window: points interleaved together (:data:`WINDOW`; see :func:`_measure`).
        progress: show a tqdm bar while measuring.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
        mode: str = "inference",
        *,
        path: str | Path | None = None,
        cache: bool = True,
        repeats: int = 15,
        warmup: int = 2,
        window: int = WINDOW,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        _check_mode(mode)
        self.device = torch.device(device)
        self.dtype = dtype
        self.mode = mode
        self.fingerprint = device_fingerprint(self.device, dtype, threads)
        self.threads = self.fingerprint["threads"]
        if window < 1:
            raise ValueError(f"window must be a positive number of points, got {window!r}")
        self.repeats, self.warmup, self.window, self.seed = repeats, warmup, window, seed
        self.progress = progress
        self.path: Path | None = None
        if cache:
            self.path = Path(path) if path is not None else cache_dir() / f"{_fingerprint_id(self.fingerprint)}.json"
        self.entries: dict[str, float] = {}
        self.measured = 0
        self.seconds = 0.0
        if self.path is not None and self.path.exists():
            stored = json.loads(self.path.read_text())
            if stored.get("fingerprint") == self.fingerprint:
                self.entries = {k: float(v) for k, v in stored.get("entries", {}).items()}
            else:
                warnings.warn(f"LatencyTable: {self.path} was measured on another device or by another protocol; "
                              "remeasuring", stacklevel=2)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def ensure(self, points: Sequence[_Point]) -> None:
        """Measure every point whose key is not in the table yet (each key once), then save."""
        missing: dict[str, _Point] = {}
        for point in points:
            if point.key not in self.entries:
                missing.setdefault(point.key, point)
        if not missing:
            return
        jobs = {key: self._job(point) for key, point in missing.items()}
        started = time.perf_counter()
        with _threads(self.threads):
            times = _measure(jobs, self.device, repeats=self.repeats, warmup=self.warmup, window=self.window,
                             seed=self.seed, progress=self.progress, description="latency table")
        self.entries.update(times)
        self.measured += len(times)
        self.seconds += time.perf_counter() - started
        self.save()

    def _job(self, point: _Point) -> Callable[[], Callable[[], object]]:
        def make_args() -> tuple[Any, ...]:
            return tuple(
                torch.randn(shape, device=self.device, dtype=self.dtype) if isinstance(shape, torch.Size) else shape
                for shape in point.shapes
            )

        return lambda: _runner(point.module, make_args, self.mode)

    def save(self) -> Path | None:
        """Write the table to its cache file atomically (nothing without a cache file)."""
        if self.path is None:
            return None
        text = json.dumps({"fingerprint": self.fingerprint, "entries": self.entries}, indent=1, sort_keys=True)
        return atomic_write(self.path, lambda path: path.write_text(text + "\n"))


# ----------------------------------------------------------------------------- layers of a model


def model_table(model: nn.Module) -> LatencyTable:
    """The cached table of ``model``'s device and dtype (its first parameter's; the CPU and float32
    without one) at the current thread count, for inference: what a cost defaults to."""
    param = next(model.parameters(), None)
    return LatencyTable("cpu") if param is None else LatencyTable(param.device, param.dtype)


def _units(model: nn.Module, gates: Mapping[str, Gate]) -> dict[str, nn.Module]:
    """The modules that are timed, each as a whole: every DynOPool2d, and the largest modules
    that hold no DynOPool2d and no gated module below themselves (a block with its residual
    addition, a squeeze-excite with its inline multiply, a whole model without a DynOPool).
    Only the inline work of the containers that hold a DynOPool or a choice is not timed."""
    holds_pool = {name for name, module in model.named_modules()
                  if any(isinstance(inner, DynOPool2d) for inner in module.modules())}
    units: dict[str, nn.Module] = {}

    def visit(name: str, module: nn.Module) -> None:
        gated_below = any(key != name and (not name or key.startswith(name + ".")) for key in gates)
        if isinstance(module, DynOPool2d) or (name not in holds_pool and not gated_below):
            units[name] = module
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return units


def _shapes(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(arg.shape if isinstance(arg, Tensor) else arg for arg in args)


def _resized(shapes: tuple[Any, ...], old: tuple[int, int], new: tuple[int, int]) -> tuple[Any, ...]:
    """``shapes`` with every feature-map shape (4-D or more, spatial last) of size ``old`` given size ``new``."""
    return tuple(
        torch.Size((*shape[:-2], *new)) if isinstance(shape, torch.Size) and len(shape) >= 4
        and tuple(shape[-2:]) == old else shape
        for shape in shapes
    )


def _kind(module: nn.Module) -> type:
    """The class that defines what ``module`` computes: the torch layer a subclass only builds
    differently (NNI's ``MutableConv2d`` is a ``Conv2d`` with the same ``forward``), DynOPool2d for
    a supernet's DynOPool, else the module's own class."""
    if isinstance(module, DynOPool2d):
        return DynOPool2d
    for cls in type(module).__mro__:
        torch_layer = cls.__module__.startswith("torch.nn.modules") and cls is not nn.Module
        if torch_layer and type(module).forward is cls.forward:
            return cls
    return type(module)


def _describe(module: nn.Module) -> str:
    """``module`` as torch describes it (:func:`_kind`, its ``extra_repr``, its children), whatever
    its class's ``__repr__`` prints: the same convolution built two ways (a supernet's frozen form,
    NNI's ``MutableConv2d``; a derived model's ``Conv2d``) is then measured once."""
    kind = _kind(module)
    children = ", ".join(f"{name}={_describe(child)}" for name, child in module.named_children())
    return f"{kind.__qualname__}({kind.extra_repr(module)}{'; ' + children if children else ''})"


def _config(module: nn.Module) -> str:
    """A unit's configuration without its learned size (a DynOPool's alpha is a grid axis): its
    description (:func:`_describe`, hashed when long), so that identical blocks share their
    measurements."""
    if isinstance(module, DynOPool2d):
        return f"aggregation={module.aggregation!r}, min_size={module.min_size}"
    text = _describe(module)
    return text if len(text) <= 200 else f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _key(module: nn.Module, shapes: tuple[Any, ...], mode: str, out_size: tuple[int, int] | None = None) -> str:
    args = ",".join(
        "x".join(map(str, s)) if isinstance(s, torch.Size) else repr(s) for s in shapes
    )
    out = f"->{out_size[0]}x{out_size[1]}" if out_size is not None else ""
    kind = _kind(module)
    return f"{mode}|{kind.__module__}.{kind.__qualname__}({_config(module)})|{args}{out}"


def _pool_at(pool: DynOPool2d, in_size: tuple[int, int], out_size: tuple[int, int], dtype: torch.dtype,
             device: torch.device) -> DynOPool2d:
    """A copy of ``pool`` that maps ``in_size`` to ``out_size``."""
    copied = copy.deepcopy(pool).to(device=device, dtype=dtype)
    copied.scale_bounds = None
    copied.max_scale = max(copied.max_scale, *(o / i for o, i in zip(out_size, in_size)))
    with torch.no_grad():
        copied.alpha.copy_(torch.tensor([i / o for i, o in zip(in_size, out_size)], dtype=dtype))
    return copied


def _grid(size0: tuple[int, int], scales: Sequence[float]) -> list[tuple[int, int]]:
    sizes = {(max(1, round(size0[0] * sh)), max(1, round(size0[1] * sw))) for sh in scales for sw in scales}
    return sorted(sizes)


def _pool_points(pool: DynOPool2d, shapes: tuple[Any, ...], out0: tuple[int, int] | None,
                 scales: Sequence[float], grow_input: bool, table: LatencyTable) -> list[_Point]:
    """A DynOPool's grid: its output size scaled by every (height, width) pair of ``scales``, and
    its input size with it when an upstream DynOPool sets that (the ratio kept)."""
    in0 = _spatial_of(shapes)
    if in0 is None or out0 is None:
        raise ValueError(f"{pool.name}: a DynOPool2d needs a 4-D input and output")
    points: dict[str, _Point] = {}
    for sh in scales:
        for sw in scales:
            out = (max(2, round(out0[0] * sh)), max(2, round(out0[1] * sw)))
            size = (max(1, round(in0[0] * sh)), max(1, round(in0[1] * sw))) if grow_input else in0
            point_shapes = _resized(shapes, in0, size)
            key = _key(pool, point_shapes, table.mode, out)
            if key not in points:
                runner = _pool_at(pool, size, out, table.dtype, table.device)
                runner.train(table.mode == "training")
                work = float(_dynopool_work(torch.tensor(size, dtype=torch.float64),
                                            torch.tensor(out, dtype=torch.float64)))
                points[key] = _Point(key, runner, point_shapes, work, out)
    return list(points.values())


Variants = Callable[[str, nn.Module, tuple[Any, ...]], "Sequence[tuple[nn.Module, tuple[Any, ...], Gate]] | None"]
"""The forms of a unit in the architecture (see :meth:`LatencyCost.from_model`)."""


@dataclass
class _Term:
    """One unit call: its fitted latency, the size source of its input and its gates."""

    name: str
    source: int  # the governing size source of its input (-1: a constant size)
    fit: MonotoneFit
    pool: bool = False  # x is the DynOPool work between its parent source and itself
    keys: tuple[str, ...] = field(default_factory=tuple)
    samples: tuple[tuple[int, int, float, float], ...] = ()  # (height, width, x, ms) of the grid
    option: Gate | None = None  # the probability of this form of the unit (a width of a mixed operation)


def _is_variable(sources: list[_Source]) -> list[bool]:
    variable: list[bool] = []
    for source in sources:
        variable.append(source.pool is not None or (source.parent >= 0 and variable[source.parent]))
    return variable


class LatencyCost:
    """Differentiable predicted latency (milliseconds) of a model at a reference input size.

    ``latency = sum_u f_u(x_u)``: for every timed unit ``u`` (see the module description)
    ``x_u = H_u W_u``, its current input area, built from the DynOPools' straight-through sizes
    exactly as :class:`~dynopool_nas.cost.GMACsCost` builds it, and for a DynOPool its work per
    channel at its current input and output sizes; ``f_u`` is the monotone fit of its measured
    grid (:func:`fit_monotone`). A unit whose input size no DynOPool sets is a constant, timed at
    its one size. So every upstream ``alpha`` gets a gradient of the right sign and a smaller map
    is never predicted slower. Calling the object costs a few scalar operations per unit: no
    forward pass.

    ``gates`` (a supernet's choices) weight every unit at or below a gated module by the
    product of its gates, as in :class:`~dynopool_nas.cost.GMACsCost`: the expected latency
    under the architecture distribution (or, ``hard=True``, the derived architecture's).
    """

    def __init__(self, sources: list[_Source], terms: list[_Term], gates: Mapping[str, Gate] | None = None,
                 table: LatencyTable | None = None) -> None:
        self.sources = sources
        self.terms = terms
        self.gates = dict(gates or {})
        self.table = table
        self.calibration = 1.0
        with torch.no_grad():
            self.initial_ms = float(self())

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_size: tuple[int, int, int],
        table: LatencyTable | None = None,
        gates: Mapping[str, Gate] | None = None,
        *,
        scales: Sequence[float] = DEFAULT_SCALES,
        batch_size: int = 1,
        variants: Variants | None = None,
    ) -> LatencyCost:
        """Time (or look up in ``table``) every layer of ``model`` on the grid ``scales`` x
        ``scales`` of its initial input height and width, for a batch of ``batch_size`` images of
        ``input_size`` (channels, height, width), and fit it. ``table`` defaults to the cached
        table of the model's device and dtype at the current thread count, for inference.

        ``variants`` names the forms a unit may take in the architecture when it is not the module
        that runs (a supernet's mixed operation, which runs at its largest width, masked): called
        with a unit's name, module and argument shapes, it returns ``(module, shapes, gate)`` per
        form, each timed on its own (a DynOPool form: on its grid, at those shapes) and weighted
        by its gate (the probability of that form, or 1/0 with ``hard=True``) besides the
        unit's gates; ``None`` to time the unit as it is; or no form at all for a module that is
        part of no architecture (a supernet's own machinery)."""
        if isinstance(input_size, Tensor) or len(input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {input_size!r}")
        if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
            raise ValueError(f"scales must be positive numbers, got {scales!r}")
        param = next(model.parameters(), None)
        table = model_table(model) if table is None else table
        example = torch.zeros(batch_size, *input_size, device=param.device if param is not None else None,
                              dtype=param.dtype if param is not None else None)
        gates = dict(gates or {})
        units = _units(model, gates)
        names = {id(module): name for name, module in units.items()}
        governing: dict[str, list[int]] = {}  # per call: the size source of the unit's input
        recorded: dict[str, list[tuple[tuple[Any, ...], tuple[int, int] | None]]] = {}
        probe = _Probe(model, tuple(example.shape[-2:]))

        def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
            governing.setdefault(names[id(module)], []).append(probe._governing(_spatial_of(_shapes(args))))

        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            recorded.setdefault(names[id(module)], []).append((_shapes(args), _spatial(output)))

        handles = [module.register_forward_pre_hook(enter) for module in units.values()]
        handles += [module.register_forward_hook(record) for module in units.values()]
        try:
            probe.run(example)
        finally:
            for handle in handles:
                handle.remove()
        variable = _is_variable(probe.sources)

        plans: list[tuple[str, int, bool, list[_Point], Gate | None]] = []
        copies: dict[int, tuple[nn.Module, nn.Module]] = {}  # id -> (form, kept alive: its id is not reused; copy)

        def forms_of(name: str, module: nn.Module, shapes: tuple[Any, ...]) -> Sequence[tuple[nn.Module, Any, Any]]:
            forms = variants(name, module, shapes) if variants is not None else None
            return [(module, shapes, None)] if forms is None else forms

        for name, calls in recorded.items():
            module = units[name]
            if isinstance(module, DynOPool2d):
                for index, (shapes, out0) in enumerate(calls):
                    source = probe.calls[name][index]
                    parent = probe.sources[source].parent
                    grow_input = parent >= 0 and variable[parent] and _spatial_of(shapes) == probe.sources[parent].size0
                    for _, form_shapes, option in forms_of(name, module, shapes):
                        points = _pool_points(module, form_shapes, out0, scales, grow_input, table)
                        plans.append((name, source, True, points, option))
                continue
            for index, (shapes, _) in enumerate(calls):
                source = governing[name][index]
                in0 = _spatial_of(shapes)
                grow = source >= 0 and variable[source] and in0 == probe.sources[source].size0
                sizes = _grid(in0, scales) if grow and in0 is not None else [in0]
                for form, form_shapes, option in forms_of(name, module, shapes):
                    if id(form) not in copies:
                        copies[id(form)] = (form, copy.deepcopy(form).to(device=table.device, dtype=table.dtype))
                    copied = copies[id(form)][1]
                    copied.train(table.mode == "training")
                    points = []
                    for size in sizes:
                        point_shapes = _resized(form_shapes, in0, size) if size != in0 else form_shapes
                        area = float(size[0] * size[1]) if size is not None else 0.0
                        points.append(_Point(_key(copied, point_shapes, table.mode), copied, point_shapes, area, size))
                    plans.append((name, source if grow else -1, False, points, option))

        # grid point by grid point, every unit in call order: a window of the table holds the model at a size or two
        longest = max((len(points) for *_, points, _ in plans), default=0)
        table.ensure([points[i] for i in range(longest) for *_, points, _ in plans if i < len(points)])
        terms = []
        for name, source, pool, points, option in plans:
            xs = [point.feature for point in points]
            ys = [table.entries[point.key] for point in points]
            samples = tuple((*(p.size or (0, 0)), p.feature, y) for p, y in zip(points, ys))
            terms.append(_Term(name, source, fit_monotone(xs, ys), pool, gate_keys(name, gates), samples, option))
        if not any(s.pool is not None for s in probe.sources):
            warnings.warn("LatencyCost: the model has no DynOPool2d; the cost is a constant", stacklevel=2)
        return cls(probe.sources, terms, gates, table)

    # the straight-through sizes and the DynOPools' sizes are GMACsCost's (they only read self.sources)
    sizes = GMACsCost.sizes
    feature_map_sizes = GMACsCost.feature_map_sizes

    def _value(self, term: _Term, sizes: list[Tensor]) -> Tensor:
        """One unit call's fitted latency at ``sizes`` (float64), ungated."""
        if term.source < 0:
            return sizes[0].new_tensor(term.fit.knots[0][1])
        if term.pool:
            return term.fit(_dynopool_work(sizes[self.sources[term.source].parent], sizes[term.source]))
        return term.fit(sizes[term.source].prod())

    def __call__(self, hard: bool = False) -> Tensor:
        """Predicted latency in milliseconds (float64), differentiable w.r.t. every DynOPool's
        alpha (and, with soft gates, the gates' parameters)."""
        sizes = [size.double() for size in self.sizes()]
        gate_values = {key: gate(hard) for key, gate in self.gates.items()}
        total = sizes[0].new_zeros(())
        for term in self.terms:
            value = self._value(term, sizes)
            for key in term.keys:
                value = value * gate_values[key]
            if term.option is not None:
                value = value * term.option(hard)
            total = total + value
        return total * self.calibration

    def calibrate(self, latency_ms: float) -> float:
        """Scale every prediction so that the current one (``hard=True``) is ``latency_ms``,
        the latency of the same architecture taken whole (measured end to end, or predicted
        from the units of its plain model): a sum of separately timed units misses the work
        between them and times each from colder caches than a model gives it. The factor
        (returned, and kept in ``calibration``) replaces any earlier one; ``initial_ms`` is
        scaled by it too, so a relative lambda prices the same."""
        if not (math.isfinite(latency_ms) and latency_ms > 0):
            raise ValueError(f"latency_ms must be a positive number of milliseconds, got {latency_ms!r}")
        with torch.no_grad():
            summed = float(self(hard=True)) / self.calibration
            if not summed > 0:
                raise ValueError("the cost predicts no latency to calibrate")
            self.initial_ms *= latency_ms / summed / self.calibration
            self.calibration = latency_ms / summed
        return self.calibration

    def layer_ms(self) -> dict[str, float]:
        """Predicted milliseconds per timed layer (all its calls together) at the current sizes,
        ungated, calibrated as the whole is."""
        out: dict[str, float] = {}
        with torch.no_grad():
            sizes = [size.double() for size in self.sizes()]
            for term in self.terms:
                out[term.name] = out.get(term.name, 0.0) + float(self._value(term, sizes)) * self.calibration
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers for logs and metrics: the predicted latency and every DynOPool's size."""
        with torch.no_grad():
            return {"latency_ms": float(self()), "sizes": self.feature_map_sizes()}


def _spatial_of(shapes: tuple[Any, ...]) -> tuple[int, int] | None:
    """The spatial size of the first feature map (4-D or more, spatial last) among ``shapes``."""
    for shape in shapes:
        if isinstance(shape, torch.Size) and len(shape) >= 4:
            return int(shape[-2]), int(shape[-1])
    return None
