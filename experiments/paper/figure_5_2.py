"""Thesis Figure 5.2 analogue on real data (Fashion-MNIST, 32x32 padded): a lambda sweep of the
small CNN converted with DynOPool against an input-resolution sweep of the human model, as test
top-1 against GMACs. The thesis's claim: at every budget, DynOPool's point lies above the human
model's resolution curve.

Each DynOPool point is compared with the human resolution point of nearest GMACs (paired by
seed, 95% t-interval) and, where its GMACs lie between two human points, with the human curve
interpolated linearly in GMACs at its own GMACs.

    python experiments/paper/figure_5_2.py [--train-images 10000] [--epochs 10] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from _report import (
    RECIPE,
    RESULTS,
    dynopool_epochs,
    experiment_arguments,
    page_name,
    paired,
    plot_scales,
    summarize,
    train_and_test,
    training_subset,
    verdict,
    write_report,
)

from dynopool_nas import dynopoolify
from dynopool_nas.viz import plot_tradeoff

SIZE = 32


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.3],
                        help="DynOPool's lambdas (relative to the initial GMACs)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16, 20, 24, 28, 32],
                        help="the human model's input sizes")


def _interpolated(table: pd.DataFrame, human: list[str], name: str) -> dict:
    """``name``'s test top-1 minus the human curve's at ``name``'s GMACs (linear in GMACs between
    the two nearest human points of the same seed), paired by seed."""
    differences = []
    for _seed, rows in table.groupby("seed"):
        points = rows[rows["model"].isin(human)].sort_values("gmacs")
        own = rows[rows["model"] == name].iloc[0]
        if not points["gmacs"].min() <= own.gmacs <= points["gmacs"].max():
            return {}
        differences.append(own.test_top1 - np.interp(own.gmacs, points["gmacs"], points["test_top1"]))
    frame = pd.DataFrame({"seed": range(len(differences)), "model": name, "test_top1": differences})
    frame = pd.concat([frame, frame.assign(model="curve", test_top1=0.0)])
    return paired(frame, name, "curve") | {"against": "human curve at the same GMACs"}


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1, 2], extra=_options)
    started = time.perf_counter()
    human = [f"human @ {size}px" for size in args.resolutions]
    dynopool = [f"DynOPool lambda {lam:g}" for lam in args.lambdas]
    runs = []
    for seed in args.seeds:
        runs += [train_and_test(name, args=args, seed=seed, size=size) for name, size in zip(human, args.resolutions)]
        runs += [train_and_test(name, args=args, seed=seed, size=SIZE, convert=dynopoolify, lam=lam,
                                epochs=dynopool_epochs(args.epochs)) for name, lam in zip(dynopool, args.lambdas)]
    table = pd.DataFrame([run.row for run in runs])
    curves = pd.DataFrame([point for run in runs for point in run.curve])
    name = page_name("figure_5_2", args.dataset)
    curves.to_csv(RESULTS / f"{name}_curves.csv", index=False)
    plot_scales(curves, RESULTS / f"{name}_scales.png", "small CNN, DynOPool's scales per epoch for each lambda")
    summary = summarize(table)
    plot_tradeoff([{"series": "human (input resolution)" if row.model in human else "DynOPool at 32x32 (lambda)",
                    "gmacs": row.gmacs, "top1": row.test_top1_mean, "top1_std": row.test_top1_std,
                    "label": row.model.split()[-1]} for row in summary.itertuples()],
                  RESULTS / f"{name}.png", full_axis=False, metric="test top-1")
    comparisons = []
    for point in dynopool:
        gmacs = summary.set_index("model").loc[point, "gmacs"]
        nearest = min(human, key=lambda h: abs(summary.set_index("model").loc[h, "gmacs"] - gmacs))
        comparisons.append(paired(table, point, nearest))
        interpolated = _interpolated(table, human, point)
        if interpolated:
            comparisons.append(interpolated)
    for row in comparisons:
        row["verdict"] = verdict(row)
    training = training_subset(args)
    body = "\n".join([
        f"Small CNN (three 2x2 max-pools) on {args.dataset}: {training} the seeded training split, validation on "
        "the held-out training images, test on the test split (final numbers only). The human model at inputs "
        f"{args.resolutions} for {args.epochs} epochs; DynOPool at {SIZE}x{SIZE} with lambda in {args.lambdas} for "
        f"{dynopool_epochs(args.epochs)} epochs (25% longer, as in the thesis). {RECIPE}.", "",
        summary.to_markdown(index=False, floatfmt=".4g"), "",
        "Each DynOPool point against the human model at the resolution of nearest GMACs, and against the human "
        "curve interpolated at its own GMACs (test top-1 difference, 95% t-interval over seeds):", "",
        pd.DataFrame(comparisons).to_markdown(index=False, floatfmt=".4f"), "",
        f"Figure: `{name}.png`; the scales per epoch: `{name}_scales.png`; every epoch of every run: "
        f"`{name}_curves.csv`.", "",
        "## Every run", "", table.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report(name, f"Figure 5.2 analogue on {args.dataset}: lambda sweep vs input-resolution sweep", body,
                 started, args.seeds)


if __name__ == "__main__":
    main()
