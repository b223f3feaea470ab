"""The metric dict a search or a trial reports to NNI."""

from __future__ import annotations

from typing import Any

__all__ = ["trial_metrics"]


def trial_metrics(
    top1: float, gmacs: float, params: int, sizes: dict[str, tuple[int, int]], *, latency_ms: float | None = None
) -> dict[str, Any]:
    """``'default'`` (validation top-1, what the tuner optimizes), ``'gmacs'``, ``'params'``,
    ``'latency_ms'`` (predicted, on the device its latency table was measured on) when given, and
    every DynOPool's feature-map size as ``'<name>.h'`` / ``'<name>.w'``, shown beside it."""
    metrics: dict[str, Any] = {"default": float(top1), "gmacs": float(gmacs), "params": int(params)}
    if latency_ms is not None:
        metrics["latency_ms"] = float(latency_ms)
    for name, (height, width) in sizes.items():
        metrics[f"{name}.h"], metrics[f"{name}.w"] = int(height), int(width)
    return metrics
