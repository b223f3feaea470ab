"""Thesis Table 5.1 analogue on real data (Fashion-MNIST, 32x32 padded): the small CNN as the
human designed it, at a lower input resolution, and converted with DynOPool without (lambda 0,
"DynOPool-B") and with a GMACs term (lambda relative to the initial GMACs, "DynOPool-S").

Every model sees the same training subset, validation split (curves) and the full 10,000-image
test set (final numbers only); DynOPool models train 25% longer, as in the thesis. Each DynOPool
row is compared with the human model of the same seed (paired difference, 95% t-interval).

    python experiments/paper/table_5_1.py [--train-images 10000] [--epochs 10] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from _report import RESULTS, write_report
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Subset

from dynopool_nas import GMACsCost, count_macs, dynopool_layers, dynopoolify, load_dataset
from dynopool_nas.models import small_cnn
from dynopool_nas.train import EpochResult, evaluate, fit

DATASET = "fashion-mnist"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=10000, help="training subset (of 55,000)")
    parser.add_argument("--epochs", type=int, default=10, help="human model's epochs (DynOPool: 25%% more)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lam", type=float, default=0.1, help="DynOPool-S lambda, relative to the initial GMACs")
    parser.add_argument("--low-resolution", type=int, default=24, help="input size of the human low-resolution row")
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args()


def _variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    dynopool_epochs = math.ceil(args.epochs * 1.25)
    return {
        "human": {"size": 32, "convert": None, "lam": 0.0, "epochs": args.epochs},
        f"human, {dynopool_epochs} epochs": {"size": 32, "convert": None, "lam": 0.0, "epochs": dynopool_epochs},
        f"human @ {args.low_resolution}px": {"size": args.low_resolution, "convert": None, "lam": 0.0,
                                             "epochs": args.epochs},
        "DynOPool-B (lambda 0)": {"size": 32, "convert": dynopoolify, "lam": 0.0, "epochs": dynopool_epochs},
        f"DynOPool-S (lambda {args.lam:g})": {"size": 32, "convert": dynopoolify, "lam": args.lam,
                                              "epochs": dynopool_epochs},
    }


def _run(name: str, size: int, convert: Callable[[nn.Module], nn.Module] | None, lam: float, epochs: int,
         seed: int, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    torch.manual_seed(seed)
    splits = load_dataset(DATASET, image_size=size, root=args.data_dir, seed=seed)
    # the training split is already a seeded random draw of the 55,000 images: its first images are a random subset
    train = DataLoader(Subset(splits.train, range(args.train_images)), batch_size=64, shuffle=True, drop_last=True)
    model = small_cnn(num_classes=splits.num_classes, in_chans=splits.in_chans)
    model = convert(model) if convert is not None else model
    input_size = (splits.in_chans, size, size)
    cost = GMACsCost.from_model(model, input_size) if convert is not None else None
    curve: list[dict[str, Any]] = []

    def record(result: EpochResult) -> None:
        scales = {f"{n}.r": "({:.3f}, {:.3f})".format(*layer.scale) for n, layer in dynopool_layers(model)}
        curve.append({"model": name, "seed": seed, "epoch": result.epoch, "train_loss": result.train_loss,
                      "val_top1": result.val_accuracy, **scales})

    fit(model, train, DataLoader(splits.val, batch_size=512), cost or _constant_cost(model, input_size),
        epochs=epochs, gmacs_lambda=lam, progress=False, on_epoch=record)
    test_top1 = evaluate(model, DataLoader(splits.test, batch_size=512))
    sizes = [f"{h}x{w}" for h, w in (layer.output_size for _, layer in dynopool_layers(model))]
    row = {"model": name, "seed": seed, "epochs": epochs, "test_top1": test_top1,
           "val_top1": curve[-1]["val_top1"], "gmacs": count_macs(model, input_size).gmacs,
           "maps": " ".join(sizes) or "(human)"}
    print(row, flush=True)
    return row, curve


def _constant_cost(model: nn.Module, input_size: tuple[int, int, int]) -> GMACsCost:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a model without DynOPool has a constant cost
        return GMACsCost.from_model(model, input_size)


def _paired(table: pd.DataFrame, name: str, reference: str) -> dict[str, Any]:
    """Test top-1 of ``name`` minus ``reference``'s, per seed: mean and 95% t-interval."""
    pivot = table.pivot(index="seed", columns="model", values="test_top1")
    differences = (pivot[name] - pivot[reference]).tolist()
    mean = statistics.fmean(differences)
    row = {"model": name, "against": reference, "difference": mean}
    if len(differences) < 2:
        return row | {"ci95_low": float("nan"), "ci95_high": float("nan")}
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return row | {"ci95_low": mean - half, "ci95_high": mean + half}


def main() -> None:
    args = _arguments()
    started = time.perf_counter()
    rows, curves = [], []
    variants = _variants(args)
    for seed in args.seeds:
        for name, variant in variants.items():
            row, curve = _run(name, seed=seed, args=args, **variant)
            rows.append(row)
            curves.extend(curve)
    table, curve_table = pd.DataFrame(rows), pd.DataFrame(curves)
    curve_table.to_csv(RESULTS / "table_5_1_curves.csv", index=False)
    summary = table.groupby("model", sort=False).agg(
        test_top1_mean=("test_top1", "mean"), test_top1_std=("test_top1", "std"), n=("seed", "count"),
        gmacs=("gmacs", "mean"), epochs=("epochs", "first")).reset_index()
    names = list(variants)
    long_human = names[1]  # the human model trained as long as the DynOPool models
    paired = pd.DataFrame([_paired(table, name, "human") for name in names[1:]]
                          + [_paired(table, name, long_human) for name in names[3:]])
    human_curve = curve_table[curve_table["model"] == "human"].groupby("epoch")["val_top1"].mean()
    body = "\n".join([
        f"Small CNN (three 2x2 max-pools) on Fashion-MNIST padded to 32x32: {args.train_images} training images "
        f"(a random subset per seed of the 55,000-image training split), validation on the 5,000 held-out "
        f"training images (curves), test on the full 10,000-image test set (final numbers only). SGD lr 0.05, "
        f"Nesterov momentum 0.9, cosine schedule, batch 64, weight decay 5e-4; human models {args.epochs} "
        f"epochs, DynOPool models {math.ceil(args.epochs * 1.25)} (25% longer, as in the thesis), scales at "
        "the library's defaults (alpha lr = lr/10, normalized scale steps, initial scale 0.5). Lambda is relative "
        "to the initial GMACs. GMACs are fvcore's count of the trained model (DynOPool's sampling included).", "",
        summary.to_markdown(index=False, floatfmt=".4g"), "",
        "Paired with a human model of the same seed (test top-1 difference, 95% t-interval over seeds):", "",
        paired.to_markdown(index=False, floatfmt=".4f"), "",
        "Human model's mean validation top-1 per epoch (has it plateaued?): "
        + ", ".join(f"{value:.4f}" for value in human_curve.tolist()), "",
        "Every epoch of every run, with every DynOPool's scale, is in `table_5_1_curves.csv`.", "",
        "DynOPool models train 25% more epochs than the human model (as the thesis does); the row of the human "
        "model trained as long separates the architecture from the longer schedule.",
        "",
        "## Every run", "", table.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report("table_5_1", "Table 5.1 analogue on Fashion-MNIST: human vs DynOPool-B vs DynOPool-S", body,
                 started, args.seeds)


if __name__ == "__main__":
    main()
