"""``dynopool-nas compare``: discovered architectures against timm's EfficientNet-B0 and -B1,
trained under one recipe on one data set (thesis Table 5.3)."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dynopool_nas import GMACsCost, count_macs, freeze_dynopools, load_dataset
from dynopool_nas._utils import atomic_write
from dynopool_nas.train import fit
from dynopool_nas.viz import plot_tradeoff

from .arch import build_model, load_architecture
from .search import space_of

__all__ = ["BASELINES", "cpu_latency", "run_compare"]

BASELINES = ("efficientnet_b0", "efficientnet_b1")


def cpu_latency(model: nn.Module, input_size: tuple[int, int, int], repeats: int = 20) -> float:
    """Median seconds of one forward pass of a single image on the CPU."""
    model = model.eval().cpu()
    x = torch.randn(1, *input_size)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_compare(
    architectures: list[str | Path],
    output: str | Path,
    *,
    dataset: str = "digits",
    epochs: int = 5,
    image_size: int = 32,
    batch_size: int = 64,
    lr: float = 0.05,
    data_dir: str | None = None,
    max_train_images: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Train EfficientNet-B0, -B1 and every architecture (an ``arch.json`` or a folder holding one)
    from scratch with the same recipe (SGD, cosine schedule, ``epochs``); the discovered ones keep
    their learned feature-map sizes (DynOPools frozen). Write ``comparison.csv``, ``comparison.md``
    and ``comparison.png`` to ``output`` and return the table."""
    splits = load_dataset(dataset, image_size=image_size, root=data_dir, seed=seed)
    train = splits.train if max_train_images is None else Subset(splits.train, range(max_train_images))
    input_size = (splits.in_chans, image_size, image_size)
    candidates: dict[str, nn.Module] = {}
    for name in BASELINES:
        torch.manual_seed(seed)
        candidates[name] = timm.create_model(name, num_classes=splits.num_classes, in_chans=splits.in_chans)
    for source in architectures:
        path = Path(source)
        arch = load_architecture(path / "arch.json" if path.is_dir() else path)
        torch.manual_seed(seed)
        try:
            space = space_of(arch, splits.num_classes, splits.in_chans)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        model = build_model(space, arch)
        label = f"dynopool:{path.parent.name if path.is_file() else path.name}"
        candidates[label] = freeze_dynopools(model, input_size)
    rows = []
    for name, model in candidates.items():
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cost = GMACsCost.from_model(model, input_size)
        history = fit(model, DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
                      DataLoader(splits.val, batch_size=256), cost, epochs=epochs, lr=lr, progress=False)
        rows.append({
            "model": name,
            "top1": history[-1].val_accuracy,
            "gmacs": count_macs(model, input_size).gmacs,
            "params": sum(p.numel() for p in model.parameters()),
            "cpu_latency_ms": cpu_latency(model, input_size) * 1e3,
        })
    table = pd.DataFrame(rows)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / "comparison.csv", lambda p: table.to_csv(p, index=False))
    atomic_write(output / "comparison.md", lambda p: p.write_text(
        f"Recipe: {dataset} at {image_size}x{image_size}, {epochs} epochs, SGD lr {lr}, batch {batch_size}, "
        f"seed {seed}; latency: one image, {torch.get_num_threads()} CPU threads.\n\n"
        + table.to_markdown(index=False, floatfmt=".4g") + "\n"))
    plot_tradeoff([{"gmacs": r.gmacs, "top1": r.top1, "label": r.model} for r in table.itertuples()],
                  output / "comparison.png")
    return table
