"""Figures of the thesis, for any model: the feature-map sizes per layer (Figure 5.1) and the
aggregation range of one output bin (Figure 5.3)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._utils import atomic_write

__all__ = ["aggregation_range", "plot_aggregation_range", "plot_feature_maps", "plot_tradeoff"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: object, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    finally:
        _pyplot().close(figure)


def plot_feature_maps(
    models: Mapping[str, Mapping[str, tuple[int, int]]], path: str | Path, input_size: tuple[int, int] | None = None
) -> Path:
    """One row per model, one rectangle per resizer drawn to scale (height x width), labelled
    with its size (thesis Figure 5.1). ``models`` maps a model's label to its
    ``{layer name: (h, w)}`` sizes, e.g. from :meth:`GMACsCost.feature_map_sizes`."""
    if not models:
        raise ValueError("plot_feature_maps needs at least one model's sizes")
    pyplot = _pyplot()
    columns = max(len(sizes) for sizes in models.values()) + (input_size is not None)
    largest = max([max(max(s) for s in sizes.values()) for sizes in models.values() if sizes]
                  + [max(input_size) if input_size else 1])
    figure, axes = pyplot.subplots(len(models), 1, figsize=(1.6 * columns + 1.5, 1.8 * len(models)), squeeze=False)
    for axis, (label, sizes) in zip(axes[:, 0], models.items()):
        entries = ([("input", input_size)] if input_size else []) + list(sizes.items())
        for column, (name, (height, width)) in enumerate(entries):
            scale = 0.9 / largest
            axis.add_patch(pyplot.Rectangle((column + 0.5 - width * scale / 2, 0.5 - height * scale / 2),
                                            width * scale, height * scale, fill=False, linewidth=1.5))
            axis.text(column + 0.5, -0.05, f"{name}\n{height}x{width}", ha="center", va="top", fontsize=7)
        axis.set_xlim(0, columns)
        axis.set_ylim(-0.35, 1)
        axis.set_aspect("equal")
        axis.axis("off")
        axis.set_title(label, fontsize=9, loc="left")
    figure.tight_layout()
    return _save(figure, path)


def aggregation_range(resizer: nn.Module, in_size: tuple[int, int], cell: tuple[int, int]) -> Tensor:
    """How much each input pixel contributes to output ``cell`` of ``resizer`` (thesis Figure
    5.3): the gradient of that output on a constant input, so a bilinear tap counts by its weight
    and a max or mean by the query points it selects or averages."""
    x = torch.ones(1, 1, *in_size, requires_grad=True)
    out = resizer(x)
    row, col = cell
    if not (0 <= row < out.shape[-2] and 0 <= col < out.shape[-1]):
        raise ValueError(f"cell {cell} is outside the {tuple(out.shape[-2:])} output")
    out[0, 0, row, col].backward()
    return x.grad[0, 0]


def plot_aggregation_range(
    ranges: Mapping[str, Tensor], path: str | Path, output_sizes: Mapping[str, tuple[int, int]] | None = None
) -> Path:
    """Side-by-side heat maps of :func:`aggregation_range` results, each pixel labelled with its
    contribution, the output grid overlaid when ``output_sizes`` gives it."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, len(ranges), figsize=(4 * len(ranges), 4), squeeze=False)
    for axis, (label, contribution) in zip(axes[0], ranges.items()):
        values = contribution.detach().numpy()
        axis.imshow(values, cmap="Oranges")
        for (row, col), value in ((rc, values[rc]) for rc in zip(*values.nonzero())):
            axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6)
        if output_sizes and label in output_sizes:
            height, width = output_sizes[label]
            for k in range(1, height):
                axis.axhline(k * values.shape[0] / height - 0.5, color="saddlebrown", linewidth=0.8)
            for k in range(1, width):
                axis.axvline(k * values.shape[1] / width - 0.5, color="saddlebrown", linewidth=0.8)
        axis.set_title(label, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return _save(figure, path)


def plot_tradeoff(
    points: Sequence[Mapping[str, object]],
    path: str | Path,
    *,
    chance: float | None = None,
    note: str | None = None,
    full_axis: bool = True,
    metric: str = "validation top-1",
) -> Path:
    """Accuracy against GMACs (thesis Figure 5.2): one marker per point (keys ``gmacs``,
    ``top1`` in [0, 1], optional ``top1_std`` drawn as an error bar, ``label`` written beside
    it); only points of the same named ``series`` (one model under several settings) are joined
    by a line, in order of GMACs. The accuracy axis runs from 0 to 100%, with ``chance`` (a
    fraction, e.g. 1/num_classes) drawn as a dashed line; ``note`` (the recipe) is written under
    the plot. ``full_axis=False`` fits the accuracy axis to the points instead (differences of a
    point or two are visible; the axis does not start at 0). ``metric`` names the accuracy."""
    return _save(_tradeoff_figure(points, chance, note, full_axis, metric), path)


def _tradeoff_figure(points: Sequence[Mapping[str, object]], chance: float | None, note: str | None,
                     full_axis: bool = True, metric: str = "validation top-1") -> Any:
    """The figure :func:`plot_tradeoff` saves."""
    if not points:
        raise ValueError("plot_tradeoff needs at least one point")
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6.4, 4.6 if note else 4))
    series: dict[str, list[Mapping[str, object]]] = {}
    for point in points:
        series.setdefault(str(point.get("series", "")), []).append(point)
    for name, members in series.items():
        members = sorted(members, key=lambda p: float(p["gmacs"]))
        xs, ys = [float(p["gmacs"]) for p in members], [100 * float(p["top1"]) for p in members]
        errors = [100 * float(p.get("top1_std", 0.0)) for p in members]
        joined = bool(name) and len(members) > 1
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, linestyle="-" if joined else "none",
                      label=name or None)
        for x, y, point in zip(xs, ys, members):
            if point.get("label"):
                axes.annotate(str(point["label"]), (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    if chance is not None:
        axes.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.1%})")
    if full_axis:
        axes.set_ylim(0, 100)
    axes.set_xlabel("GMACs per image")
    axes.set_ylabel(f"{metric} (%)")
    axes.grid(alpha=0.3)
    if any(series) or chance is not None:
        axes.legend(fontsize=8)
    if note:
        figure.text(0.01, 0.01, "\n".join(textwrap.wrap(note, 110)), fontsize=6.5, va="bottom")
    figure.tight_layout(rect=(0, 0.08 if note else 0, 1, 1))
    return figure
