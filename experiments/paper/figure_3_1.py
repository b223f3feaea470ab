"""Thesis Figure 3.1 analogue on real data: the small CNN as the human designed it and converted
with DynOPool on the toy variants of Fashion-MNIST (vertically stretched, tiled 4x4, enlarged
from a quarter size), at 32x32: accuracy, GMACs and every DynOPool's learned feature-map size.

The thesis's claims: DynOPool learns maps wider than tall on the stretched set (its content is
squeezed horizontally relative to vertically), larger maps on the tiled set (dense information)
than on the enlarged one (sparse information), and gains accuracy on each.

    python experiments/paper/figure_3_1.py [--train-images 10000] [--epochs 10] [--seeds 0 1 2] [--lam 0.1]
"""

from __future__ import annotations

import argparse
import time

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
from dynopool_nas.viz import plot_feature_maps

VARIANTS = ("stretched", "tiled", "enlarged")
SIZE = 32


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lam", type=float, default=0.1,
                        help="DynOPool's lambda (relative to the initial GMACs): the maps compete for compute")


def _maps(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in size.split("x")) for size in text.split()]


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1, 2], extra=_options)
    started = time.perf_counter()
    runs = []
    for variant in VARIANTS:
        dataset = f"{args.dataset}-{variant}"
        for seed in args.seeds:
            runs.append(train_and_test(f"{variant}: human", args=args, seed=seed, dataset=dataset))
            runs.append(train_and_test(f"{variant}: DynOPool", args=args, seed=seed, dataset=dataset,
                                       convert=dynopoolify, lam=args.lam, epochs=dynopool_epochs(args.epochs)))
    table = pd.DataFrame([run.row for run in runs])
    table.insert(0, "variant", table["model"].str.split(":").str[0])
    curves = pd.DataFrame([point for run in runs for point in run.curve])
    name = page_name("figure_3_1", args.dataset)
    curves.to_csv(RESULTS / f"{name}_curves.csv", index=False)
    plot_scales(curves, RESULTS / f"{name}_scales.png", "small CNN on the toy variants: DynOPool's scales per epoch")
    dynopool = table[table["model"].str.endswith("DynOPool")].copy()
    sizes = dynopool["maps"].map(_maps)
    for index in range(3):
        dynopool[f"h{index + 1}"] = sizes.map(lambda maps, i=index: maps[i][0])
        dynopool[f"w{index + 1}"] = sizes.map(lambda maps, i=index: maps[i][1])
    shapes = dynopool.groupby("variant", sort=False)[[f"{a}{i}" for i in (1, 2, 3) for a in "hw"]].mean()
    wider = [bool(shapes.loc["stretched", f"w{i}"] > shapes.loc["stretched", f"h{i}"]) for i in (1, 2, 3)]
    area = {v: shapes.loc[v, "h1"] * shapes.loc[v, "w1"] for v in VARIANTS}
    comparisons = [paired(table, f"{v}: DynOPool", f"{v}: human") for v in VARIANTS]
    for row in comparisons:
        row["verdict"] = verdict(row)
    claims = [
        f"- Wider than tall on the stretched set (mean learned size of each DynOPool): {wider} -> "
        f"**{'held' if all(wider) else 'held for some layers' if any(wider) else 'did not hold'}**.",
        f"- Larger first map on the tiled set than on the enlarged one: mean area {area['tiled']:.0f} vs "
        f"{area['enlarged']:.0f} pixels -> **{'held' if area['tiled'] > area['enlarged'] else 'did not hold'}**.",
        "- Accuracy gain on each toy set (paired by seed): "
        + "; ".join(f"{row['model'].split(':')[0]} {100 * row['difference']:+.2f} points ({row['verdict']})"
                    for row in comparisons) + ".",
    ]
    seed0 = dynopool[dynopool["seed"] == args.seeds[0]]
    plot_feature_maps({row.variant: dict(zip(("pool1", "pool2", "pool3"), _maps(row.maps)))
                       for row in seed0.itertuples()}, RESULTS / f"{name}.png", (SIZE, SIZE))
    training = training_subset(args)
    body = "\n".join([
        f"Small CNN (three 2x2 max-pools) on the toy variants of {args.dataset} at {SIZE}x{SIZE}: {training} each "
        "variant's seeded training split, test on its test split (final numbers only). Human models "
        f"{args.epochs} epochs, DynOPool models {dynopool_epochs(args.epochs)} with lambda {args.lam:g}. {RECIPE}.",
        "", "## The thesis's claims on real data", "", *claims, "",
        summarize(table, ["variant", "model"]).to_markdown(index=False, floatfmt=".4g"), "",
        "Mean learned sizes (h, w) of the three DynOPools:", "", shapes.reset_index().to_markdown(index=False,
                                                                                                   floatfmt=".3g"), "",
        pd.DataFrame(comparisons).to_markdown(index=False, floatfmt=".4f"), "",
        f"Figure: `{name}.png` (learned maps, first seed); the scales per epoch: `{name}_scales.png`; every epoch "
        f"of every run: `{name}_curves.csv`.", "",
        "## Every run", "", table.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report(name, f"Figure 3.1 analogue: human vs DynOPool on the toy variants of {args.dataset}", body,
                 started, args.seeds)


if __name__ == "__main__":
    main()
