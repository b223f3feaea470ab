"""What describes an architecture of a space: ``arch.json``, a JSON document of the chosen
candidates, every DynOPool's learned scale and the feature-map sizes they give
(:func:`architecture_record`, :func:`save_architecture`, :func:`load_architecture`), the model
rebuilt from it (:func:`build_model`) and its weights (:func:`save_weights`, :func:`load_weights`).

Every DynOPool of a space is known by one name in reports, exported architectures and rebuilt
models: the ``name`` it was given, or else its module path in the space (:func:`name_dynopools`).
An architecture found by a one-shot search is exported by
:func:`strategies.export.export_architecture`; a trial builds its own with
:func:`architecture_record`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from dynopool_nas import DynOPool2d, dynopool_layers
from dynopool_nas._utils import atomic_write, eval_mode, example_input
from dynopool_nas.convert import PLACEMENTS

__all__ = [
    "METRICS", "OPTIONAL_METRICS", "SCHEMA_VERSION", "architecture_record", "build_model", "dynopool_name",
    "freeze_architecture", "load_architecture", "load_weights", "name_dynopools", "save_architecture", "save_weights",
]

SCHEMA_VERSION = 1
_REQUIRED = {"schema_version": int, "input_size": list, "choices": dict, "scales": dict, "sizes": dict}
METRICS = ("default", "gmacs", "params")
"""The metrics an architecture records: validation top-1 (``'default'``), GMACs and parameters."""
OPTIONAL_METRICS = ("latency_ms",)
"""The metrics an architecture records where they are known: ``'latency_ms'``, its predicted
latency (:class:`~dynopool_nas.LatencyCost`) in milliseconds per image on the device whose
latency table priced it. An ``arch.json`` without them (older ones) loads as before."""
_UNNAMED = DynOPool2d.__name__  # the name a DynOPool2d created without ``name=`` carries


def dynopool_name(path: str, layer: DynOPool2d) -> str:
    """The name under which ``layer``, found at module ``path`` of a space, is searched and
    exported: its own ``name`` if it was given one, else ``path``."""
    return path if layer.name == _UNNAMED else layer.name


def name_dynopools(space: nn.Module) -> nn.Module:
    """Give every DynOPool of ``space`` created without ``name=`` its module path as name, in
    place, so that the space, its supernet and its frozen models agree (freezing copies the
    layers, and with them their names). Returns ``space``; raises ``ValueError`` if two
    different DynOPools share a name."""
    paths: dict[str, str] = {}
    for path, module in space.named_modules():  # a shared layer is listed once
        if not isinstance(module, DynOPool2d):
            continue
        module.name = dynopool_name(path, module)
        if module.name in paths:
            raise ValueError(
                f"the DynOPools at {paths[module.name]!r} and {path!r} are both named {module.name!r}; give each its "
                "own name (or share one layer object where two branches must have one scale)"
            )
        paths[module.name] = path
    return space


def architecture_record(
    input_size: Sequence[int],
    choices: Mapping[str, Any],
    scales: Mapping[str, Sequence[float]],
    sizes: Mapping[str, Sequence[int]],
    *,
    metrics: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The ``arch.json`` document of an architecture: its ``input_size`` (channels, height, width),
    the categorical ``choices``, every DynOPool's scale ``(r_h, r_w)`` and feature-map size by
    name, the :data:`METRICS` of ``metrics`` (left out when ``None``) and those of
    :data:`OPTIONAL_METRICS` it holds, and ``fields``, what records the space
    (:func:`~search_spaces.registry.space_fields` or :func:`~search_spaces.registry.space_record`)
    and ``num_classes``. Raises ``ValueError`` for a document :func:`load_architecture` would
    refuse."""
    arch = {
        "schema_version": SCHEMA_VERSION,
        "input_size": list(input_size),
        "choices": dict(choices),
        "scales": {name: list(scale) for name, scale in scales.items()},
        "sizes": {name: list(size) for name, size in sizes.items()},
        **({} if metrics is None else {"metrics": _metrics(metrics)}),
        **fields,
    }
    _validate(arch, "architecture")
    return arch


def _metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`METRICS` of ``metrics`` (each required) and the :data:`OPTIONAL_METRICS` it holds."""
    return {key: metrics[key] for key in METRICS} | {key: metrics[key] for key in OPTIONAL_METRICS if key in metrics}


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


def freeze_architecture(
    space: ModelSpace, choices: Mapping[str, Any], scales: Mapping[str, Sequence[float]]
) -> nn.Module:
    """``space`` (or its one-shot supernet) frozen at ``choices``, every DynOPool at its scale
    ``(r_h, r_w)`` in ``scales``, by name. Raises ``ValueError`` when the names differ."""
    model = name_dynopools(space).freeze(dict(choices))
    layers = {dynopool_name(path, layer): layer for path, layer in dynopool_layers(model)}
    if set(layers) != set(scales):
        raise ValueError(
            f"the architecture's DynOPools {sorted(scales)} do not match the space's {sorted(layers)}; "
            "was it exported from another space?"
        )
    with torch.no_grad():
        for name, (r_h, r_w) in scales.items():
            layers[name].alpha.copy_(torch.tensor([1.0 / r_h, 1.0 / r_w]))
    return model


def build_model(space: ModelSpace, arch: dict[str, Any]) -> nn.Module:
    """The model ``arch`` describes: ``space`` frozen at the chosen candidates, every DynOPool at
    its learned scale. Raises ``ValueError`` when ``arch`` does not fit ``space`` or the rebuilt
    model's feature-map sizes differ from the exported ones."""
    _validate(arch, "architecture")
    model = freeze_architecture(space, arch["choices"], arch["scales"])
    layers = {dynopool_name(path, layer): layer for path, layer in dynopool_layers(model)}
    with eval_mode(model):
        model(example_input(model, tuple(arch["input_size"])))
    sizes = {name: list(layer.output_size) for name, layer in layers.items()}
    if sizes != arch["sizes"]:
        raise ValueError(f"rebuilt feature-map sizes {sizes} differ from the exported {arch['sizes']}")
    return model


def save_weights(model: nn.Module, path: Path) -> Path:
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
