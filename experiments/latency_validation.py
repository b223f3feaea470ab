"""Validation of the measured latency model (dynopool_nas.latency) on this machine.

Default: architectures drawn from the cell space and the EfficientNet-derived space (random
choices, every DynOPool at a random scale per axis), their predicted latency (``LatencyCost`` of
the frozen architecture) against their measured end-to-end latency (``measure_models``: batch 1,
the median of the calls), with GMACs beside them: Spearman correlations and relative errors, per
space and together. Two protocols: the models' calls interleaved (every round calls every model
once, in a new random order) and each model alone (its calls back to back). Every model is
measured in several passes per protocol (``--passes``), each in a fresh process, and the median
taken; their range is the measurement's noise.

``--budget-search``: a latency-budget search (``dynopool-nas search --latency-budget-ms
--latency-anchor measured``) on each space, its budget inside the range the scales can reach
(``--budget-position``); the derived architecture is timed (in fresh processes) and compared with
its budget.

``--held-out``: the choice of the per-unit fit. Every unit of the drawn architectures is timed
on the grid of scale factors; the fits are made on the even-indexed sub-grid and judged on the
points between them: the affine fit, the monotone fit (the model's) and bilinear interpolation
of log latency; how many units each makes non-monotone (a bigger map predicted faster).

    python experiments/latency_validation.py                    # the results page, ~3 minutes on 1 thread
    python experiments/latency_validation.py --budget-search    # and four budget searches, ~21-30 minutes
    python experiments/latency_validation.py --budget-search --budget-repeats 4   # the page as committed, ~55 minutes
    python experiments/latency_validation.py --held-out         # the fit comparison, printed
    python experiments/latency_validation.py --budget-only --passes 3   # the budget searches alone, printed

Results go to docs/results/latency.md (+ latency.png). The table is built in a fresh cache folder
unless --cache is given, so its build time is measured too.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator
from scipy.stats import spearmanr

from dynopool_nas import GMACsCost, LatencyCost, LatencyTable, dynopool_layers, measure_models
from dynopool_nas._utils import atomic_write
from dynopool_nas.latency import DEFAULT_SCALES, fit_affine, fit_monotone
from search_spaces.arch import build_model, load_architecture, name_dynopools
from search_spaces.registry import make_space

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SPACES = ("cells", "efficientnet")
INPUT_SIZE = (1, 32, 32)
PROTOCOLS = ("interleaved", "alone")
"""How the end-to-end latency is measured: the models' calls interleaved, or each model alone."""


def draw_architecture(space_name: str, rng: random.Random, scale_range: tuple[float, float]) -> torch.nn.Module:
    """One architecture of a space: a random candidate for every choice and a random scale per
    axis for every DynOPool."""
    space = name_dynopools(make_space(space_name, 10, INPUT_SIZE[0]))
    choices = {label: rng.choice(list(mutable.grid())) for label, mutable in space.simplify().items()}
    model = space.freeze(choices).eval()
    with torch.no_grad():
        for _, layer in dynopool_layers(model):
            layer.alpha.copy_(torch.tensor([1 / rng.uniform(*scale_range), 1 / rng.uniform(*scale_range)]))
    return model


BUDGET_TEXT = (
    "Each space searched {budget_repeats} times (`--seed` 0, 1, ...) as a user searches it: `dynopool-nas search "
    "--space S --latency-budget-ms B --latency-"
    "anchor measured --epochs {search_epochs} --max-train-images {search_images} --image-size 32` (DARTS, bundled "
    "digits), in a fresh process at {threads} thread(s). `--latency-anchor measured` (the default) calibrates the "
    "search's predicted latency, at the start and after every epoch, to the table's prediction of the architecture "
    "it derives at that moment, scaled by the measured over predicted latency of the architecture it starts from "
    "(measured before training, in three fresh processes), so B means measured milliseconds; when training ends "
    "the search measures the architecture it ends with the same way (once more if it lay more than 3% from B), "
    "calibrates to it and projects B again (`LatencyConstraint.settle`). A budget is held by the DynOPool scales, "
    "so B must lie in the range they can reach (`LatencyConstraint.reach`; a budget out of it is held at its "
    "nearest end, with a warning; while it lies below that range the latency also joins the architecture loss, so "
    "that the choices move to cheaper operations): B lies {budget_position} of the way, on a log scale, from the"
    " lowest to the highest latency that range allows for a supernet of the space as a search starts (random "
    "initial architecture weights, every DynOPool at the space's 0.5; calibrated the same way). The search's "
    "latency table is built from empty by that step (every block of the supernet timed whole in every combination "
    "of its choices, on the search grid 0.5-2.83) and read by the search from its cache file. The derived "
    "architecture is rebuilt from `arch.json` and measured alone in fresh processes like the architectures above "
    "(the median of the passes); the target is to end within 10% of the budget. 'Measurement noise' is the passes' "
    "range relative to their median. 'Derived model predicted' is the derived architecture's own latency model in "
    "the search's table, uncalibrated (what `compare` predicts), its missing grid points measured in this process "
    "(which has built tables: it can read slow)."
)


