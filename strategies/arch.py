"""Exported architectures: a JSON document of the chosen candidates, every DynOPool's learned
scale and the feature-map sizes they give, and the model rebuilt from it.

:func:`save_search` writes what ``dynopool-nas export`` and ``compare`` need from a search run in
Python: ``arch.json``, which records the space (its class by import path and its constructor's
arguments, :func:`~search_spaces.registry.space_record`), and ``weights.pt``, the derived model's weights.
"""

from __future__ import annotations

from search_spaces import _nni, _nni_compat  # noqa: F401  (NNI quietly, then the package's changes to it)

# isort: split

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from dynopool_nas import dynopool_layers
from dynopool_nas._utils import atomic_write, eval_mode, example_input, write_together
from dynopool_nas.convert import PLACEMENTS
from search_spaces.registry import space_record

from .supernet import SCALE_LABEL_PREFIX, dynopool_name, name_dynopools

__all__ = [
    "SCHEMA_VERSION", "build_model", "export_architecture", "load_architecture", "load_weights", "save_architecture",
    "save_search", "save_weights",
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


def save_search(strategy: Any, folder: str | Path) -> dict[str, Any]:
    """Save a finished :class:`~strategies.DynOPoolDARTS` (or GumbelDARTS) search for
    ``dynopool-nas export`` and ``compare``: ``folder/arch.json`` (:func:`export_architecture`
    with the space's :func:`~search_spaces.registry.space_record` and ``num_classes``) and ``folder/weights.pt``, the
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
