"""The GPU check of DynOPool: run on a machine with CUDA; CI never depends on it.

1. Correctness on CUDA, on both paths (the Triton kernels and PyTorch operators): the layer's
   values and gradients (input and alpha) equal the CPU layer's, float64 and float32, NCHW and
   channels-last; the Triton kernels equal the CPU kernels (values, winner codes, gradients) in
   float32, float16 and bfloat16 and give the same bits twice (no atomics); float16/bfloat16
   autocast runs and tracks float32.
2. Timings, every ratio from one interleaved run (A, B, A, B, ..., median of the repeats, each call
   CUDA-synchronized): DynOPool2d on the Triton kernels and on PyTorch operators against
   max_pool2d (r = 1/2) or adaptive_max_pool2d to the same size, forward and forward+backward,
   float32 and AMP (bfloat16, float16 maps); training steps of converted VGG-16-BN, ResNet-50 and
   MobileNetV2 at 224x224 against the human models (both placements where they differ), float32
   and bfloat16 autocast.

The table, with each row's target and whether the Triton path met it, goes to
docs/benchmark-cuda.md (atomically; ``--quick`` writes only with ``--write``).

    python experiments/device_check.py            # meant to take under 5 minutes on one H200
    python experiments/device_check.py --quick    # one layer shape, ResNet-50 at batch 8, 5 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmark import PLACEMENTS, STEP_TARGETS, _family, _forward, _forward_backward, _training_step, interleaved

from dynopool_nas import DynOPool2d, _extension, _triton, create_model, dynopool_layers, dynopoolify, ops
from dynopool_nas._utils import atomic_write

SCALES = [(0.5, 0.5), (0.43, 0.61), (1.7, 0.8)]  # pixel-aligned, off the grid, upsampling
TIMED_SCALES = [(0.5, 0.5), (0.43, 0.61)]
LAYER_SHAPES = [(32, 64, 56, 56), (8, 64, 112, 112), (32, 256, 28, 28)]  # the CPU benchmark's
MODELS = [("vgg16_bn", 32, 224), ("resnet50", 32, 224), ("mobilenet_v2", 64, 224)]
CHECK_SHAPE = (4, 16, 30, 26)  # the layer against the CPU layer
KERNEL_CASES = [((56, 56), (28, 28)), ((30, 26), (13, 16)), ((15, 13), (25, 10))]  # (H, W) -> (H_out, W_out)
KERNEL_BATCH = (4, 8)
PRECISIONS = {"float32": None, "AMP bfloat16": torch.bfloat16, "AMP float16": torch.float16}
TRITON_KERNELS = ops.Kernels(_triton.max_forward, _triton.max_backward)
DEVICE = "cuda"
# what, baseline, {path: (baseline ms, DynOPool ms) from one interleaved run}, target ratio
Row = tuple[str, str, dict[str, tuple[float, float]], float]


# ---------------------------------------------------------------------------------------------
# Which kernels the layer runs on


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Within this block max DynOPool on CUDA runs on ``'triton'`` kernels or ``'pytorch'``
    operators, whatever the dispatch in :mod:`dynopool_nas.ops` would choose by itself."""
    original = ops._kernels_for

    def chosen(x: torch.Tensor, aggregation: str) -> ops.Kernels | None:
        if x.device.type != DEVICE:
            return original(x, aggregation)
        if name == "triton" and aggregation == "max" and _triton.available(x) and not torch.compiler.is_compiling():
            return TRITON_KERNELS
        return None

    ops._kernels_for = chosen
    try:
        yield
    finally:
        ops._kernels_for = original


def dispatched_backend() -> str:
    """What the layer runs on CUDA by default: the Triton kernels or PyTorch operators."""
    kernels = ops._kernels_for(torch.zeros(1, 1, 4, 4, device=DEVICE), "max")
    if kernels is None:
        return "PyTorch operators"
    return "Triton kernels" if kernels.forward is _triton.max_forward else f"other kernels ({kernels.forward})"


# ---------------------------------------------------------------------------------------------
# Correctness


class Checks:
    """Correctness results, printed as they come."""

    def __init__(self) -> None:
        self.passed, self.failed = 0, []

    def add(self, ok: bool, text: str) -> None:
        print(f"{'ok      ' if ok else 'MISMATCH'} {text}")
        if ok:
            self.passed += 1
        else:
            self.failed.append(text)


