"""What the small-scale experiments share: their options, one training run with its learning
curve and every resizer's scale per epoch, paired comparisons over seeds, the scale plot, and
writing a results page under docs/results/ (command, seeds, wall time)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Subset

from dynopool_nas import DynOPool2d, GMACsCost, ShapeAdaptor2d, count_macs, load_dataset
from dynopool_nas._utils import atomic_write
from dynopool_nas.models import create_model
from dynopool_nas.train import EpochResult, evaluate, fit

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("DYNOPOOL_NAS_RESULTS") or ROOT / "docs" / "results")
"""Where pages, curves and figures go: docs/results/, or the folder ``$DYNOPOOL_NAS_RESULTS`` names."""
DEFAULT_DATASET = "fashion-mnist"
RECIPE = ("SGD lr 0.05, Nesterov momentum 0.9, cosine schedule, batch 64, weight decay 5e-4; scales at the "
          "library's defaults (alpha lr = lr/10 with normalized scale steps, no weight decay, initial scale "
          "that of the human layer); lambda relative to the initial GMACs")


def page_name(base: str, dataset: str) -> str:
    """``docs/results/<base>.md`` for Fashion-MNIST (the default), ``<base>_<dataset>.md`` otherwise."""
    return base if dataset == DEFAULT_DATASET else f"{base}_{dataset.replace('-', '_')}"


def _from_root(script: str) -> str:
    path = Path(script).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else script


def write_report(name: str, title: str, body: str, started: float, seeds: list[int] | None = None) -> Path:
    """``docs/results/<name>.md`` with the exact command, the seeds, the machine and wall time."""
    header = [
        f"# {title}",
        "",
        f"Command: `python {' '.join([_from_root(sys.argv[0]), *sys.argv[1:]])}` (from the repository root)  ",
        f"Seeds: {seeds if seeds else 'none (deterministic)'}  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}  ",
        f"Wall time: {time.perf_counter() - started:.0f} s",
        "",
        "",
    ]
    return atomic_write(RESULTS / f"{name}.md", lambda path: path.write_text("\n".join(header) + body + "\n"))


def experiment_arguments(doc: str, seeds: list[int], *, epochs: int = 10, train_images: int = 10000,
                         extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> argparse.Namespace:
    """The options every small-scale experiment shares (and ``extra``'s)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="a registered data set (default %(default)s)")
    parser.add_argument("--data-dir", default=None, help="its folder (default: where its package installs it)")
    parser.add_argument("--train-images", type=int, default=train_images,
                        help="training subset: the first N of the seeded training split (0: all)")
    parser.add_argument("--epochs", type=int, default=epochs, help="human model's epochs (DynOPool: 25%% more)")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def training_subset(args: argparse.Namespace) -> str:
    """How a page names the training images: "the first N images of" or "all of" (the split)."""
    return f"the first {args.train_images} images of" if args.train_images else "all of"


def dynopool_epochs(epochs: int) -> int:
    """The thesis trains DynOPool models 25% longer than the human ones."""
    return math.ceil(epochs * 1.25)


@dataclass
class Run:
    """One trained model: its row for the results table and its learning curve (one dict per
    epoch, with every resizer's scale)."""

    model: nn.Module
    row: dict[str, Any]
    curve: list[dict[str, Any]] = field(default_factory=list)


def resizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every DynOPool and Shape Adaptor of ``model`` by module path."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (DynOPool2d, ShapeAdaptor2d))]


def _scales(model: nn.Module) -> dict[str, float]:
    scales = {}
    for name, module in resizers(model):
        if isinstance(module, DynOPool2d):
            scales[f"{name}.r_h"], scales[f"{name}.r_w"] = module.scale
        else:
            scales[f"{name}.r_h"] = scales[f"{name}.r_w"] = module.ratio
    return scales


def train_and_test(
    name: str, *, args: argparse.Namespace, seed: int, backbone: str = "small_cnn",
    convert: Callable[[nn.Module], nn.Module] | None = None, size: int = 32, lam: float = 0.0,
    epochs: int | None = None, dataset: str | None = None, model_kwargs: dict[str, Any] | None = None,
    **fit_options: Any,
) -> Run:
    """Train ``backbone`` (converted by ``convert``; None: the human model) on the first
    ``args.train_images`` images of the seeded training split of ``dataset`` (default
    ``args.dataset``) at ``size``, validating every epoch; then test it once on the test split
    (the validation split where the data set has none). ``fit_options`` go to :func:`fit`."""
    torch.manual_seed(seed)
    splits = load_dataset(dataset or args.dataset, image_size=size, root=args.data_dir, seed=seed)
    train_set = splits.train
    if args.train_images:  # the split is a seeded random draw, so its first images are a random subset
        train_set = Subset(train_set, range(min(args.train_images, len(train_set))))
    model = create_model(backbone, num_classes=splits.num_classes, in_chans=splits.in_chans, **(model_kwargs or {}))
    model = convert(model) if convert is not None else model
    input_size = (splits.in_chans, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a model without DynOPool has a constant cost
        cost = GMACsCost.from_model(model, input_size)
    epochs = epochs or args.epochs
    run = Run(model, {})

    def record(result: EpochResult) -> None:
        run.curve.append({"model": name, "seed": seed, "epoch": result.epoch, "train_loss": result.train_loss,
                          "val_top1": result.val_accuracy, "gmacs": result.gmacs, **_scales(model)})

    fit(model, DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True),
        DataLoader(splits.val, batch_size=512), cost, epochs=epochs, gmacs_lambda=lam, progress=False,
        on_epoch=record, **fit_options)
    test_set = splits.test if splits.test is not None else splits.val
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))  # every resizer records its output size
    sizes = [f"{h}x{w}" for h, w in (m.output_size for _, m in resizers(model))]
    run.row = {"model": name, "seed": seed, "epochs": epochs, "test_top1": evaluate(model, DataLoader(test_set, 512)),
               "val_top1": run.curve[-1]["val_top1"], "gmacs": count_macs(model, input_size).gmacs,
               "maps": " ".join(sizes) or "(human)"}
    print(run.row, flush=True)
    return run