def reachable_budget(space_name: str, table: LatencyTable, position: float) -> tuple[float, float, float]:
    """``(budget, lowest, highest)``: the budget ``position`` of the way (log scale) through the
    latency range the DynOPool scales can reach in the space's supernet as a search starts."""
    from strategies import DynOPoolDARTS, LatencyConstraint

    torch.manual_seed(0)
    supernet = DynOPoolDARTS(input_size=INPUT_SIZE).mutate_model(make_space(space_name, 10, INPUT_SIZE[0]))
    constraint = LatencyConstraint(lam=0.0, table=table, anchor="measured")
    lowest, highest = constraint.bind(constraint.supernet_cost(supernet, INPUT_SIZE)).reach()
    return lowest * (highest / lowest) ** position, lowest, highest


def _errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(predicted - measured) / measured


def drawn_architectures(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """The architectures of the validation, by name (the same for the same arguments)."""
    rng = random.Random(args.seed)
    return {f"{space_name}-{index}": draw_architecture(space_name, rng, tuple(args.scale_range))
            for space_name in SPACES for index in range(args.draws)}


def measured_elsewhere(args: argparse.Namespace, models: dict[str, torch.nn.Module],
                       interleaved: bool = False) -> dict[str, float]:
    """Milliseconds per model, measured in a fresh Python process (``measure_models(...,
    fresh_process=True)``: no table, no search, no training ran in it, so their heap and caches
    do not reach the measurement)."""
    return measure_models(models, INPUT_SIZE, threads=args.threads, repeats=args.repeats,
                          window=len(models) if interleaved else 1, fresh_process=True)


def end_to_end(args: argparse.Namespace, table: LatencyTable) -> tuple[list[str], dict[str, Any]]:
    models = drawn_architectures(args)
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name, model in models.items():
        cost = LatencyCost.from_model(model, INPUT_SIZE, table)
        rows[name] = {"space": name.rsplit("-", 1)[0], "predicted": float(cost().detach()),
                      "gmacs": float(GMACsCost.from_model(model, INPUT_SIZE)().detach()),
                      "sizes": cost.feature_map_sizes()}
    build_s = time.perf_counter() - started
    passes: dict[str, list[dict[str, float]]] = {protocol: [] for protocol in PROTOCOLS}
    for _ in range(args.passes):
        for protocol in PROTOCOLS:
            passes[protocol].append(measured_elsewhere(args, models, interleaved=protocol == "interleaved"))
    for name, row in rows.items():
        for protocol in PROTOCOLS:
            times = [p[name] for p in passes[protocol]]
            row[protocol] = statistics.median(times)
            row[f"{protocol} noise"] = (max(times) - min(times)) / row[protocol]

    lines = [
        f"{len(rows)} architectures ({args.draws} per space), input {INPUT_SIZE[1]}x{INPUT_SIZE[2]} "
        f"({INPUT_SIZE[0]} channel), batch 1, {args.threads} thread(s), inference; every DynOPool at a scale drawn "
        f"uniformly from {args.scale_range[0]}..{args.scale_range[1]} per axis (the spaces start at 0.5). The latency "
        f"table (grid: scale factors {list(DEFAULT_SCALES)} of each unit's initial height and width) was built from "
        f"an empty cache in {build_s:.0f} s ({table.measured} points).",
        "",
        "| architectures | measured | Spearman predicted/measured | Spearman GMACs/measured | median error | "
        "median signed error | 90th percentile | largest | measurement noise (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for label, names in [*((s, [n for n in rows if rows[n]["space"] == s]) for s in SPACES), ("all", list(rows))]:
        predicted, gmacs = (np.array([rows[n][k] for n in names]) for k in ("predicted", "gmacs"))
        for protocol in PROTOCOLS:
            measured = np.array([rows[n][protocol] for n in names])
            errors = _errors(predicted, measured)
            stats = {"spearman": spearmanr(predicted, measured)[0], "spearman_gmacs": spearmanr(gmacs, measured)[0],
                     "median": float(np.median(errors)), "signed": float(np.median((predicted - measured) / measured)),
                     "p90": float(np.quantile(errors, 0.9)), "max": float(errors.max()),
                     "noise": statistics.median(rows[n][f"{protocol} noise"] for n in names)}
            summary[label, protocol] = stats
            lines.append(f"| {label} ({len(names)}) | {protocol} | {stats['spearman']:.3f} | "
                         f"{stats['spearman_gmacs']:.3f} | {stats['median']:.1%} | {stats['signed']:+.1%} | "
                         f"{stats['p90']:.1%} | {stats['max']:.1%} | {stats['noise']:.1%} |")
    verdicts = []
    for protocol in PROTOCOLS:
        overall = summary["all", protocol]
        met = overall["spearman"] >= 0.9 and overall["median"] <= 0.10
        verdicts.append(f"measured {protocol}: **{'met' if met else 'not met'}** (Spearman {overall['spearman']:.3f}, "
                        f"median error {overall['median']:.1%}; GMACs: Spearman {overall['spearman_gmacs']:.3f})")
    lines += [
        "",
        "Targets (Spearman >= 0.9 and median absolute error <= 10%, all architectures): " + "; ".join(verdicts) + ".",
        "",
        "Measurement: every architecture frozen at its drawn choices and scales, batch 1, inference, "
        f"{args.threads} thread(s), `measure_models` ({args.repeats} calls per model after warm-up, the median; at "
        "one thread the thread's CPU time, so time spent preempted by another process is not counted), in "
        f"{args.passes} passes per protocol, alternating, each in a fresh Python process (the process that built the "
        "table or ran a search reads the same model up to 30% slower, and a tiny model's latency differs from "
        "process to process); 'measured' is the median of the passes and 'measurement noise' their range (largest "
        "minus smallest) relative to it, the floor under any error here. Two protocols: *interleaved*, the median "
        "of interleaved repeats (every round calls every architecture once, in a new random order: each call "
        "follows another model's, as the table's units are timed, and a slow spell of the machine reaches all "
        "models alike); *alone*, every architecture's calls back to back, as a model serving requests runs, from "
        "warmer caches: the table's sum runs high against it (median signed error), most on the cell space's tiny "
        "models, whose latency is mostly per-call work. A load that lasts a whole pass is not removed: run it on a "
        "quiet machine.",
    ]
    lines += ["", "| architecture | predicted (ms) | measured interleaved (ms) | error | measured alone (ms) | error | "
              "GMACs | DynOPool sizes |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        sizes = ", ".join(f"{h}x{w}" for h, w in row["sizes"].values())
        errors = " | ".join(f"{row[protocol]:.3f} | {(row['predicted'] - row[protocol]) / row[protocol]:+.1%}"
                            for protocol in PROTOCOLS)
        lines.append(f"| {name} | {row['predicted']:.3f} | {errors} | {row['gmacs']:.4f} | {sizes} |")
    _plot(rows, RESULTS / "latency.png")
    return lines, summary


def _plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for space_name, marker in zip(SPACES, "os"):
        chosen = [r for r in rows.values() if r["space"] == space_name]
        measured = [r[PROTOCOLS[0]] for r in chosen]
        left.scatter(measured, [r["predicted"] for r in chosen], marker=marker, label=space_name)
        right.scatter(measured, [r["gmacs"] for r in chosen], marker=marker, label=space_name)
    top = max(max(r[PROTOCOLS[0]], r["predicted"]) for r in rows.values()) * 1.05
    left.plot([0, top], [0, top], color="grey", linewidth=0.8)
    xlabel = f"measured latency, {PROTOCOLS[0]} (ms)"
    left.set(xlabel=xlabel, ylabel="predicted latency (ms)", title="LatencyCost")
    right.set(xlabel=xlabel, ylabel="GMACs", title="GMACs")
    for axis in (left, right):
        axis.legend()
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)


def _search_table(args: argparse.Namespace, cache: Path) -> LatencyTable:
    """The latency table ``dynopool-nas search`` reads and extends when run with
    ``XDG_CACHE_HOME=cache`` at ``args.threads`` threads (its cache file)."""
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(cache)}):
        return LatencyTable(threads=args.threads)


