"""One-shot searches from the command line: ``dynopool-nas search``."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from dynopool_nas import load_dataset
from dynopool_nas._checks import train_subset, writable_folder
from dynopool_nas._quiet import quiet
from dynopool_nas._utils import atomic_write, write_together
from dynopool_nas.convert import Placement
from dynopool_nas.models import MODELS

from .arch import build_model, export_architecture, rebuild_space, save_architecture
from .constraint import GMACsConstraint
from .darts import DynOPoolDARTS, DynOPoolGumbelDARTS

__all__ = [
    "SPACES", "STRATEGIES", "load_weights", "make_space", "run_search", "save_weights", "space_fields", "space_of",
]

STRATEGIES = {"darts": DynOPoolDARTS, "gumbel-darts": DynOPoolGumbelDARTS}
SPACES = ("cells", "efficientnet", *MODELS)


def make_space(name: str, num_classes: int, in_chans: int, placement: Placement = "after") -> Any:
    """A search space by name: ``cells``, ``efficientnet`` or a converted model's name, whose
    strided convolutions get their DynOPool ``placement`` (see :func:`dynopool_nas.dynopoolify`)."""
    from search_spaces.cells import DynOPoolCellSpace
    from search_spaces.converted import ConvertedSpace
    from search_spaces.efficientnet import EfficientNetSpace

    if placement != "after" and name not in MODELS:
        raise ValueError(f"placement {placement!r} applies to converted models; the {name!r} space places its own "
                         "DynOPools")
    if name == "cells":
        return DynOPoolCellSpace(num_classes=num_classes, in_chans=in_chans)
    if name == "efficientnet":
        return EfficientNetSpace(num_classes=num_classes, in_chans=in_chans)
    if name in MODELS:
        return ConvertedSpace(name, num_classes=num_classes, in_chans=in_chans, placement=placement)
    raise ValueError(f"unknown space {name!r}; choose one of {SPACES}")


def space_of(arch: dict[str, Any], num_classes: int, in_chans: int) -> Any:
    """The search space an exported architecture came from: a space of this package by name
    (``space`` and ``placement``), or a user's space by import path and recorded arguments
    (``space`` ``"module:Class"`` and ``space_kwargs``, written by
    :func:`~strategies.arch.save_search`), with ``num_classes`` and ``in_chans`` where its
    constructor takes them."""
    if "space" not in arch:
        raise ValueError(
            "the architecture does not record its space; save a search with strategies.arch.save_search(strategy, "
            "folder), or use the output of dynopool-nas search or of a trial"
        )
    if ":" in arch["space"]:
        return rebuild_space(arch, num_classes=num_classes, in_chans=in_chans)
    return make_space(arch["space"], num_classes, in_chans, placement=arch.get("placement", "after"))


def space_fields(space: str, placement: Placement) -> dict[str, Any]:
    """What an exported architecture records of its space (``placement`` only where it applies)."""
    return {"space": space} | ({"placement": placement} if space in MODELS else {})


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s state dict, written atomically (loadable with ``weights_only=True``)."""
    return atomic_write(path, lambda temporary: torch.save(model.state_dict(), temporary))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict written by :func:`save_weights`, loaded with ``weights_only=True`` onto the
    CPU; a missing, empty, truncated or foreign file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file there; point at the folder of a search, a trial or an export")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load's errors name neither the file nor the cause
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable weights file ({reason[:120]}): it is empty, truncated or not "
                         "written by dynopool-nas; run the search or trial that made it again") from None


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
