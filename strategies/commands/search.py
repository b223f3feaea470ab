"""One-shot searches from the command line: ``dynopool-nas search``."""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from dynopool_nas import load_dataset
from dynopool_nas._checks import train_subset, writable_folder
from dynopool_nas._quiet import quiet
from dynopool_nas._utils import write_together
from search_spaces.arch import build_model, save_architecture, save_weights
from search_spaces.registry import make_space, space_fields
from strategies.constraint import CostConstraint, GMACsConstraint, LatencyConstraint
from strategies.darts import DynOPoolDARTS, DynOPoolGumbelDARTS
from strategies.export import export_architecture

from .settings import SearchSettings

if TYPE_CHECKING:
    from dynopool_nas import LatencyTable

__all__ = ["STRATEGIES", "run_search"]

STRATEGIES = {"darts": DynOPoolDARTS, "gumbel-darts": DynOPoolGumbelDARTS}
"""The strategies by the names of :data:`~strategies.commands.settings.STRATEGY_NAMES`."""


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


def _constraint(settings: SearchSettings, latency_table: LatencyTable | None) -> CostConstraint | None:
    """The constraint ``settings`` chooses (at most one of its four fields is set), if any."""
    if settings.gmacs_lambda is not None or settings.gmacs_budget is not None:
        return GMACsConstraint(lam=settings.gmacs_lambda, budget=settings.gmacs_budget)
    if settings.latency_lambda is not None or settings.latency_budget_ms is not None:
        return LatencyConstraint(lam=settings.latency_lambda, budget_ms=settings.latency_budget_ms,
                                 table=latency_table, anchor=settings.latency_anchor)
    return None


def run_search(
    settings: SearchSettings, *, latency_table: LatencyTable | None = None
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Search ``settings.space`` with ``settings.strategy`` on ``settings.dataset``; write
    ``arch.json`` and the derived model's weights ``weights.pt`` (taken from the supernet) to
    ``settings.output``; return both.

    Under a latency constraint (``settings.latency_lambda`` or ``settings.latency_budget_ms``) the
    supernet's layers are priced in ``latency_table``; by default the cached
    :class:`~dynopool_nas.LatencyTable` of the device the search trains on, at the current
    thread count, measuring (with a progress bar) what it does not hold yet. Pass a table to
    measure elsewhere or with other settings (repeats, threads, its cache file)."""
    output = writable_folder(settings.output)
    torch.manual_seed(settings.seed)
    splits = load_dataset(settings.dataset, image_size=settings.image_size, root=settings.data_dir,
                          download=settings.download, seed=settings.seed)
    train = train_subset(splits.train, settings.max_train_images, settings.batch_size)
    constraint = _constraint(settings, latency_table)
    search_space = make_space(settings.space, splits.num_classes, splits.in_chans, settings.placement)
    evaluator = Classification(
        train_dataloaders=DataLoader(train, batch_size=settings.batch_size, shuffle=True, drop_last=True),
        val_dataloaders=DataLoader(splits.val, batch_size=256),
        max_epochs=settings.epochs, num_classes=splits.num_classes, learning_rate=settings.learning_rate,
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    search = STRATEGIES[settings.strategy](
        input_size=(splits.in_chans, settings.image_size, settings.image_size),
        alpha_learning_rate=settings.alpha_learning_rate, constraint=constraint,
    )
    _run_to_the_end(NasExperiment(search_space, evaluator, search))
    arch = (export_architecture(search) | space_fields(settings.space, settings.placement)
            | {"num_classes": splits.num_classes})
    model = build_model(search.supernet, arch)
    write_together(output, {"arch.json": lambda path: save_architecture(arch, path),
                            "weights.pt": lambda path: save_weights(model, path)})
    return arch, model