def budget_search(args: argparse.Namespace, scratch: Path) -> list[str]:
    """Latency-budget searches, ``--budget-repeats`` per space (seeds 0, 1, ...), run as a user runs
    them (``dynopool-nas search --latency-budget-ms B --latency-anchor measured``, in a fresh
    process), the space's table built from empty by the first (the supernet's: every block in every
    combination of its choices on the grid), and each derived architecture measured in fresh
    processes against the budget."""
    lines = ["| space | seed | reachable at the start (ms) | budget (ms) | held by the search (ms) | "
             "derived model predicted (ms) | measured (ms) | measurement noise | measured / budget | supernet table | "
             "search | out-of-reach warning |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    within = 0
    for space_name in args.budget_spaces:
        cache = scratch / f"{space_name}-cache"
        search_table = _search_table(args, cache)
        budget, lowest, highest = reachable_budget(space_name, search_table, args.budget_position)
        built = f"{search_table.measured} points, {search_table.seconds:.0f} s"
        for seed in range(args.budget_repeats):
            output = scratch / f"{space_name}-search-{seed}"
            command = [sys.executable, "-m", "strategies.commands.cli", "search", "--space", space_name,
                       "--dataset", "digits", "--epochs", str(args.search_epochs), "--output", str(output),
                       "--image-size", str(INPUT_SIZE[1]), "--max-train-images", str(args.search_images),
                       "--seed", str(seed), "--latency-budget-ms", repr(budget), "--latency-anchor", "measured"]
            environment = os.environ | {"XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": str(args.threads)}
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False)
            took = time.perf_counter() - started
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
            print(*(line for line in done.stderr.splitlines() if "Warning: " in line), sep="\n", flush=True)
            warned = (line for line in done.stderr.splitlines() if "out of reach" in line)
            reach = next((line.split("Warning: ", 1)[-1] for line in warned), "")
            arch = load_architecture(output / "arch.json")
            held = arch["metrics"].get("latency_ms", float("nan"))
            model = build_model(make_space(space_name, 10, INPUT_SIZE[0]), arch).eval()
            predicted = float(LatencyCost.from_model(model, INPUT_SIZE, _search_table(args, cache))().detach())
            passes = [measured_elsewhere(args, {"derived": model})["derived"] for _ in range(args.passes)]
            measured = statistics.median(passes)
            ratio = measured / budget
            within += abs(ratio - 1) <= 0.1
            verdict = "within" if abs(ratio - 1) <= 0.1 else "not within"
            lines.append(f"| {space_name} | {seed} | {lowest:.3f} to {highest:.3f} | {budget:.3f} | {held:.3f} | "
                         f"{predicted:.3f} | {measured:.3f} | {(max(passes) - min(passes)) / measured:.1%} | "
                         f"{ratio:.3f} ({verdict} 10%) | {built if seed == 0 else 'cached'} | {took:.0f} s | "
                         f"{reach or 'no'} |")
            print(lines[-1], flush=True)
    searches = len(args.budget_spaces) * args.budget_repeats
    return [*lines, "", f"**{within} of {searches}** searches ended within 10% of their budget."]


