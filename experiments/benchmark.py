"""Side-by-side timings of DynOPool against the operators it replaces.

Every ratio compares two measurements taken in the same run, interleaved (A, B, A, B, ...),
median of the repeats; absolute times are printed for context only, never to compare runs.

    python experiments/benchmark.py                    # print the table
    python experiments/benchmark.py --write docs/benchmark.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dynopool_nas import DynOPool2d, create_model, dynopoolify

LAYER_SHAPES = [(32, 64, 56, 56), (8, 64, 112, 112), (32, 256, 28, 28)]
SCALES = [(0.5, 0.5), (0.43, 0.61)]
MODELS = [("vgg16_cifar", 64, 32), ("resnet50_cifar", 16, 32), ("mobilenetv2_cifar", 32, 32)]


def interleaved(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``baseline`` and ``candidate``, run alternately after one warm-up each."""
    baseline(), candidate()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _forward_backward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        op(x).sum().backward()

    return step


def _forward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            op(x)

    return step


def _training_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


def layer_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    rows = []
    for shape in LAYER_SHAPES:
        x = torch.randn(shape, requires_grad=True)
        for scale in SCALES:
            layer = DynOPool2d(scale)
            out_size = tuple(round(s * r) for s, r in zip(shape[-2:], scale))
            if scale == (0.5, 0.5):
                name, baseline = "max_pool2d(2)", lambda t: F.max_pool2d(t, 2)
            else:
                name, baseline = f"adaptive_max_pool2d{out_size}", lambda t, o=out_size: F.adaptive_max_pool2d(t, o)
            label = f"DynOPool2d r={scale} on {tuple(shape)}"
            for mode, wrap in (("forward+backward", _forward_backward), ("forward", _forward)):
                base, cand = interleaved(wrap(baseline, x), wrap(layer, x), repeats)
                rows.append((f"{label}, {mode}", name, base, cand))
    return rows


def model_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    rows = []
    for name, batch, size in MODELS:
        torch.manual_seed(0)
        human = create_model(name, num_classes=100)
        converted = dynopoolify(human)
        x = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 100, (batch,))
        base, cand = interleaved(_training_step(human, x, labels), _training_step(converted, x, labels), repeats)
        rows.append((f"{name} training step, batch {batch} at {size}x{size}", "human model", base, cand))
    return rows


def render(rows: list[tuple[str, str, float, float]], command: str) -> str:
    lines = [
        "# DynOPool benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Regenerate with `{command}`. Ratios are medians of interleaved runs in one process.",
        "",
        "| what | baseline | baseline ms | DynOPool ms | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for what, baseline, base, cand in rows:
        lines.append(f"| {what} | {baseline} | {base * 1e3:.2f} | {cand * 1e3:.2f} | {cand / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--write", type=Path, help="also write the Markdown table here (atomically)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = layer_rows(args.repeats) + ([] if args.skip_models else model_rows(args.repeats))
    table = render(rows, "python " + " ".join(sys.argv))
    print(table)
    if args.write:
        tmp = args.write.with_suffix(args.write.suffix + ".tmp")
        tmp.write_text(table)
        os.replace(tmp, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
