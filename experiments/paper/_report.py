"""What the small-scale experiments share: their options, training the small CNN, and writing a
results page under docs/results/ (command, seeds, wall time)."""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dynopool_nas import GMACsCost, count_macs, load_dataset
from dynopool_nas._utils import atomic_write
from dynopool_nas.models import small_cnn
from dynopool_nas.train import fit

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def write_report(name: str, title: str, body: str, started: float, seeds: list[int] | None = None) -> Path:
    """``docs/results/<name>.md`` with the exact command, the seeds, the machine and wall time."""
    header = [
        f"# {title}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Seeds: {seeds if seeds else 'none (deterministic)'}  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}  ",
        f"Wall time: {time.perf_counter() - started:.0f} s",
        "",
        "",
    ]
    return atomic_write(RESULTS / f"{name}.md", lambda path: path.write_text("\n".join(header) + body + "\n"))


def experiment_arguments(doc: str, seeds: list[int], gmacs_lambda: float | None = 1.0) -> argparse.Namespace:
    """The options every small-scale experiment shares."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    if gmacs_lambda is not None:
        parser.add_argument("--gmacs-lambda", type=float, default=gmacs_lambda)
    parser.add_argument("--alpha-lr", type=float, default=0.003)
    return parser.parse_args()


def train_small_cnn(
    dataset: str, size: int, seed: int, epochs: int, convert: Callable[[nn.Module], nn.Module] | None,
    gmacs_lambda: float, alpha_lr: float,
) -> tuple[nn.Module, float, float, GMACsCost]:
    """The small CNN on ``dataset`` at ``size``, converted by ``convert`` (None: the human model),
    trained with SGD for ``epochs``: the model, validation top-1, its fvcore GMACs and its cost."""
    torch.manual_seed(seed)
    splits = load_dataset(dataset, image_size=size, seed=seed)
    model = small_cnn(num_classes=10, in_chans=1)
    model = convert(model) if convert is not None else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a model without DynOPool has a constant cost
        cost = GMACsCost.from_model(model, (1, size, size))
    history = fit(model, DataLoader(splits.train, batch_size=64, shuffle=True, drop_last=True),
                  DataLoader(splits.val, batch_size=256), cost, epochs=epochs, alpha_lr=alpha_lr,
                  gmacs_lambda=gmacs_lambda, progress=False,
                  relative_lambda=False, scale_step="plain")  # the recipe of the committed results
    return model, history[-1].val_accuracy, count_macs(model, (1, size, size)).gmacs, cost
