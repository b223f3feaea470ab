"""Side-by-side timings of DynOPool against the operators it replaces.

Every ratio compares two measurements taken in the same run, interleaved (A, B, A, B, ...),
median of the repeats; absolute times are printed for context only, never to compare runs.
Memory is the storage autograd keeps for the backward pass of one forward. Each row carries
the project's target ratio and whether this run met it.

    python experiments/benchmark.py                    # print the table
    python experiments/benchmark.py --write docs/benchmark.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dynopool_nas import (
    DynOPool2d,
    FixedDynOPool2d,
    GMACsCost,
    create_model,
    dynopool_layers,
    dynopoolify,
    param_groups,
)
from dynopool_nas._extension import cpu_kernel_available
from dynopool_nas._utils import atomic_write

# (input shape, memory format): the three NCHW shapes, and one in channels-last
LAYER_CASES = [((32, 64, 56, 56), torch.contiguous_format), ((8, 64, 112, 112), torch.contiguous_format),
               ((32, 256, 28, 28), torch.contiguous_format), ((32, 64, 56, 56), torch.channels_last)]
SCALES = [(0.5, 0.5), (0.43, 0.61)]
# (model, batch, image side); VGG-16 has no strided convolution, so both placements agree there
MODELS = [
    ("vgg16_cifar", 64, 32), ("resnet50_cifar", 16, 32), ("mobilenetv2_cifar", 32, 32),
    ("vgg16_bn", 2, 224), ("resnet50", 2, 224), ("mobilenet_v2", 4, 224),
]
PLACEMENTS = {"vgg16": ("after",), "resnet50": ("after", "before"), "mobilenet": ("after", "before")}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``baseline`` and ``candidate``, run alternately after one warm-up each."""
    baseline(), candidate()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((baseline, times[0]), (candidate, times[1])):
            bucket.append(_timed(fn))
    return statistics.median(times[0]), statistics.median(times[1])


def _forward_backward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        op(x).float().sum().backward()  # float(): a half-precision output sums in float32

    return step


def _forward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            op(x)

    return step