def _layer_run(device: str, dtype: torch.dtype, scale, x: torch.Tensor, upstream: torch.Tensor, layout):
    layer = DynOPool2d(scale).to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype).to(memory_format=layout).requires_grad_(True)
    out = layer(x)
    (out * upstream.to(device=device, dtype=dtype)[..., : out.shape[-2], : out.shape[-1]]).sum().backward()
    return out.detach().cpu(), x.grad.cpu(), layer.alpha.grad.cpu()


def layer_matches_cpu(checks: Checks) -> None:
    """The layer on CUDA (each path) against the layer on the CPU (compiled kernels)."""
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for layout in (torch.contiguous_format, torch.channels_last):
            for scale in SCALES:
                x = torch.randn(CHECK_SHAPE, dtype=torch.float64)
                upstream = torch.randn(*CHECK_SHAPE[:2], 64, 64, dtype=torch.float64)
                cpu = _layer_run("cpu", dtype, scale, x, upstream, layout)
                for path in ("triton", "pytorch"):
                    if path == "triton" and dtype not in _triton.DTYPES:
                        continue
                    with backend(path):
                        cuda = _layer_run(DEVICE, dtype, scale, x, upstream, layout)
                    for name, a, b in zip(("values", "input grad", "alpha grad"), cpu, cuda):
                        diff = (a - b).abs().max().item()
                        checks.add(torch.allclose(a, b, atol=tol, rtol=tol),
                                   f"layer {path} {dtype} {layout} r={scale} {name} vs CPU (max diff {diff:.2e})")


def kernels_match_cpu(checks: Checks) -> None:
    """The Triton kernels against the CPU kernels, op by op, and their determinism."""
    torch.manual_seed(0)
    tolerances = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    for dtype, tol in tolerances.items():
        for layout in (torch.contiguous_format, torch.channels_last):
            for in_size, out_size in KERNEL_CASES:
                x = torch.randn(*KERNEL_BATCH, *in_size).to(dtype=dtype, memory_format=layout)
                rows, cols = (ops.query_coordinates(i, o, torch.tensor(float(o))) for i, o in zip(in_size, out_size))
                grad = torch.randn(*KERNEL_BATCH, *out_size).to(dtype)
                values, codes = _extension.max_forward(x, rows, cols)
                expected = _extension.max_backward(grad, x, codes, rows, cols, True)
                gpu = [t.to(DEVICE) for t in (x, rows, cols, grad)]
                gpu_values, gpu_codes = _triton.max_forward(*gpu[:3])
                flipped = (gpu_codes.cpu() != codes).float().mean().item()  # near-ties may round differently
                what = f"kernels {dtype} {layout} {in_size}->{out_size}"
                checks.add(torch.allclose(gpu_values.cpu().float(), values.float(), rtol=tol, atol=tol)
                           and flipped < 1e-3, f"{what} forward (codes differing: {flipped:.1e})")
                # the CPU's codes, so that both backward passes start from the same winners
                first = _triton.max_backward(gpu[3], gpu[0], codes.to(DEVICE), gpu[1], gpu[2], True)
                second = _triton.max_backward(gpu[3], gpu[0], codes.to(DEVICE), gpu[1], gpu[2], True)
                for name, got, want in zip(("input", "rows", "cols"), first, expected):
                    scale = want.abs().max().item() + 1
                    checks.add(torch.allclose(got.cpu().float(), want.float(), rtol=tol, atol=tol * scale),
                               f"{what} {name} gradient")
                checks.add(all(torch.equal(a, b) for a, b in zip(first, second)), f"{what} backward bits repeat")


def autocast_tracks_float32(checks: Checks) -> None:
    for path in ("triton", "pytorch"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), DynOPool2d((0.43, 0.61))).to(DEVICE)
        x = torch.randn(8, 3, 64, 64, device=DEVICE)
        with backend(path):
            expected = model(x)
            for dtype in (torch.float16, torch.bfloat16):
                model.zero_grad()
                with torch.autocast(DEVICE, dtype=dtype):
                    out = model(x)
                out.float().sum().backward()
                good = out.dtype == dtype and torch.allclose(out.float(), expected, atol=0.05, rtol=0.05)
                checks.add(good and bool(torch.isfinite(model[1].alpha.grad).all()), f"autocast {path} {dtype}")


