"""Thesis Table 5.3 analogue on real data (Fashion-MNIST, 32x32 padded): architectures found by a
one-shot search of the cell space and of the EfficientNet-derived space, each in budget mode at
EfficientNet-B0's and at -B1's GMACs, retrained from scratch against EfficientNet-B0 and -B1
under one recipe (the design card's comparison).

1. EfficientNet-B0's and -B1's GMACs are counted (fvcore) at the run's input: timm's models with
   the data set's channels and classes.
2. Four searches with the library's own ``dynopool-nas search`` code (``run_search``): space
   ``cells`` and ``efficientnet``, each with ``gmacs_budget`` at B0's and at B1's GMACs, DARTS,
   on the seeded training subset (weights) and the validation split (architecture), never the
   test split. A budget a space cannot reach is held at the nearest end of its range with a
   warning; the warning and the GMACs the search ended at are on the page.
3. The four architectures and both EfficientNets trained from scratch with ``dynopool-nas
   compare`` (``run_compare``): one recipe, every seed, the same training subset; validation top-1
   after the last epoch and test top-1 on the full test split.
4. Each searched architecture paired by seed with B0 and with B1 (test top-1 difference, 95%
   t-interval), and read against the straight line through B0 and B1 in (GMACs, test top-1).

The searches write to ``runs/<page>/`` (ignored by git: their ``weights.pt``); only each
``arch.json`` is copied to ``docs/results/<page>/searches/<name>/``, and the comparison is read
from there and written to ``docs/results/<page>/compare/``.

    python experiments/paper/table_5_3.py
    python experiments/paper/table_5_3.py --dataset digits --train-images 128 --search-epochs 1 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import timm
from _report import (
    RESULTS,
    ROOT,
    experiment_arguments,
    page_name,
    paired,
    summarize,
    training_subset,
    verdict,
    write_report,
)

from dynopool_nas import count_macs, load_dataset
from strategies.commands.compare import run_compare
from strategies.commands.search import run_search
from strategies.commands.settings import BASELINES, CompareSettings, SearchSettings

SPACES = ("cells", "efficientnet")
BUDGET_MISS = 0.05  # the constraint's own tolerance: a search that ends further from its budget missed it


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=32, help="square input size; GMACs are counted at it")
    parser.add_argument("--search-epochs", type=int, default=1, help="epochs of each one-shot search")
    parser.add_argument("--search-images", type=int, default=1280,
                        help="training subset of the searches (0: all). NNI's DARTS cycles the shorter of its "
                        "training and validation loaders, so an epoch is max(N / 64, validation images / 256) steps: "
                        "on Fashion-MNIST's 5,000 validation images, up to 1,280 cost no more than fewer")


def _baseline_gmacs(args: argparse.Namespace, in_chans: int, num_classes: int) -> dict[str, dict[str, float]]:
    """GMACs and parameters of each baseline at the run's input (the budgets of the searches)."""
    measured = {}
    for name in BASELINES:
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
        measured[name] = {"gmacs": count_macs(model, (in_chans, args.image_size, args.image_size)).gmacs,
                          "params": sum(p.numel() for p in model.parameters())}
    return measured


def _search_settings(space: str, budget: float, output: Path, args: argparse.Namespace) -> SearchSettings:
    """One budget-mode search of ``space`` on the seeded training subset (weights) and validation
    split (architecture) of the first seed."""
    return SearchSettings(
        space=space, dataset=args.dataset, data_dir=args.data_dir, epochs=args.search_epochs, output=output,
        image_size=args.image_size, gmacs_budget=budget, max_train_images=args.search_images or None,
        seed=args.seeds[0],
    )


def _search(settings: SearchSettings) -> dict[str, Any]:
    """Run one search; its architecture, its out-of-reach warning (if any) and its time."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        arch, _ = run_search(settings)
    messages = [str(w.message) for w in caught if "GMACs budget" in str(w.message)]
    for message in messages:
        print(f"{settings.space} at {settings.gmacs_budget:.4g} GMACs: {message}", flush=True)
    return {"arch": arch, "warning": " ".join(messages), "seconds": time.perf_counter() - started}


def _ended_over_budget(result: dict[str, Any], budgets: dict[str, float]) -> float:
    """GMACs of the architecture a search derived at its end, over its budget."""
    return result["arch"]["metrics"]["gmacs"] / budgets[result["baseline"]]


def _same_as(found: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each search whose architecture (space, choices, scales) equals an earlier one's, mapped to
    that one: a budget out of reach of a space is held at the same end of its range whatever the
    budget, and the search, deterministic for its seed, then finds the same architecture."""
    first: dict[str, str] = {}
    same = {}
    for label, result in found.items():
        arch = result["arch"]
        key = json.dumps([arch["space"], arch["choices"], arch["scales"]], sort_keys=True)
        if key in first:
            same[label] = first[key]
        first.setdefault(key, label)
    return same