def _training_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD step. The scales' gradient is computed but their learning rate is 0, so every
    timed step runs at the initial scales (one step at lr 1e-3 already moves a 224x224 map by
    a few pixels, off the pixel-aligned fast path)."""
    optimizer = torch.optim.SGD(param_groups(model, lr=1e-3, alpha_lr=0.0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


NOTES = [
    "Notes:",
    "",
    "- `max_pool2d` and `adaptive_max_pool2d` on NCHW tensors run PyTorch's generic CPU kernels; on channels-last "
    "tensors they are vectorized and several times faster, which the channels-last rows compare against.",
    "- Training steps update the weights with SGD; the scales get their gradient but a learning rate of 0, so "
    "every timed step runs at the initial scales.",
    "- `after` is the thesis's conversion (eq. 5.2): each formerly strided convolution runs at stride 1, at full "
    "resolution, before its DynOPool, which adds MACs (ResNet-50 +34%, MobileNetV2 +17% at 224x224) that no "
    "pooling kernel can remove. `before` (`dynopoolify(placement='before')`) resizes in front of the "
    "convolution and keeps the human model's MACs. VGG-16 has no strided convolution.",
]
Row = tuple[str, str, float, float, str, float]  # what, baseline, its value, DynOPool's, unit, target ratio
STEP_TARGETS = {"vgg16": 1.05, "resnet50": 1.05, "mobilenet": 1.15}


def layer_rows(repeats: int) -> list[Row]:
    rows = []
    for shape, memory_format in LAYER_CASES:
        x = torch.randn(shape).to(memory_format=memory_format).requires_grad_(True)
        layout = ", channels-last" if memory_format == torch.channels_last else ""
        for scale in SCALES:
            layer = DynOPool2d(scale)
            out_size = tuple(round(s * r) for s, r in zip(shape[-2:], scale))
            if scale == (0.5, 0.5):
                name, baseline = "max_pool2d(2)", lambda t: F.max_pool2d(t, 2)
            else:
                name, baseline = f"adaptive_max_pool2d{out_size}", lambda t, o=out_size: F.adaptive_max_pool2d(t, o)
            label = f"DynOPool2d r={scale} on {tuple(shape)}{layout}"
            for mode, wrap in (("forward+backward", _forward_backward), ("forward", _forward)):
                base, cand = interleaved(wrap(baseline, x), wrap(layer, x), repeats)
                target = 1.5 if wrap is _forward_backward else 1.3
                rows.append((f"{label}, {mode}", name, base * 1e3, cand * 1e3, "ms", target))
            fixed = FixedDynOPool2d(out_size, "max")
            base, cand = interleaved(_forward(baseline, x), _forward(fixed, x), repeats)
            rows.append((f"FixedDynOPool2d{out_size} on {tuple(shape)}{layout}, forward", name, base * 1e3,
                         cand * 1e3, "ms", 1.1))
    return rows


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes that autograd keeps for the backward pass of one forward (each storage once): the
    part of training memory that a resizing layer changes."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(storages.values())


def _family(name: str, table: dict[str, object]) -> object:
    return next(value for prefix, value in table.items() if name.startswith(prefix))


def model_rows(repeats: int) -> list[Row]:
    rows = []
    for (name, batch, size), placement in ((m, p) for m in MODELS for p in _family(m[0], PLACEMENTS)):
        placements = _family(name, PLACEMENTS)
        torch.manual_seed(0)
        human = create_model(name, num_classes=100)
        converted = dynopoolify(human, placement=placement)
        x = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 100, (batch,))
        steps = (_training_step(human, x, labels), _training_step(converted, x, labels))
        initial_scales = [layer.alpha.detach().clone() for _, layer in dynopool_layers(converted)]
        base, cand = interleaved(*steps, repeats)
        if not all(torch.equal(a, layer.alpha) for a, (_, layer) in zip(initial_scales, dynopool_layers(converted))):
            raise RuntimeError(f"{name}: the scales moved while timing; the rows would not be at the initial scales")
        what = f"{name}{f' ({placement})' if len(placements) > 1 else ''}, batch {batch} at {size}x{size}"
        target = _family(name, STEP_TARGETS)
        rows.append((f"{what}: training step", "human model", base * 1e3, cand * 1e3, "ms", target))
        memory = (saved_activation_bytes(human, x), saved_activation_bytes(converted, x))
        rows.append((f"{what}: tensors saved for backward", "human model", memory[0] / 1e6, memory[1] / 1e6, "MB",
                     1.1))
        cost = GMACsCost.from_model(converted, tuple(x.shape[1:]))
        bookkeeping = statistics.median(_timed(lambda c=cost: c().backward()) for _ in range(repeats))
        rows.append((f"{what}: GMACs loss and its backward", "DynOPool training step", cand * 1e3,
                     bookkeeping * 1e3, "ms", 0.01))
    return rows


def render(rows: list[Row], command: str) -> str:
    lines = [
        "# DynOPool benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Regenerate with `{command}`. Ratios are medians of interleaved runs in one process.",
        f"DynOPool's CPU kernels: {'compiled' if cpu_kernel_available() else 'not available, PyTorch fallback'}.",
        "",
        "| what | baseline | baseline | DynOPool | ratio | target | met |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for what, baseline, base, cand, unit, target in rows:
        ratio = cand / base
        lines.append(f"| {what} | {baseline} | {base:.2f} {unit} | {cand:.2f} {unit} | {ratio:.3g}x | "
                     f"<= {target}x | {'yes' if ratio <= target else 'no'} |")
    return "\n".join([*lines, "", *NOTES]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per layer row")
    parser.add_argument("--model-repeats", type=int, default=15,
                        help="timed training steps per model row (small batches on 2 cores are noisy)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--write", type=Path, help="also write the Markdown table here (atomically)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = layer_rows(args.repeats) + ([] if args.skip_models else model_rows(args.model_repeats))
    table = render(rows, "python " + " ".join(sys.argv))
    print(table)
    if args.write:
        atomic_write(args.write, lambda path: path.write_text(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
