"""Search spaces by name, and the record that finds a space again from an exported architecture.

A space of this package is named in :data:`SPACES` (``cells``, ``efficientnet`` or a converted
model's name); a user's space is recorded by import path and constructor arguments
(:func:`space_record`) and rebuilt from them (:func:`rebuild_space`).
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

from nni.nas.nn.pytorch import ModelSpace

from dynopool_nas.convert import Placement
from dynopool_nas.models import MODELS

from .cells import DynOPoolCellSpace
from .converted import ConvertedSpace
from .efficientnet import EfficientNetSpace

__all__ = ["SPACES", "make_space", "rebuild_space", "space_fields", "space_of", "space_record"]

SPACES = ("cells", "efficientnet", *MODELS)


def make_space(name: str, num_classes: int, in_chans: int, placement: Placement = "after") -> Any:
    """A search space by name: ``cells``, ``efficientnet`` or a converted model's name, whose
    strided convolutions get their DynOPool ``placement`` (see :func:`dynopool_nas.dynopoolify`)."""
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
    :func:`~strategies.export.save_search`), with ``num_classes`` and ``in_chans`` where its
    constructor takes them."""
    if "space" not in arch:
        raise ValueError(
            "the architecture does not record its space; save a search with strategies.save_search(strategy, "
            "folder), or use the output of dynopool-nas search or of a trial"
        )
    if ":" in arch["space"]:
        return rebuild_space(arch, num_classes=num_classes, in_chans=in_chans)
    return make_space(arch["space"], num_classes, in_chans, placement=arch.get("placement", "after"))


def space_fields(space: str, placement: Placement) -> dict[str, Any]:
    """What an exported architecture records of its space (``placement`` only where it applies)."""
    return {"space": space} | ({"placement": placement} if space in MODELS else {})


def space_record(space: ModelSpace) -> dict[str, Any]:
    """What an architecture records of ``space`` so that :func:`rebuild_space` can build it again
    in another process: ``{"space": "module:Class", "space_kwargs": {...}}``, the arguments
    being those NNI recorded when the space was constructed. Raises ``ValueError`` for a class
    that cannot be imported by name or arguments that are not JSON."""
    cls = type(space)
    where = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(
            f"the space class {where} cannot be imported by name; define it at the top level of an importable "
            "module so that export and compare can rebuild it"
        )
    kwargs = dict(getattr(space, "trace_kwargs", {}))
    if getattr(space, "trace_args", ()):
        raise ValueError(f"{where} was built with positional arguments NNI could not name; pass them by keyword")
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{where} was built with arguments that JSON cannot hold ({error}); export and compare rebuild a space "
            "from numbers, strings, lists and dicts only"
        ) from None
    return {"space": where, "space_kwargs": kwargs}


def rebuild_space(arch: dict[str, Any], **overrides: Any) -> ModelSpace:
    """The space an architecture's :func:`space_record` names, built with its recorded
    arguments; ``overrides`` replace those of them the class's constructor takes (e.g. the
    data set's ``num_classes`` and ``in_chans``)."""
    module_name, _, qualname = arch["space"].partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"cannot import the space {arch['space']!r} the architecture was saved from ({error}); run from where "
            "that module is importable (install its package or add its folder to PYTHONPATH)"
        ) from None
    if not (isinstance(target, type) and issubclass(target, ModelSpace)):
        raise ValueError(f"{arch['space']!r} is not an NNI ModelSpace class")
    accepted = inspect.signature(getattr(target, "_init_wrapped", target.__init__)).parameters
    kwargs = dict(arch.get("space_kwargs", {})) | {k: v for k, v in overrides.items() if k in accepted}
    return target(**kwargs)