# ---------------------------------------------------------------------------------------------
# Timings


def _synchronized(fn: Callable[[], object], context: Callable[[], contextlib.AbstractContextManager]) -> Callable:
    def run() -> None:
        with context():
            fn()
        torch.cuda.synchronize()

    return run


def _baseline(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """max_pool2d(2) where it gives ``size``, else adaptive_max_pool2d to ``size``."""
    if 2 * size[0] == x.shape[-2] and 2 * size[1] == x.shape[-1]:
        return F.max_pool2d(x, 2)
    return F.adaptive_max_pool2d(x, size)


def _compare(baseline: Callable, candidate: Callable, precision: torch.dtype | None, path: str,
             repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``baseline`` and ``candidate`` (on ``path``), interleaved."""
    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(DEVICE, dtype=precision) if precision is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def on_path() -> Iterator[None]:
        with autocast(), backend(path):
            yield

    base, cand = interleaved(_synchronized(baseline, autocast), _synchronized(candidate, on_path), repeats)
    return base * 1e3, cand * 1e3


def layer_rows(shapes: list[tuple[int, ...]], precisions: list[str], repeats: int) -> list[Row]:
    rows = []
    cases = [(shape, torch.contiguous_format, "float32") for shape in shapes]
    cases += [(shapes[0], torch.channels_last, "float32")]
    cases += [(shapes[0], layout, p) for p in precisions if p != "float32"
              for layout in (torch.contiguous_format, torch.channels_last)]
    for shape, layout, precision in cases:
        dtype = PRECISIONS[precision] or torch.float32
        x = torch.randn(shape, device=DEVICE, dtype=dtype).to(memory_format=layout).requires_grad_(True)
        for scale in TIMED_SCALES:
            layer = DynOPool2d(scale).to(DEVICE)
            size = tuple(round(s * r) for s, r in zip(shape[-2:], scale))
            name = "max_pool2d(2)" if scale == (0.5, 0.5) else f"adaptive_max_pool2d{size}"
            layout_name = ", channels-last" if layout == torch.channels_last else ""
            for mode, wrap, target in (("forward+backward", _forward_backward, 1.5), ("forward", _forward, 1.3)):
                results = {}
                for path in ("triton", "pytorch"):
                    base, cand = _compare(wrap(lambda t, s=size: _baseline(t, s), x), wrap(layer, x),
                                          PRECISIONS[precision], path, repeats)
                    results[path] = (base, cand)
                what = f"DynOPool2d r={scale} on {shape}{layout_name}, {precision}, {mode}"
                rows.append((what, name, results, target))
                print(_row_text(rows[-1]))
    return rows


def model_rows(models: list[tuple[str, int, int]], precisions: list[str], repeats: int) -> list[Row]:
    rows = []
    for name, batch, side in models:
        for placement in _family(name, PLACEMENTS):
            torch.manual_seed(0)
            human = create_model(name, num_classes=1000).to(DEVICE)
            converted = dynopoolify(create_model(name, num_classes=1000), placement=placement).to(DEVICE)
            x = torch.randn(batch, 3, side, side, device=DEVICE)
            labels = torch.randint(0, 1000, (batch,), device=DEVICE)
            initial = [layer.alpha.detach().clone() for _, layer in dynopool_layers(converted)]
            for precision in precisions:
                if precision == "AMP float16":
                    continue  # float16 training needs a gradient scaler; bfloat16 stands for AMP here
                results = {}
                for path in ("triton", "pytorch"):
                    steps = (_training_step(human, x, labels), _training_step(converted, x, labels))
                    results[path] = _compare(*steps, PRECISIONS[precision], path, repeats)
                placed = f" ({placement})" if len(_family(name, PLACEMENTS)) > 1 else ""
                what = f"{name}{placed}, batch {batch} at {side}x{side}, {precision}: training step"
                rows.append((what, "human model", results, _family(name, STEP_TARGETS)))
                print(_row_text(rows[-1]))
            if not all(torch.equal(a, layer.alpha) for a, (_, layer) in zip(initial, dynopool_layers(converted))):
                raise RuntimeError(f"{name}: the scales moved while timing; the rows are not at the initial scales")
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE


def _row_text(row: Row) -> str:
    what, baseline, results, target = row
    cells = "; ".join(f"{path} {cand:.3f} ms vs {base:.3f} ms = {cand / base:.2f}x"
                      for path, (base, cand) in results.items())
    return f"{what} against {baseline}: {cells} (target <= {target}x)"


NOTES = [
    "Notes:",
    "",
    "- Each ratio is DynOPool's median time over the baseline's, the two measured alternately in the same run "
    "(the baseline column shows the Triton comparison's baseline). Times are wall-clock per call, each call "
    "followed by `torch.cuda.synchronize()`, so they include Python and kernel-launch overhead, as eager "
    "training pays it.",
    "- The Triton path: forward, coordinate gradients with per-tile partial sums added by PyTorch in a fixed "
    "order, and the input gradient gathered per input pixel (deterministic, no atomics). The PyTorch path: "
    "query grid by `index_select` and blends, `max_pool2d` with indices, a recomputing backward.",
    "- AMP rows feed bfloat16/float16 maps under `torch.autocast` (what a convolution hands DynOPool there). "
    "Training steps use SGD with the scales' learning rate at 0, so every step runs at the initial scales; "
    "float16 training steps are left out (they need a gradient scaler).",
    "- `after` is the thesis's conversion (eq. 5.2), which adds MACs to ResNet-50 (+34%) and MobileNetV2 "
    "(+17%) that no pooling kernel can remove; `before` keeps the human model's MACs.",
]


def render(rows: list[Row], checks: Checks, command: str) -> str:
    triton_version = getattr(sys.modules.get("triton"), "__version__", "not installed")
    lines = [
        "# DynOPool on CUDA",
        "",
        f"Device: {_device_name()}, torch {torch.__version__}, triton {triton_version}, "
        f"Python {platform.python_version()}.",
        f"Regenerate with `{command}`. DynOPool2d dispatches on CUDA to: {dispatched_backend()}.",
        f"Correctness: {checks.passed} of {checks.passed + len(checks.failed)} checks passed"
        + (f"; failed: {'; '.join(checks.failed)}." if checks.failed else "."),
        "",
        "| what | baseline | baseline | Triton | ratio | PyTorch ops | ratio | target | met (Triton) |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for what, baseline, results, target in rows:
        (base, triton_ms), (torch_base, torch_ms) = results["triton"], results["pytorch"]
        lines.append(f"| {what} | {baseline} | {base:.3f} ms | {triton_ms:.3f} ms | {triton_ms / base:.2f}x | "
                     f"{torch_ms:.3f} ms | {torch_ms / torch_base:.2f}x | <= {target}x | "
                     f"{'yes' if triton_ms / base <= target else 'no'} |")
    return "\n".join([*lines, "", *NOTES]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one layer shape, ResNet-50 at batch 8, fewer repeats")
    parser.add_argument("--repeats", type=int, help="timed runs per row (default 20, quick 5)")
    parser.add_argument("--write", type=Path, help="where to write the table (default docs/benchmark-cuda.md; "
                                                   "--quick writes only when given)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    if not _triton.available(torch.zeros(1, 1, 2, 2, device=DEVICE)):
        print("Triton is not available for CUDA tensors here: install triton")
        return 1
    print(_device_name(), "| DynOPool2d dispatches on CUDA to:", dispatched_backend())
    torch.backends.cudnn.benchmark = True
    checks = Checks()
    layer_matches_cpu(checks)
    kernels_match_cpu(checks)
    autocast_tracks_float32(checks)

    repeats = args.repeats or (5 if args.quick else 20)
    shapes = LAYER_SHAPES[:1] if args.quick else LAYER_SHAPES
    precisions = ["float32", "AMP bfloat16"] if args.quick else list(PRECISIONS)
    models = [("resnet50", 8, 224)] if args.quick else MODELS
    rows = layer_rows(shapes, precisions, repeats) + model_rows(models, precisions, max(5, repeats // 2))
    table = render(rows, checks, "python " + " ".join(sys.argv))
    print(table)
    target = args.write or (None if args.quick else Path("docs/benchmark-cuda.md"))
    if target is not None:
        atomic_write(target, lambda path: path.write_text(table))
        print(f"written to {target}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
