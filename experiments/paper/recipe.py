"""Why DynOPool does or does not win: its learning dynamics on real data (Fashion-MNIST, small
CNN, 32x32). One factor of the library's default recipe changes per row -- the scales' learning
rate, the thesis's plain gradient step instead of the normalized one, holding the scales still
while the weights warm up, a larger initial scale -- at lambda 0 and at a lambda with GMACs
pressure; each row is paired by seed with the default recipe and with the human model.

Choices are read on the validation split; the test split is reported beside it, never used to
choose.

    python experiments/paper/recipe.py [--train-images 5000] [--epochs 10] [--seeds 0 1] [--lam 0.1]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

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
    verdict,
    write_report,
)

from dynopool_nas import dynopoolify

LR = 0.05  # fit's weight learning rate; its default alpha_lr is LR / 10


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lam", type=float, default=0.1, help="the lambda with GMACs pressure (relative)")


def _variants(warmup: int) -> dict[str, dict[str, Any]]:
    return {
        "default": {},
        "alpha lr / 5": {"alpha_lr": LR / 50},
        "alpha lr x 5": {"alpha_lr": LR / 2},
        "plain steps (thesis)": {"scale_step": "plain"},
        f"scales still for {warmup} epochs": {"scale_warmup_epochs": warmup},
        "initial scale 0.6": {"convert": lambda model: dynopoolify(model, 0.6)},
    }


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1], train_images=5000, extra=_options)
    started = time.perf_counter()
    epochs = dynopool_epochs(args.epochs)
    variants = _variants(warmup=max(epochs // 4, 1))
    runs = []
    for seed in args.seeds:
        runs.append(train_and_test("human", args=args, seed=seed))
        for lam in (0.0, args.lam):
            for name, options in variants.items():
                options = {"convert": dynopoolify} | options
                runs.append(train_and_test(f"lambda {lam:g}: {name}", args=args, seed=seed, lam=lam, epochs=epochs,
                                           **options))
    table = pd.DataFrame([run.row for run in runs])
    curves = pd.DataFrame([point for run in runs for point in run.curve])
    name = page_name("recipe", args.dataset)
    curves.to_csv(RESULTS / f"{name}_curves.csv", index=False)
    plot_scales(curves, RESULTS / f"{name}_scales.png", "small CNN: DynOPool's scales per epoch under each recipe")
    comparisons = []
    for lam in (0.0, args.lam):
        for variant in variants:
            label = f"lambda {lam:g}: {variant}"
            for value in ("val_top1", "test_top1"):
                comparisons.append(paired(table, label, "human", value) | {"on": value})
                if variant != "default":
                    comparisons.append(paired(table, label, f"lambda {lam:g}: default", value) | {"on": value})
    for row in comparisons:
        row["verdict"] = verdict(row)
    summary = summarize(table)
    summary["gmacs_vs_human"] = summary["gmacs"] / summary.loc[summary["model"] == "human", "gmacs"].iloc[0]
    body = "\n".join([
        f"Small CNN on {args.dataset} at 32x32, the first {args.train_images} images of the seeded training split; "
        f"human {args.epochs} epochs, DynOPool {epochs}. Default recipe: {RECIPE}. Each row changes one factor.", "",
        summary.to_markdown(index=False, floatfmt=".4g"), "",
        "Paired differences (95% t-interval over seeds; `on` names the split):", "",
        pd.DataFrame(comparisons).to_markdown(index=False, floatfmt=".4f"), "",
        f"The scales per epoch of every recipe: `{name}_scales.png`; every epoch: `{name}_curves.csv`.", "",
        "## Every run", "", table.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report(name, f"DynOPool's recipe on {args.dataset}: one factor at a time", body, started, args.seeds)


if __name__ == "__main__":
    main()
