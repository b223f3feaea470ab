"""One-shot searches from the command line: ``dynopool-nas search``."""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

import contextlib
from pathlib import Path
from typing import Any

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from dynopool_nas import load_dataset
from dynopool_nas._checks import train_subset, writable_folder
from dynopool_nas._quiet import quiet
from dynopool_nas._utils import write_together
from dynopool_nas.convert import Placement
from search_spaces.arch import build_model, save_architecture, save_weights
from search_spaces.registry import make_space, space_fields
from strategies.constraint import GMACsConstraint
from strategies.darts import DynOPoolDARTS, DynOPoolGumbelDARTS
from strategies.export import export_architecture

__all__ = ["STRATEGIES", "run_search"]

STRATEGIES = {"darts": DynOPoolDARTS, "gumbel-darts": DynOPoolGumbelDARTS}


def _run_to_the_end(experiment: NasExperiment) -> None:
    """Run ``experiment`` and stop it (NNI leaves that to exit time); a Ctrl-C, which NNI's
    ``run`` swallows, is raised again so that no half-trained result is written."""
    with quiet():
        try:
            finished = experiment.run()
        except BaseException:
            with contextlib.suppress(Exception):
                experiment.stop()
            raise
        if finished:
            experiment.stop()
    if not finished:
        raise KeyboardInterrupt


def run_search(
    space: str,
    strategy: str,
    dataset: str,
    epochs: int,
    output: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int = 32,
    batch_size: int = 64,
    learning_rate: float = 0.01,
    alpha_learning_rate: float = 0.01,
    gmacs_lambda: float | None = None,
    gmacs_budget: float | None = None,
    max_train_images: int | None = None,
    seed: int = 0,
    placement: Placement = "after",
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Search ``space`` with ``strategy`` on ``dataset``; write ``output/arch.json`` and the derived
    model's weights ``output/weights.pt`` (taken from the supernet); return both."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    output = writable_folder(output)
    torch.manual_seed(seed)
    splits = load_dataset(dataset, image_size=image_size, root=data_dir, download=download, seed=seed)
    train = train_subset(splits.train, max_train_images, batch_size)
    constraint = None
    if gmacs_lambda is not None or gmacs_budget is not None:
        constraint = GMACsConstraint(lam=gmacs_lambda, budget=gmacs_budget)
    search_space = make_space(space, splits.num_classes, splits.in_chans, placement)
    evaluator = Classification(
        train_dataloaders=DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
        val_dataloaders=DataLoader(splits.val, batch_size=256),
        max_epochs=epochs, num_classes=splits.num_classes, learning_rate=learning_rate,
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    search = STRATEGIES[strategy](
        input_size=(splits.in_chans, image_size, image_size), alpha_learning_rate=alpha_learning_rate,
        constraint=constraint,
    )
    _run_to_the_end(NasExperiment(search_space, evaluator, search))
    arch = export_architecture(search) | space_fields(space, placement) | {"num_classes": splits.num_classes}
    model = build_model(search.supernet, arch)
    write_together(output, {"arch.json": lambda path: save_architecture(arch, path),
                            "weights.pt": lambda path: save_weights(model, path)})
    return arch, model
