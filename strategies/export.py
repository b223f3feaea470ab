"""The architecture a finished one-shot search derives, exported from its strategy.

:func:`export_architecture` reads it from a :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS)
as an ``arch.json`` document (:func:`~search_spaces.arch.architecture_record`);
:func:`save_search` writes what ``dynopool-nas export`` and ``compare`` need from a search run in
Python: ``arch.json``, which records the space (its class by import path and its constructor's
arguments, :func:`~search_spaces.registry.space_record`), and ``weights.pt``, the derived model's
weights. Freezing learned DynOPools into fixed resizers is :mod:`dynopool_nas.freeze`; the
``dynopool-nas export`` command is :mod:`strategies.commands.export`.
"""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

from pathlib import Path
from typing import Any

from dynopool_nas._utils import eval_mode, example_input, write_together
from search_spaces.arch import architecture_record, build_model, save_architecture, save_weights
from search_spaces.registry import space_record

from .supernet import derived_choices

__all__ = ["export_architecture", "save_search"]


def export_architecture(strategy: Any) -> dict[str, Any]:
    """The architecture a finished :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS) search
    derives, with its metrics (its last report: top-1, GMACs, parameters, and under a latency
    constraint its predicted ``latency_ms``), as a JSON-serializable dict."""
    module = strategy.oneshot_module
    choices, scales = derived_choices(module.model)
    return architecture_record(
        module.input_size,
        choices=choices,
        scales=scales,
        sizes=module.cost.feature_map_sizes(),
        metrics=module.history[-1] if module.history else module.metrics(),
    )


def save_search(strategy: Any, folder: str | Path) -> dict[str, Any]:
    """Save a finished :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS) search for
    ``dynopool-nas export`` and ``compare``: ``folder/arch.json`` (:func:`export_architecture`
    with the space's :func:`~search_spaces.registry.space_record` and ``num_classes``) and
    ``folder/weights.pt``, the state dict of the derived model
    (:func:`~search_spaces.arch.build_model` of the trained supernet). Returns the architecture."""
    space = strategy.supernet
    arch = export_architecture(strategy) | space_record(space)
    model = build_model(space, arch)
    with eval_mode(model):
        logits = model(example_input(model, tuple(arch["input_size"])))
    arch["num_classes"] = int(logits.shape[-1])
    write_together(Path(folder), {"arch.json": lambda path: save_architecture(arch, path),
                                  "weights.pt": lambda path: save_weights(model, path)})
    return arch
