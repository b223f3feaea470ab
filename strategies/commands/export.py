"""``dynopool-nas export``: discovered architectures as standalone PyTorch models.

For each selected architecture the export folder holds ``arch.json``, ``weights.pt``, and the
model with every DynOPool frozen to a fixed-size resizer that computes exactly what the learned
layer computed (:class:`~dynopool_nas.FixedDynOPool2d`), as TorchScript (``model.pt``, loaded by
``torch.jit.load`` alone, no NNI) and ONNX (``model.onnx``, any batch size), with their digests
in ``SHA256SUMS``.

An architecture and its weights are read only where ``SHA256SUMS`` shows that they were written
together (:func:`~dynopool_nas._utils.write_together`). An export replaces its output folder as
a whole (:func:`~dynopool_nas._utils.atomic_folder`): two exports into one folder at the same
time leave the complete set of one of them.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from dynopool_nas import freeze_dynopools
from dynopool_nas._utils import atomic_folder, check_together, write_together
from search_spaces.arch import build_model, load_architecture, load_weights, save_architecture
from search_spaces.registry import space_of

__all__ = [
    "EXPORTED", "RESULT", "collect_architectures", "load_result", "pareto_front", "run_export", "standalone_model",
    "write_standalone",
]

RESULT = ("arch.json", "weights.pt")
"""The files of a search's or a trial's result, written together."""

EXPORTED = "exported.csv"
"""The table an export writes; it also marks a folder an export may replace."""


def load_result(folder: str | Path) -> dict[str, Any]:
    """The architecture in ``folder``, after checking that its ``weights.pt`` was written with it."""
    folder = Path(folder)
    check_together(folder, RESULT)
    return load_architecture(folder / "arch.json")


def standalone_model(arch: dict[str, Any], weights: str | Path) -> nn.Module:
    """The trained model ``arch`` and ``weights`` describe, DynOPools frozen, in eval mode."""
    missing = [key for key in ("space", "num_classes") if key not in arch]
    if missing:
        raise ValueError(f"the architecture lacks {missing}: re-export it with dynopool-nas search or a trial")
    input_size = tuple(arch["input_size"])
    model = build_model(space_of(arch, arch["num_classes"], input_size[0]), arch)
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as error:
        raise ValueError(f"{weights} does not match its architecture: {str(error).splitlines()[0]}") from None
    return freeze_dynopools(model, input_size).eval()


# torch.onnx.export keeps its state in module globals (and warnings filters are process-wide):
# exports from several threads of one process take turns
_ONNX_EXPORT = threading.Lock()


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _ONNX_EXPORT, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def write_standalone(arch: dict[str, Any], weights: str | Path, output: str | Path) -> Path:
    """Write ``arch.json``, ``weights.pt``, ``model.pt`` (TorchScript) and ``model.onnx`` (batch
    axis dynamic) to ``output``, together (``SHA256SUMS``); the scripted model's output is checked
    against the eager one."""
    output = Path(output)
    model = standalone_model(arch, weights)
    example = torch.randn(2, *arch["input_size"])
    scripted = torch.jit.script(model)
    with torch.no_grad():
        if not torch.allclose(scripted(example), model(example), atol=1e-5, rtol=1e-5):
            raise RuntimeError("the TorchScript model does not reproduce the eager model")
    write_together(output, {
        "arch.json": lambda path: save_architecture(arch, path),
        "weights.pt": lambda path: shutil.copyfile(weights, path),
        "model.pt": lambda path: torch.jit.save(scripted, str(path)),
        "model.onnx": lambda path: _export_onnx(model, example, path),
    })
    return output


def _resolve(source: str | Path) -> Path:
    """A folder as given, or an nnictl experiment id, taken literally, looked up where NNI keeps
    experiments (``~/nni-experiments``, ``$NNI_EXPERIMENTS_DIR``) and under ``runs/``."""
    path = Path(source)
    if path.exists():
        return path
    experiments, runs = Path(os.environ.get("NNI_EXPERIMENTS_DIR", Path.home() / "nni-experiments")), Path("runs")
    where = [str(experiments), str(runs)]
    if len(path.parts) != 1:
        raise FileNotFoundError(f"{source} is not a folder (an experiment id is a plain name, looked up under {where})")
    found = [experiments / path.name] if (experiments / path.name).is_dir() else []
    found += [Path(folder) / path.name for folder, children, _ in os.walk(runs) if path.name in children]
    if not found:
        raise FileNotFoundError(f"{source} is neither a folder nor an experiment id found under {where}")
    if len(found) > 1:
        raise ValueError(f"experiment id {source} names {len(found)} folders ({', '.join(map(str, found))}); "
                         "give the folder instead")
    return found[0]


def collect_architectures(source: str | Path) -> pd.DataFrame:
    """Every exported architecture under ``source`` (a search output, a trial folder, a whole
    nnictl experiment folder, or an experiment id): one row each with its metrics and folder.
    An ``arch.json`` whose ``weights.pt`` was not written with it is left out with a warning."""
    source = _resolve(source)
    rows, refused = [], []
    for path in sorted(source.rglob("arch.json")):
        if not (path.parent / "weights.pt").is_file():
            continue
        try:
            arch = load_result(path.parent)
        except ValueError as error:
            refused.append(str(error))
            continue
        rows.append({"folder": str(path.parent), "top1": arch["metrics"]["default"], "gmacs": arch["metrics"]["gmacs"],
                     "params": arch["metrics"]["params"]})
    if refused and rows:
        warnings.warn(f"left out {len(refused)} result(s): " + "; ".join(refused), RuntimeWarning, stacklevel=2)
    if refused and not rows:
        raise ValueError(refused[0])
    if not rows:
        raise FileNotFoundError(f"no arch.json with weights.pt beside it under {source}")
    return pd.DataFrame(rows).sort_values("top1", ascending=False, ignore_index=True)


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """The rows no other row beats on both accuracy (higher) and GMACs (lower)."""
    keep = [
        not ((table["top1"] >= row.top1) & (table["gmacs"] <= row.gmacs)
             & ((table["top1"] > row.top1) | (table["gmacs"] < row.gmacs))).any()
        for row in table.itertuples()
    ]
    return table[keep].sort_values("gmacs", ignore_index=True)


def run_export(source: str | Path, output: str | Path, *, front: bool = False) -> pd.DataFrame:
    """Export the best architecture under ``source`` (or the accuracy/GMACs Pareto front) into
    ``output``, which the export replaces as a whole (a folder of other files is refused)."""
    table = collect_architectures(source)
    chosen = pareto_front(table) if front else table.head(1)
    output = Path(output)
    names = [f"{index:02d}_{Path(folder).name}" for index, folder in enumerate(chosen["folder"])]
    with atomic_folder(output, marker=EXPORTED) as building:
        for name, folder in zip(names, chosen["folder"]):
            arch = load_result(folder)
            write_standalone(arch, Path(folder) / "weights.pt", building / name)
        chosen = chosen.assign(export=[str(output / name) for name in names])
        chosen.to_csv(building / EXPORTED, index=False)
    return chosen
