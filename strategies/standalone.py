"""``dynopool-nas export``: discovered architectures as standalone PyTorch models.

For each selected architecture the export folder holds ``arch.json``, ``weights.pt``, and the
model with every DynOPool frozen to a fixed-size resizer that computes exactly what the learned
layer computed (:class:`~dynopool_nas.FixedDynOPool2d`), as TorchScript (``model.pt``, loaded by
``torch.jit.load`` alone, no NNI) and ONNX (``model.onnx``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from dynopool_nas import freeze_dynopools
from dynopool_nas._utils import atomic_write

from .arch import build_model, load_architecture, save_architecture
from .search import space_of

__all__ = ["collect_architectures", "pareto_front", "run_export", "standalone_model", "write_standalone"]


def standalone_model(arch: dict[str, Any], weights: str | Path) -> nn.Module:
    """The trained model ``arch`` and ``weights`` describe, DynOPools frozen, in eval mode."""
    missing = [key for key in ("space", "num_classes") if key not in arch]
    if missing:
        raise ValueError(f"the architecture lacks {missing}: re-export it with dynopool-nas search or a trial")
    input_size = tuple(arch["input_size"])
    model = build_model(space_of(arch, arch["num_classes"], input_size[0]), arch)
    try:
        model.load_state_dict(torch.load(weights, weights_only=True))
    except RuntimeError as error:
        raise ValueError(f"{weights} does not match its architecture: {str(error).splitlines()[0]}") from None
    return freeze_dynopools(model, input_size).eval()


def write_standalone(arch: dict[str, Any], weights: str | Path, output: str | Path) -> Path:
    """Write ``arch.json``, ``weights.pt``, ``model.pt`` (TorchScript) and ``model.onnx`` to
    ``output``; the scripted model's output is checked against the eager one."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = standalone_model(arch, weights)
    example = torch.randn(2, *arch["input_size"])
    scripted = torch.jit.script(model)
    with torch.no_grad():
        if not torch.allclose(scripted(example), model(example), atol=1e-5, rtol=1e-5):
            raise RuntimeError("the TorchScript model does not reproduce the eager model")
    save_architecture(arch, output / "arch.json")
    atomic_write(output / "weights.pt", lambda path: shutil.copyfile(weights, path))
    atomic_write(output / "model.pt", lambda path: torch.jit.save(scripted, str(path)))
    atomic_write(output / "model.onnx", lambda path: torch.onnx.export(
        model, (example,), str(path), input_names=["images"], output_names=["logits"], dynamo=False))
    return output


def _resolve(source: str | Path) -> Path:
    """A folder as given, or an nnictl experiment id looked up where NNI keeps experiments
    (``~/nni-experiments``, ``$NNI_EXPERIMENTS_DIR``) and under ``runs/``."""
    path = Path(source)
    if path.exists():
        return path
    roots = [Path(os.environ.get("NNI_EXPERIMENTS_DIR", Path.home() / "nni-experiments")), Path("runs")]
    for root in roots:
        found = [p for p in root.rglob(str(source)) if p.is_dir()] if root.is_dir() else []
        if found:
            return found[0]
    raise FileNotFoundError(f"{source} is neither a folder nor an experiment id found under {[str(r) for r in roots]}")


def collect_architectures(source: str | Path) -> pd.DataFrame:
    """Every exported architecture under ``source`` (a search output, a trial folder, a whole
    nnictl experiment folder, or an experiment id): one row each with its metrics and folder."""
    source = _resolve(source)
    rows = []
    for path in sorted(source.rglob("arch.json")):
        if not (path.parent / "weights.pt").is_file():
            continue
        arch = load_architecture(path)
        rows.append({"folder": str(path.parent), "top1": arch["metrics"]["default"], "gmacs": arch["metrics"]["gmacs"],
                     "params": arch["metrics"]["params"]})
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
    """Export the best architecture under ``source`` (or the accuracy/GMACs Pareto front)."""
    table = collect_architectures(source)
    chosen = pareto_front(table) if front else table.head(1)
    output = Path(output)
    folders = []
    for index, row in enumerate(chosen.itertuples()):
        folder = Path(row.folder)
        arch = load_architecture(folder / "arch.json")
        folders.append(str(write_standalone(arch, folder / "weights.pt", output / f"{index:02d}_{folder.name}")))
    chosen = chosen.assign(export=folders)
    chosen.to_csv(output / "exported.csv", index=False)
    return chosen