def paired(table: pd.DataFrame, name: str, reference: str, value: str = "test_top1") -> dict[str, Any]:
    """``value`` of ``name`` minus ``reference``'s, paired by seed: mean and 95% t-interval."""
    pivot = table.pivot(index="seed", columns="model", values=value)
    differences = (pivot[name] - pivot[reference]).dropna().tolist()
    mean = statistics.fmean(differences)
    row = {"model": name, "against": reference, "difference": mean, "seeds": len(differences)}
    if len(differences) < 2:
        return row | {"ci95_low": float("nan"), "ci95_high": float("nan")}
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return row | {"ci95_low": mean - half, "ci95_high": mean + half}


def verdict(row: dict[str, Any]) -> str:
    """'better', 'worse' or 'no significant difference' from a :func:`paired` row."""
    if row["ci95_low"] > 0:
        return "better"
    if row["ci95_high"] < 0:
        return "worse"
    return "no significant difference"


def summarize(table: pd.DataFrame, by: str | list[str] = "model") -> pd.DataFrame:
    """Mean and standard deviation over seeds of test and validation top-1, mean GMACs."""
    return table.groupby(by, sort=False).agg(
        test_top1_mean=("test_top1", "mean"), test_top1_std=("test_top1", "std"), val_top1_mean=("val_top1", "mean"),
        n=("seed", "count"), gmacs=("gmacs", "mean"), epochs=("epochs", "first")).reset_index()


def plot_scales(curves: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Every resizer's scale per epoch (one panel per model, a line per scale and seed): how the
    learned sizes move during training. None when no model has a resizer."""
    columns = [c for c in curves.columns if c.endswith((".r_h", ".r_w"))]
    models = [m for m in curves["model"].unique() if curves.loc[curves["model"] == m, columns].notna().any().any()]
    if not models:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False, sharey=True)
    for axis, model in zip(axes[0], models):
        rows = curves[curves["model"] == model]
        for index, column in enumerate(c for c in columns if rows[c].notna().any()):
            for seed, run in rows.groupby("seed"):
                style = "-" if column.endswith("_h") else "--"
                axis.plot(run["epoch"], run[column], color=f"C{index}", linestyle=style, alpha=0.8,
                          label=column if seed == rows["seed"].iloc[0] else None)
        axis.set_title(model, fontsize=9)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("scale r (solid: height, dashed: width)")
    axes[0][-1].legend(fontsize=6, loc="best")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()

    def save(target: Path) -> None:
        figure.savefig(target, dpi=110, format="png")

    atomic_write(path, save)
    pyplot.close(figure)
    return path
