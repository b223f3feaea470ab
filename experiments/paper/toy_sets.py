"""Thesis Figure 3.1 on the bundled digits: human vs DynOPool on the vertically stretched, tiled
and enlarged variants; accuracy, GMACs and every DynOPool's learned feature-map size.

    python experiments/paper/toy_sets.py [--epochs 12] [--seeds 0 1 2]
"""

from __future__ import annotations

import time

import pandas as pd
from _report import RESULTS, experiment_arguments, train_small_cnn, write_report

from dynopool_nas import dynopoolify
from dynopool_nas.viz import plot_feature_maps

VARIANTS = ("stretched", "tiled", "enlarged")
SIZE = 32
SCALE_BOUNDS = (0.15, 2.0)  # keeps a diverging alpha from allocating huge maps; hitting it warns


def run(variant: str, converted: bool, seed: int, epochs: int, gmacs_lambda: float, alpha_lr: float) -> dict:
    convert = (lambda model: dynopoolify(model, scale_bounds=SCALE_BOUNDS)) if converted else None
    _, top1, gmacs, cost = train_small_cnn(f"digits-{variant}", SIZE, seed, epochs, convert,
                                           gmacs_lambda if converted else 0.0, alpha_lr)
    sizes = cost.feature_map_sizes() if converted else {f"pool{i}": (SIZE >> i, SIZE >> i) for i in (1, 2, 3)}
    return {"variant": variant, "model": "DynOPool" if converted else "human", "seed": seed,
            "top1": top1, "gmacs": gmacs,
            **{f"map{i + 1}": f"{h}x{w}" for i, (h, w) in enumerate(sizes.values())},
            **{f"h{i + 1}": h for i, (h, _) in enumerate(sizes.values())},
            **{f"w{i + 1}": w for i, (_, w) in enumerate(sizes.values())}}


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1, 2])
    started = time.perf_counter()
    rows = [run(v, c, s, args.epochs, args.gmacs_lambda, args.alpha_lr)
            for v in VARIANTS for c in (False, True) for s in args.seeds]
    table = pd.DataFrame(rows)
    summary = table.groupby(["variant", "model"], sort=False).agg(
        top1_mean=("top1", "mean"), top1_std=("top1", "std"), gmacs_mean=("gmacs", "mean"),
        h1=("h1", "mean"), w1=("w1", "mean"), h2=("h2", "mean"), w2=("w2", "mean"), h3=("h3", "mean"),
        w3=("w3", "mean")).reset_index()
    print(summary.to_string(index=False))
    dyn = summary[summary["model"] == "DynOPool"].set_index("variant")
    wider = bool((dyn.loc["stretched", ["w1", "w2", "w3"]].to_numpy() > dyn.loc["stretched", ["h1", "h2", "h3"]]
                  .to_numpy()).all())
    area = {v: dyn.loc[v, "h1"] * dyn.loc[v, "w1"] for v in VARIANTS}
    larger = area["tiled"] > area["enlarged"]
    human = summary[summary["model"] == "human"].set_index("variant")
    gains = [
        f"{v} {100 * (dyn.loc[v, 'top1_mean'] - human.loc[v, 'top1_mean']):+.1f} points "
        f"(spread {100 * max(dyn.loc[v, 'top1_std'], human.loc[v, 'top1_std']):.1f})" for v in VARIANTS
    ]
    claims = [
        "- Accuracy, DynOPool minus human (mean over seeds; the thesis reports gains on every toy set): "
        + "; ".join(gains) + ".",
        f"- Wider than tall on the stretched set (every DynOPool, mean over seeds): **{'yes' if wider else 'no'}**.",
        f"- Larger first map on the tiled set than on the enlarged one: **{'yes' if larger else 'no'}** "
        f"(mean first-map area {area['tiled']:.0f} vs {area['enlarged']:.0f} pixels).",
    ]
    seed0 = table[(table["seed"] == args.seeds[0]) & (table["model"] == "DynOPool")]
    plot_feature_maps({row.variant: {f"pool{i}": tuple(int(x) for x in getattr(row, f"map{i}").split("x"))
                                     for i in (1, 2, 3)} for row in seed0.itertuples()},
                      RESULTS / "figure_3_1.png", (SIZE, SIZE))
    body = "\n".join([
        f"Small CNN (three 2x2 max-pools, widths 16-32-64-64) at {SIZE}x{SIZE}, {args.epochs} epochs, SGD lr 0.05, "
        f"DynOPool with lambda = {args.gmacs_lambda}, alpha learning rate {args.alpha_lr} (SGD) and scale bounds "
        f"{SCALE_BOUNDS}.", "",
        "## Mean over seeds (h, w: DynOPool output sizes)", "", summary.to_markdown(index=False, floatfmt=".3g"), "",
        "## The thesis's claims at this scale", "", *claims, "",
        "Figure: `figure_3_1.png` (learned maps, first seed).", "",
        "## Every run", "", table.drop(columns=[c for c in table if c[0] in "hw" and c[1:].isdigit()])
        .to_markdown(index=False, floatfmt=".3g"),
    ])
    write_report("figure_3_1", "Figure 3.1: human vs DynOPool on the toy variants of the digits", body, started,
                 args.seeds)


if __name__ == "__main__":
    main()
