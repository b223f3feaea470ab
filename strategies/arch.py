"""Exported architectures: a JSON document of the chosen candidates, every DynOPool's learned
scale and the feature-map sizes they give, and the model rebuilt from it.

:func:`save_search` writes what ``dynopool-nas export`` and ``compare`` need from a search run in
Python: ``arch.json``, which records the space (its class by import path and its constructor's
arguments, :func:`space_record`), and ``weights.pt``, the derived model's weights.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from dynopool_nas import dynopool_layers
from dynopool_nas._utils import atomic_write, eval_mode, example_input, write_together
from dynopool_nas.convert import PLACEMENTS

from .supernet import SCALE_LABEL_PREFIX, dynopool_name, name_dynopools

__all__ = [
    "SCHEMA_VERSION", "build_model", "export_architecture", "load_architecture", "rebuild_space", "save_architecture",
    "save_search", "space_record",
]

SCHEMA_VERSION = 1
_REQUIRED = {"schema_version": int, "input_size": list, "choices": dict, "scales": dict, "sizes": dict}


def export_architecture(strategy: Any) -> dict[str, Any]:
    """The architecture a finished :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS) search
    derives, with its metrics, as a JSON-serializable dict."""
    module = strategy.oneshot_module
    sample = module.export()
    metrics = module.history[-1] if module.history else module.metrics()
    return {
        "schema_version": SCHEMA_VERSION,
        "input_size": list(module.input_size),
        "choices": {k: v for k, v in sample.items() if not k.startswith(SCALE_LABEL_PREFIX)},
        "scales": {k[len(SCALE_LABEL_PREFIX):]: list(v) for k, v in sample.items() if k.startswith(SCALE_LABEL_PREFIX)},
        "sizes": {name: list(size) for name, size in module.cost.feature_map_sizes().items()},
        "metrics": {k: metrics[k] for k in ("default", "gmacs", "params")},
    }


def save_architecture(arch: dict[str, Any], path: str | Path) -> Path:
    """Write ``arch`` as JSON atomically (a crash leaves the previous file intact)."""
    _validate(arch, str(path))
    return atomic_write(path, lambda temporary: temporary.write_text(json.dumps(arch, indent=2, sort_keys=True)))


def load_architecture(path: str | Path) -> dict[str, Any]:
    """Read and validate an exported architecture."""
    try:
        arch = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no exported architecture at {path}; run a search with --output first") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the architecture") from None
    _validate(arch, str(path))
    return arch


def _validate(arch: Any, where: str) -> None:
    if not isinstance(arch, dict):
        raise ValueError(f"{where}: an exported architecture is a JSON object, got {type(arch).__name__}")
    for key, kind in _REQUIRED.items():
        if not isinstance(arch.get(key), kind):
            raise ValueError(f"{where}: field {key!r} is missing or not a {kind.__name__}; re-export the architecture")
    if arch["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{where}: schema version {arch['schema_version']} is not {SCHEMA_VERSION}, the one this version reads"
        )
    if arch.get("placement", "after") not in PLACEMENTS:
        raise ValueError(f"{where}: placement {arch['placement']!r} is not one of {PLACEMENTS}")
    for name, scale in arch["scales"].items():
        valid = isinstance(scale, list) and len(scale) == 2
        if not (valid and all(isinstance(r, (int, float)) and r > 0 for r in scale)):
            raise ValueError(f"{where}: scale of {name!r} must be two positive numbers, got {scale!r}")


def build_model(space: ModelSpace, arch: dict[str, Any]) -> nn.Module:
    """The model ``arch`` describes: ``space`` frozen at the chosen candidates, every DynOPool at
    its learned scale. Raises ``ValueError`` when ``arch`` does not fit ``space`` or the rebuilt
    model's feature-map sizes differ from the exported ones."""
    _validate(arch, "architecture")
    model = name_dynopools(space).freeze(arch["choices"])
    layers = {dynopool_name(path, layer): layer for path, layer in dynopool_layers(model)}
    if set(layers) != set(arch["scales"]):
        raise ValueError(
            f"the architecture's DynOPools {sorted(arch['scales'])} do not match the space's {sorted(layers)}; "
            "was it exported from another space?"
        )
    with torch.no_grad():
        for name, (r_h, r_w) in arch["scales"].items():
            layers[name].alpha.copy_(torch.tensor([1.0 / r_h, 1.0 / r_w]))
    with eval_mode(model):
        model(example_input(model, tuple(arch["input_size"])))
    sizes = {name: list(layer.output_size) for name, layer in layers.items()}
    if sizes != arch["sizes"]:
        raise ValueError(f"rebuilt feature-map sizes {sizes} differ from the exported {arch['sizes']}")
    return model


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


def save_search(strategy: Any, folder: str | Path) -> dict[str, Any]:
    """Save a finished :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS) search for
    ``dynopool-nas export`` and ``compare``: ``folder/arch.json`` (:func:`export_architecture`
    with the space's :func:`space_record` and ``num_classes``) and ``folder/weights.pt``, the
    state dict of the derived model (:func:`build_model` of the trained supernet). Returns the
    architecture."""
    space = strategy.supernet
    arch = export_architecture(strategy) | space_record(space)
    model = build_model(space, arch)
    with eval_mode(model):
        logits = model(example_input(model, tuple(arch["input_size"])))
    arch["num_classes"] = int(logits.shape[-1])
    folder = Path(folder)
    write_together(folder, {"arch.json": lambda path: save_architecture(arch, path),
                            "weights.pt": lambda path: torch.save(model.state_dict(), path)})
    return arch