def _pairs(mapping: dict[str, Any], digits: int = 3) -> str:
    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "x".join(shown(v) for v in value) if all(isinstance(v, int) for v in value) \
                else "(" + ", ".join(shown(v) for v in value) + ")"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    return ", ".join(f"`{key}` {shown(value)}" for key, value in mapping.items()) or "none"


def _line_reading(summary: pd.DataFrame, searched: list[str]) -> pd.DataFrame:
    """Each searched architecture against the straight line through B0 and B1 in (GMACs, mean
    test top-1): the line's top-1 at its GMACs and how far above (positive) or below it lies."""
    b0, b1 = (summary.set_index("model").loc[name] for name in BASELINES)
    slope = (b1["test_top1_mean"] - b0["test_top1_mean"]) / (b1["gmacs"] - b0["gmacs"])
    rows = []
    for name in searched:
        row = summary.set_index("model").loc[name]
        line = b0["test_top1_mean"] + slope * (row["gmacs"] - b0["gmacs"])
        inside = min(b0["gmacs"], b1["gmacs"]) <= row["gmacs"] <= max(b0["gmacs"], b1["gmacs"])
        rows.append({"model": name, "gmacs": row["gmacs"], "test_top1_mean": row["test_top1_mean"],
                     "line_at_gmacs": line, "above_line_by": row["test_top1_mean"] - line,
                     "reading": ("above" if row["test_top1_mean"] > line else "on or below") + " the line"
                     + ("" if inside else " (GMACs outside B0..B1: the line extrapolated)")})
    return pd.DataFrame(rows)