def held_out(args: argparse.Namespace, table: LatencyTable) -> None:
    grid = (0.35, 0.5, 0.71, 1.0, 1.41)
    errors: dict[str, list[float]] = {"affine": [], "monotone": [], "bilinear": []}
    nonmonotone = {"bilinear": 0}
    units = 0
    rng = random.Random(args.seed)
    for space_name in SPACES:
        for _ in range(args.draws):
            cost = LatencyCost.from_model(draw_architecture(space_name, rng, (0.5, 0.5)), INPUT_SIZE, table,
                                          scales=grid)
            for term in cost.terms:
                if term.pool:
                    continue
                hs, ws = sorted({h for h, *_ in term.samples}), sorted({w for _, w, *_ in term.samples})
                if len(hs) != len(grid) or len(ws) != len(grid):
                    continue  # a constant unit, or a map so small that grid sizes coincide
                by_size = {(h, w): (x, ms) for h, w, x, ms in term.samples}
                train = [(h, w) for h in hs[::2] for w in ws[::2]]
                test = [s for s in by_size if s not in train]
                xs, ys = [by_size[s][0] for s in train], [by_size[s][1] for s in train]
                a, b = fit_affine(xs, ys)
                monotone = fit_monotone(xs, ys)
                values = np.log([[by_size[h, w][1] for w in ws[::2]] for h in hs[::2]])
                interpolate = RegularGridInterpolator((np.log(hs[::2]), np.log(ws[::2])), values)
                bilinear = {s: float(np.exp(interpolate((math.log(s[0]), math.log(s[1]))))) for s in test}
                units += 1
                if any(bilinear[s] > bilinear[t] for s in test for t in test
                       if s[0] <= t[0] and s[1] <= t[1] and s != t):
                    nonmonotone["bilinear"] += 1
                for size in test:
                    x, measured = by_size[size]
                    errors["affine"].append(abs(a + b * x - measured) / measured)
                    errors["monotone"].append(abs(float(monotone(torch.tensor(x, dtype=torch.float64))) - measured)
                                              / measured)
                    errors["bilinear"].append(abs(bilinear[size] - measured) / measured)
    print(f"{units} units on the full grid, {len(errors['affine'])} held-out points")
    for fit, values in errors.items():
        print(f"  {fit:8s} relative error: median {statistics.median(values):.3f}, "
              f"90th percentile {float(np.quantile(values, 0.9)):.3f}")
    print(f"  bilinear interpolant non-monotone (a bigger map predicted faster) in {nonmonotone['bilinear']} of "
          f"{units} units; the affine and monotone fits are monotone by construction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", action="store_true", help="compare the fits on held-out grid points (printed)")
    parser.add_argument("--budget-search", action="store_true", help="also run a latency-budget search per space")
    parser.add_argument("--budget-only", action="store_true",
                        help="only the latency-budget searches, printed (the results page is not rewritten)")
    parser.add_argument("--budget-spaces", nargs="+", choices=SPACES, default=list(SPACES),
                        help="the spaces searched with a latency budget")
    parser.add_argument("--draws", type=int, default=12, help="architectures per space")
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.3, 0.8), metavar=("LOW", "HIGH"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=31, help="timed calls per model in each end-to-end pass")
    parser.add_argument("--budget-position", type=float, default=0.2,
                        help="budget: this far (0..1, log scale) from the lowest to the highest latency the scales can "
                             "reach as a search starts")
    parser.add_argument("--budget-repeats", type=int, default=2,
                        help="latency-budget searches per space (seeds 0..N-1)")
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--search-images", type=int, default=512)
    parser.add_argument("--cache", help="latency table file (default: a fresh one, so that its build is timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=5,
                        help="end-to-end measurements of every model, each in a fresh process (the median is used)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        table = LatencyTable(threads=args.threads, path=args.cache or Path(scratch) / "table.json")
        print(f"device {table.fingerprint}")
        if args.held_out:
            held_out(args, table)
            return
        if args.budget_only:  # a repeat of the budget searches, printed; the results page is left as it is
            print("\n".join(budget_search(args, Path(scratch))))
            return
        lines, _ = end_to_end(args, table)
        print("\n".join(lines), flush=True)
        if args.budget_search:
            lines += ["", "## Latency-budget searches", "", BUDGET_TEXT.format(**vars(args)), "",
                      *budget_search(args, Path(scratch))]
    command = " ".join(["python", "experiments/latency_validation.py", *sys.argv[1:]])
    header = [
        "# Latency model: predicted against measured end-to-end latency",
        "",
        f"Command: `{command}` (from the repository root)  ",
        f"Seed: {args.seed}  ",
        f"Machine: {platform.machine()}, {table.fingerprint['name']}, {args.threads} thread(s), "
        f"torch {torch.__version__}  ",
        f"Wall time: {time.perf_counter() - started:.0f} s",
        "",
    ]
    atomic_write(RESULTS / "latency.md", lambda path: path.write_text("\n".join(header + lines) + "\n"))


if __name__ == "__main__":
    main()
