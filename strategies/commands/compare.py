"""``dynopool-nas compare``: discovered architectures against timm's EfficientNet-B0 and -B1,
trained under one recipe on one data set (thesis Table 5.3), once per seed; every model's GMACs,
parameters and latency of one image, predicted (:class:`~dynopool_nas.LatencyCost`) and
measured (:func:`~dynopool_nas.measure_model`) on one device."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from dynopool_nas import (
    GMACsCost,
    LatencyCost,
    LatencyTable,
    count_macs,
    freeze_dynopools,
    load_dataset,
    measure_model,
)
from dynopool_nas._checks import train_subset
from dynopool_nas._utils import atomic_folder
from dynopool_nas.train import evaluate, fit
from dynopool_nas.viz import plot_tradeoff
from search_spaces.arch import build_model, load_architecture
from search_spaces.registry import space_of

from .export import RESULT, load_result
from .settings import BASELINES, CompareSettings

__all__ = ["candidate_models", "is_at_chance", "latency_ms", "run_compare"]

COMPARISON = "comparison.csv"
"""The table a comparison writes; it also marks a folder a comparison may replace."""


def latency_ms(model: nn.Module, input_size: tuple[int, int, int], table: LatencyTable) -> dict[str, float]:
    """``model``'s latency of one image (inference) on the device of ``table``, in milliseconds:
    ``'latency_ms_predicted'``, its :class:`~dynopool_nas.LatencyCost` in ``table`` (a model
    whose DynOPools are frozen is priced at its one size), and ``'latency_ms_measured'``, end to
    end (:func:`~dynopool_nas.measure_model`, at the table's thread count). Moves ``model`` to
    that device."""
    model.to(table.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LatencyCost: the model has no DynOPool2d", category=UserWarning)
        with torch.no_grad():
            predicted = float(LatencyCost.from_model(model, input_size, table)())
    return {"latency_ms_predicted": predicted,
            "latency_ms_measured": measure_model(model, input_size, threads=table.threads)}


def is_at_chance(top1: float, num_classes: int, val_images: int) -> bool:
    """Whether a validation top-1 is within three binomial standard deviations of guessing
    (``1 / num_classes`` on ``val_images`` images), i.e. not shown to be better than chance."""
    chance = 1.0 / num_classes
    return top1 < chance + 3.0 * math.sqrt(chance * (1.0 - chance) / max(val_images, 1))


def _architecture(source: str | Path) -> tuple[str, dict[str, Any]]:
    """A discovered architecture's label and document; an ``arch.json`` with ``weights.pt``
    beside it is read only if the two were written together."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if all((folder / name).is_file() for name in RESULT):
        return f"dynopool:{folder.name}", load_result(folder)
    return f"dynopool:{folder.name}", load_architecture(path / "arch.json" if path.is_dir() else path)


def candidate_models(
    architectures: Sequence[tuple[str, dict[str, Any]]],
    num_classes: int,
    input_size: tuple[int, int, int],
    *,
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
) -> dict[str, nn.Module]:
    """The models a comparison trains, freshly initialized from ``seed``: the timm
    ``baselines`` and every ``(label, architecture)`` with its DynOPools frozen at the sizes
    they learned (:func:`~dynopool_nas.freeze_dynopools`), all of whose weights train."""
    in_chans = input_size[0]
    models: dict[str, nn.Module] = {}
    for name in baselines:
        torch.manual_seed(seed)
        models[name] = timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    for label, arch in architectures:
        torch.manual_seed(seed)
        try:
            space = space_of(arch, num_classes, in_chans)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
        models[label] = freeze_dynopools(build_model(space, arch), input_size)
    return models


def _train(model: nn.Module, train: Any, val: Any, input_size: tuple[int, int, int], *, seed: int, epochs: int,
           lr: float, batch_size: int) -> float:
    """Validation top-1 of ``model`` after training it with the comparison's recipe: SGD
    (Nesterov momentum 0.9, cosine schedule) for ``epochs``, data order drawn from ``seed``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a model without DynOPool2d has a constant cost
        cost = GMACsCost.from_model(model, input_size)
    torch.manual_seed(seed)
    history = fit(model, DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
                  DataLoader(val, batch_size=256), cost, epochs=epochs, lr=lr, progress=False)
    return history[-1].val_accuracy


def _summary(runs: pd.DataFrame, num_classes: int, val_images: int) -> pd.DataFrame:
    """One row per model: validation top-1 mean, standard deviation and number of seeds, whether
    it is at chance level, test top-1 mean and standard deviation where the data set has a test
    split, and the model's GMACs, parameters and latency (predicted and measured)."""
    tested = {"test_top1_mean": ("test_top1", "mean"), "test_top1_std": ("test_top1", "std")} \
        if "test_top1" in runs else {}
    table = runs.groupby("model", sort=False).agg(
        top1_mean=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"), **tested, gmacs=("gmacs", "first"),
        params=("params", "first"), latency_ms_predicted=("latency_ms_predicted", "first"),
        latency_ms_measured=("latency_ms_measured", "first"),
    ).reset_index()
    at_chance = [is_at_chance(top1, num_classes, val_images) for top1 in table["top1_mean"]]
    return table.assign(at_chance=at_chance)


def _markdown(table: pd.DataFrame, recipe: str, num_classes: int, val_images: int) -> str:
    """comparison.md: the recipe, the table (top-1 as mean +- std over seeds) and what "at chance" means."""
    def spread(kind: str) -> list[str]:
        return [f"{100 * m:.1f} ± {100 * s:.1f}" if n > 1 else f"{100 * m:.1f}"
                for m, s, n in zip(table[f"{kind}_mean"], table[f"{kind}_std"], table["n"])]

    tested = {"test top-1 (%)": spread("test_top1")} if "test_top1_mean" in table else {}
    shown = pd.DataFrame({
        "model": table["model"],
        "validation top-1 (%)": spread("top1"),
        **tested,
        "seeds": table["n"],
        "at chance": ["**yes**" if flag else "" for flag in table["at_chance"]],
        "GMACs": table["gmacs"], "params": table["params"],
        "latency predicted (ms)": table["latency_ms_predicted"], "latency measured (ms)": table["latency_ms_measured"],
    })
    return (f"Recipe: {recipe}.\n\n" + shown.to_markdown(index=False, floatfmt=".4g") + "\n\n"
            f"At chance: top-1 not above chance ({1 / num_classes:.1%}, 1/{num_classes} classes) by three binomial "
            f"standard deviations on the {val_images} validation images; such a number says nothing about the "
            "architecture (too few epochs or images for it to learn).\n")


def _device_words(table: LatencyTable) -> str:
    """Where latency was predicted and measured, in words."""
    fingerprint = table.fingerprint
    where = f"{fingerprint['name']}" if table.device.type == "cuda" else f"{fingerprint['threads']} CPU threads"
    return f"{where}, predicted (latency table) and measured"


def run_compare(settings: CompareSettings, *, latency_table: LatencyTable | None = None) -> pd.DataFrame:
    """Train the baselines (EfficientNet-B0, -B1) and every architecture (an ``arch.json`` or a
    folder holding one) of ``settings`` from scratch with the same recipe (SGD, cosine schedule,
    ``settings.epochs``), once per seed (initialization and data order; the validation split is
    the same for all); the discovered ones keep their learned feature-map sizes (DynOPools
    frozen). Write to ``settings.output``, which is replaced as a whole: ``comparison.csv``
    (top-1 mean, std and number of seeds, whether it is at chance level, GMACs, parameters,
    latency of one image predicted and measured), ``comparison_runs.csv`` (every run),
    ``comparison.md`` and ``comparison.png`` (both with the recipe); return the table.

    Latency (:func:`latency_ms`) is predicted and measured on the device of ``latency_table``, by
    default the cached :class:`~dynopool_nas.LatencyTable` of the CPU at the current thread
    count, which measures the layers it does not hold yet."""
    discovered = [_architecture(source) for source in settings.architectures]
    seeds, epochs, lr, batch_size = list(settings.seeds), settings.epochs, settings.lr, settings.batch_size
    dataset, image_size = settings.dataset, settings.image_size
    if latency_table is None:
        latency_table = LatencyTable("cpu")
    with atomic_folder(settings.output, marker=COMPARISON) as building:
        splits = load_dataset(dataset, image_size=image_size, root=settings.data_dir, seed=seeds[0])
        train = train_subset(splits.train, settings.max_train_images, batch_size)
        input_size = (splits.in_chans, image_size, image_size)
        rows: list[dict[str, Any]] = []
        measured: dict[str, dict[str, Any]] = {}
        for seed in seeds:
            models = candidate_models(discovered, splits.num_classes, input_size, baselines=settings.baselines,
                                      seed=seed)
            for name, model in models.items():
                top1 = _train(model, train, splits.val, input_size, seed=seed, epochs=epochs, lr=lr,
                              batch_size=batch_size)
                measured.setdefault(name, {
                    "gmacs": count_macs(model, input_size).gmacs, "params": sum(p.numel() for p in model.parameters()),
                    **latency_ms(model, input_size, latency_table),
                })
                tested = {} if splits.test is None else {"test_top1": evaluate(model, DataLoader(splits.test, 512))}
                rows.append({"model": name, "seed": seed, "top1": top1, **tested, **measured[name]})
        runs = pd.DataFrame(rows)
        table = _summary(runs, splits.num_classes, len(splits.val))
        recipe = (f"{dataset} at {image_size}x{image_size}, {len(train)} training images, {epochs} epochs, SGD lr {lr} "
                  f"(Nesterov, cosine), batch {batch_size}, seeds {seeds}; latency: one image, "
                  f"{_device_words(latency_table)}")
        table.to_csv(building / COMPARISON, index=False)
        runs.to_csv(building / "comparison_runs.csv", index=False)
        (building / "comparison.md").write_text(_markdown(table, recipe, splits.num_classes, len(splits.val)))
        plot_tradeoff(
            [{"gmacs": r.gmacs, "top1": r.top1_mean, "top1_std": 0.0 if r.n < 2 else r.top1_std,
              "label": f"{r.model} (at chance)" if r.at_chance else r.model} for r in table.itertuples()],
            building / "comparison.png", chance=1.0 / splits.num_classes, note=recipe,
        )
    return table