def _searched_section(found: dict[str, dict[str, Any]], same: dict[str, str], budgets: dict[str, float],
                      compared: pd.DataFrame, folder: str) -> list[str]:
    lines = []
    for label, result in found.items():
        arch, name = result["arch"], label.split(":", 1)[1]
        baseline, budget = result["baseline"], budgets[result["baseline"]]
        ended = arch["metrics"]["gmacs"]
        retrained = compared.set_index("model").loc[label, "gmacs"]
        missed = abs(_ended_over_budget(result, budgets) - 1) > BUDGET_MISS
        lines += [
            f"### {label}", "",
            f"* space `{arch['space']}`, budget {budget:.4g} GMACs ({baseline}'s); the search ended at "
            f"**{ended:.4g} GMACs** ({ended / budget:.2f}x the budget"
            + (", **budget missed**" if missed else "") + f"); retrained model (DynOPools frozen): "
            f"{retrained:.4g} GMACs (fvcore)",
            f"* budget warning: {result['warning'] or 'none'}",
            *([f"* **the same architecture as {same[label]}** (space, choices and scales identical): trained once, "
               f"its rows in the tables are {same[label]}'s"] if label in same else []),
            f"* supernet's validation top-1 at the end of the search: {arch['metrics']['default']:.4f}; "
            f"search time {result['seconds']:.0f} s",
            f"* learned scales (r_h, r_w): {_pairs(arch['scales'])}",
            f"* feature-map sizes after each DynOPool at {arch['input_size'][1]}x{arch['input_size'][2]}: "
            f"{_pairs(arch['sizes'])}",
            f"* choices: {_pairs(arch['choices'])}",
            f"* `{folder}/searches/{name}/arch.json`", "",
        ]
    return lines


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1], epochs=2, train_images=4800, extra=_options)
    started = time.perf_counter()
    name = page_name("table_5_3", args.dataset)
    folder, scratch = RESULTS / name, ROOT / "runs" / name
    splits = load_dataset(args.dataset, image_size=args.image_size, root=args.data_dir, seed=args.seeds[0])
    baselines = _baseline_gmacs(args, splits.in_chans, splits.num_classes)
    budgets = {baseline: measured["gmacs"] for baseline, measured in baselines.items()}
    print(f"budgets (GMACs at {args.image_size}x{args.image_size}): {budgets}", flush=True)
    timings: dict[str, float] = {}

    found: dict[str, dict[str, Any]] = {}
    shutil.rmtree(folder / "searches", ignore_errors=True)
    for space in SPACES:
        for baseline, budget in budgets.items():
            search = f"{space}_budget_{baseline.removeprefix('efficientnet_')}"
            search_settings = _search_settings(space, budget, scratch / search, args)
            result = _search(search_settings)
            (folder / "searches" / search).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch / search / "arch.json", folder / "searches" / search / "arch.json")
            found[f"dynopool:{search}"] = result | {"baseline": baseline}
            timings[f"search {search}"] = result["seconds"]
            print(f"{search}: {result['arch']['metrics']}, {result['seconds']:.0f} s", flush=True)

    before = time.perf_counter()
    same = _same_as(found)  # trained once: a rerun would repeat the same numbers
    compare = CompareSettings(
        architectures=[folder / "searches" / label.split(":", 1)[1] for label in found if label not in same],
        output=folder / "compare",
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, image_size=args.image_size,
        max_train_images=args.train_images or None, seeds=args.seeds,
    )
    run_compare(compare)
    timings["compare (every model, every seed)"] = time.perf_counter() - before
    runs = pd.read_csv(folder / "compare" / "comparison_runs.csv").rename(columns={"top1": "val_top1"})
    tested = "test_top1" in runs
    if not tested:  # a data set without a test split: the validation split stands in, and the page says so
        runs["test_top1"] = runs["val_top1"]
    runs["epochs"] = args.epochs
    runs = pd.concat([runs, *(runs[runs["model"] == original].assign(model=label) for label, original in same.items())],
                     ignore_index=True)
    order = {model: index for index, model in enumerate([*BASELINES, *found])}
    runs = runs.sort_values(["model", "seed"], key=lambda c: c.map(order) if c.name == "model" else c, kind="stable")
    at_chance = pd.read_csv(folder / "compare" / "comparison.csv").set_index("model")["at_chance"]
    missing = set(found) - set(runs["model"])
    if missing:
        raise RuntimeError(f"compare labelled the architectures otherwise: {sorted(missing)} not in "
                           f"{sorted(runs['model'].unique())}")

    summary = summarize(runs)
    summary.insert(summary.columns.get_loc("gmacs") + 1, "params", summary["model"].map(
        runs.groupby("model")["params"].first()))
    shown = pd.DataFrame({
        "model": summary["model"], "GMACs": summary["gmacs"], "params": summary["params"],
        "test top-1 (%)": [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(summary["test_top1_mean"],
                                                                          summary["test_top1_std"])],
        "validation top-1 (%)": [f"{100 * m:.2f}" for m in summary["val_top1_mean"]], "seeds": summary["n"],
        "at chance (compare)": ["**yes**" if at_chance[same.get(m, m)] else "" for m in summary["model"]],
    })
    searched = list(found)
    comparisons = [paired(runs, label, baseline) for label in searched for baseline in BASELINES]
    for row in comparisons:
        row["verdict"] = verdict(row)
    reading = _line_reading(summary, searched)
    print(shown.to_string(index=False), flush=True)
    print(pd.DataFrame(comparisons).to_string(index=False), flush=True)
    print(reading.to_string(index=False), flush=True)

    relative = folder.relative_to(RESULTS)
    twins = ", ".join(f"{label} = {original}" for label, original in same.items())
    searched_on = f"the first {args.search_images} images of" if args.search_images else "all of"
    test_words = "test top-1 on the full test split" if tested else \
        f"**{args.dataset} has no test split: the 'test' columns are the validation split's top-1**"
    body = "\n".join([
        f"{args.dataset} at {args.image_size}x{args.image_size}. **CPU-sized**: every number on this page comes from "
        "a training subset and a short schedule (see the recipe; no model, EfficientNet included, has converged on "
        "it); it compares the methods under one small budget and says nothing about their accuracy at "
        "convergence.", "",
        "## Recipe", "",
        f"* Budgets: EfficientNet-B0 and -B1 (timm, `in_chans={splits.in_chans}`, {splits.num_classes} classes) "
        f"counted by fvcore at {args.image_size}x{args.image_size}: "
        + ", ".join(f"{b} {m['gmacs']:.4g} GMACs ({m['params']:,} parameters)" for b, m in baselines.items()) + ".",
        f"* Searches (`run_search`, the code of `dynopool-nas search`): spaces {', '.join(SPACES)} (their default "
        f"candidates and initial DynOPool scale 0.5), DARTS (first order), `gmacs_budget` at each baseline's GMACs "
        f"(after every step all DynOPool scales are rescaled by one factor to hold the budget), "
        f"{search_settings.epochs} epoch(s), Adam lr {search_settings.learning_rate:g} for the weights, DynOPool "
        f"alpha lr {search_settings.alpha_learning_rate:g}, NNI's DARTS defaults for the categorical choices, batch "
        f"{search_settings.batch_size}, seed {search_settings.seed}. Weights train on {searched_on} the seeded "
        f"training split, the architecture on the {len(splits.val)}-image validation split (seed "
        f"{search_settings.seed}'s); the test split is never seen. NNI's DARTS cycles the shorter of the two "
        f"loaders, so an epoch is max(training batches of {search_settings.batch_size}, validation batches of 256) "
        "steps.",
        f"* Retraining (`run_compare`, the code of `dynopool-nas compare`): the four architectures with their "
        f"DynOPools frozen at the learned sizes, and both EfficientNets, from scratch under one recipe: SGD lr "
        f"{compare.lr:g}, Nesterov momentum 0.9, weight decay 5e-4, cosine schedule, batch {compare.batch_size}, "
        f"{compare.epochs} "
        f"epoch(s) for every model (no 25% longer schedule: one recipe for all), {training_subset(args)} the "
        f"training split of seed {args.seeds[0]}, seeds {list(compare.seeds)} (initialization and data order); "
        f"validation top-1 after the last epoch; {test_words}. "
        + (f"Architectures identical to an earlier search's are trained once ({twins}): a second training would "
           "repeat the same computation (same seed, initialization and data order)." if same
           else "The four architectures differ."),
        "* Paired comparisons: each searched architecture minus a baseline of the same seed, test top-1, mean and "
        "95% t-interval over seeds; 'better'/'worse' only where the interval excludes 0.", "",
        "## Results", "",
        shown.to_markdown(index=False, floatfmt=".4g"), "",
        "At chance (compare's flag): validation top-1 not above 1/classes by three binomial standard deviations; "
        "such a row says nothing about its architecture.", "",
        f"Did each search hold its budget (within {BUDGET_MISS:.0%}, the constraint's own tolerance)? The GMACs "
        "are those of the architecture derived at the end of the search:", "",
        pd.DataFrame([{
            "search": label, "budget (GMACs)": budgets[result["baseline"]], "budget of": result["baseline"],
            "ended at (GMACs)": result["arch"]["metrics"]["gmacs"],
            "ended / budget": _ended_over_budget(result, budgets),
            "held": "yes" if abs(_ended_over_budget(result, budgets) - 1) <= BUDGET_MISS else "**no**",
            "out-of-reach warning": "**yes**" if result["warning"] else "no",
        } for label, result in found.items()]).to_markdown(index=False, floatfmt=".4g"), "",
        "Paired by seed (test top-1 difference, 95% t-interval):", "",
        pd.DataFrame(comparisons).to_markdown(index=False, floatfmt=".4f"), "",
        "Accuracy per GMAC: the straight line through EfficientNet-B0 and -B1 in (GMACs, mean test top-1); an "
        "architecture above it gives more accuracy for its GMACs than the two baselines' trade-off (a reading of "
        "means, without the seeds' spread; the paired rows above are the test):", "",
        reading.to_markdown(index=False, floatfmt=".4g"), "",
        f"Trade-off plot (compare's own, **validation** top-1 mean ± std against GMACs): "
        f"`{relative}/compare/comparison.png`; compare's table with latency: `{relative}/compare/comparison.md`; "
        f"every run: `{relative}/compare/comparison_runs.csv`.", "",
        "## Searched architectures", "",
        *_searched_section(found, same, budgets, summary, str(relative)),
        "## Time", "",
        *(f"* {stage}: {seconds:.0f} s" for stage, seconds in timings.items()), "",
        "## Every run", "", runs.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report(name, f"Table 5.3 analogue on {args.dataset}: searched architectures vs EfficientNet-B0/B1",
                 body, started, args.seeds)


if __name__ == "__main__":
    main()
