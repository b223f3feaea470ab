"""One trial of a trial-based NNI experiment (``nnictl create``).

The tuner's parameters are the space's categorical choices (labels missing from them take
their defaults) and training settings (:data:`SETTINGS`). The trial freezes the space at those
choices, trains it with every DynOPool learning its scale inside the trial, and reports
``'default'`` (validation top-1) with ``'gmacs'``, ``'params'``, ``'latency_ms'`` (predicted by
a measured :class:`~dynopool_nas.LatencyCost`) and the feature-map sizes after every epoch and
at the end. The trained architecture and weights go to the trial's output folder
(``NNI_OUTPUT_DIR``), for ``dynopool-nas export``.

nnictl runs it as ``python -m strategies.commands.trial --space ... --epochs ...`` (:func:`main`),
or through ``experiments/trial.py``, which the configs of ``experiments/`` name.
"""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nni
import torch
from torch.utils.data import DataLoader

from dynopool_nas import DATASETS, GMACsCost, LatencyCost, LatencyTable, dynopool_layers, load_dataset
from dynopool_nas._checks import train_subset
from dynopool_nas._quiet import quiet
from dynopool_nas._utils import write_together
from dynopool_nas.convert import PLACEMENTS, Placement
from dynopool_nas.train import EpochResult, fit
from search_spaces.arch import architecture_record, save_architecture, save_weights
from search_spaces.registry import SPACES, make_space, space_fields
from strategies.constraint import CostConstraint, GMACsConstraint, LatencyConstraint
from strategies.report import trial_metrics

__all__ = ["SETTINGS", "main", "run_trial"]

SETTINGS = {
    "gmacs_lambda": 0.0,  # lambda of eq. 4.8, relative to the initial GMACs
    "gmacs_budget": None,  # GMACs per image, held by a projection of the scales after every step
    "latency_budget": None,  # predicted ms per image (the trial's device), held the same way; or gmacs_budget
    "lr": 0.05,
    "alpha_lr": 0.005,
    "scale": 0.5,  # initial scale of every DynOPool of the cell and EfficientNet spaces
}


def _split(params: dict[str, Any], labels: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(params) - set(labels) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown parameters {unknown}: a trial takes the space's labels {sorted(labels)} and the settings "
            f"{sorted(SETTINGS)}; fix the search space file"
        )
    settings = {key: params.get(key, default) for key, default in SETTINGS.items()}
    choices = {label: params.get(label, mutable.default()) for label, mutable in labels.items()}
    if not settings["scale"] > 0:
        raise ValueError(f"setting 'scale' must be a positive initial scale, got {settings['scale']!r}")
    if settings["gmacs_budget"] is not None and settings["latency_budget"] is not None:
        raise ValueError(
            f"settings 'gmacs_budget' ({settings['gmacs_budget']!r}) and 'latency_budget' "
            f"({settings['latency_budget']!r}) are both given: a trial holds one budget; fix the search space file"
        )
    return choices, settings


def _latency_device(accelerator: str) -> str:
    """Where a trial trains, so where its latency is predicted: ``'cuda'`` for a GPU accelerator
    (``'auto'`` on a machine with CUDA), else ``'cpu'``."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if gpu else "cpu"


def _budget(settings: dict[str, Any], cost: GMACsCost, latency: LatencyCost) -> CostConstraint | None:
    """The budget constraint the settings choose, bound to its cost (none without a budget)."""
    if settings["latency_budget"] is not None:
        return LatencyConstraint(budget_ms=settings["latency_budget"]).bind(latency)
    if settings["gmacs_budget"]:
        return GMACsConstraint(budget=settings["gmacs_budget"]).bind(cost)
    return None


def run_trial(
    params: dict[str, Any],
    *,
    space: str = "cells",
    dataset: str = "digits",
    epochs: int = 3,
    image_size: int = 16,
    batch_size: int = 64,
    data_dir: str | None = None,
    output_dir: str | Path | None = None,
    devices: int = 1,
    accelerator: str = "auto",
    placement: Placement = "after",
    latency_table: LatencyTable | None = None,
) -> dict[str, Any]:
    """Train the architecture ``params`` choose and report to NNI; return the final metrics
    (``devices > 1``: Lightning DDP; only the first process reports and saves, the others
    return an empty dict).

    ``latency_table`` prices the model's predicted latency (``'latency_ms'`` in every report and
    ``arch.json``, and the ``latency_budget`` setting); by default the cached
    :class:`~dynopool_nas.LatencyTable` of the device the trial trains on (``accelerator``), at
    the current thread count, measuring the layers it does not hold yet."""
    splits = load_dataset(dataset, image_size=image_size, root=data_dir)
    space_model = make_space(space, splits.num_classes, splits.in_chans, placement)
    choices, settings = _split(params, space_model.simplify())
    model = space_model.freeze(choices)
    if space in ("cells", "efficientnet"):
        with torch.no_grad():
            for _, layer in dynopool_layers(model):
                layer.alpha.fill_(1.0 / settings["scale"])
    input_size = (splits.in_chans, image_size, image_size)
    cost = GMACsCost.from_model(model, input_size)
    table = LatencyTable(_latency_device(accelerator), progress=False) if latency_table is None else latency_table
    latency = LatencyCost.from_model(model, input_size, table)
    constraint = _budget(settings, cost, latency)
    parameters = sum(p.numel() for p in model.parameters())
    history: list[dict[str, Any]] = []

    def report(result: EpochResult) -> None:
        with torch.no_grad():
            latency_ms = float(latency())
        history.append(trial_metrics(result.val_accuracy, result.gmacs, parameters, result.sizes,
                                     latency_ms=latency_ms))
        nni.report_intermediate_result(history[-1])

    with quiet():
        fit(
            model,
            DataLoader(train_subset(splits.train, None, batch_size), batch_size=batch_size, shuffle=True,
                       drop_last=True),
            DataLoader(splits.val, batch_size=256),
            cost,
            epochs=epochs, lr=settings["lr"], alpha_lr=settings["alpha_lr"], gmacs_lambda=settings["gmacs_lambda"],
            progress=False, on_epoch=report, after_step=constraint.project if constraint else None,
            devices=devices, accelerator=accelerator,
        )
    if not history:
        return {}
    nni.report_final_result(history[-1])
    output = Path(output_dir or os.environ.get("NNI_OUTPUT_DIR", "."))
    output.mkdir(parents=True, exist_ok=True)
    arch = architecture_record(
        input_size, choices, {layer.name: layer.scale for _, layer in dynopool_layers(model)},
        cost.feature_map_sizes(), metrics=history[-1], **space_fields(space, placement),
        num_classes=splits.num_classes,
    )
    write_together(output, {"arch.json": lambda path: save_architecture(arch, path),
                            "weights.pt": lambda path: save_weights(model, path)})
    return history[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """The trial program: reads the tuner's parameters, trains the chosen architecture with
    DynOPool learning its scales (:func:`run_trial`), reports to NNI."""
    parser = argparse.ArgumentParser(prog="python -m strategies.commands.trial", description=main.__doc__)
    parser.add_argument("--space", default="cells", choices=SPACES)
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes) per trial: DDP when > 1")
    parser.add_argument("--accelerator", default="auto", help="auto, gpu or cpu")
    parser.add_argument("--placement", default="after", choices=PLACEMENTS,
                        help="converted models: DynOPool after a strided conv (eq. 5.2) or before it")
    args = parser.parse_args(argv)
    params = nni.get_next_parameter() or {}
    try:
        final = run_trial(params, space=args.space, dataset=args.dataset, epochs=args.epochs,
                          image_size=args.image_size, batch_size=args.batch_size, data_dir=args.data_dir,
                          devices=args.devices, accelerator=args.accelerator, placement=args.placement)
    except Exception as error:
        print(f"trial failed with parameters {params}: {type(error).__name__}: {error}", file=sys.stderr)
        raise
    if final:
        print(f"trial finished: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
