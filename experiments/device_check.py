"""The GPU check of DynOPool: run on a machine with CUDA; CI never depends on it.

1. CUDA values and gradients (input and alpha) equal the CPU result (the compiled CPU kernels
   against the PyTorch operators that run on CUDA), float32 and float64.
2. float16 and bfloat16 autocast run and track float32.
3. Forward+backward and forward timings against max_pool2d / adaptive_max_pool2d (ratios
   measured side by side, CUDA-synchronized).

    python experiments/device_check.py
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from dynopool_nas import DynOPool2d

SCALES = [(0.5, 0.5), (0.43, 0.61), (1.7, 0.8)]


def _run(device: str, dtype: torch.dtype, scale: tuple[float, float], x: torch.Tensor, upstream: torch.Tensor):
    layer = DynOPool2d(scale).to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    out = layer(x)
    (out * upstream.to(device=device, dtype=dtype)[..., : out.shape[-2], : out.shape[-1]]).sum().backward()
    return out.detach().cpu(), x.grad.cpu(), layer.alpha.grad.cpu()


def correctness() -> bool:
    ok = True
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for scale in SCALES:
            x = torch.randn(4, 16, 30, 26, dtype=torch.float64)
            upstream = torch.randn(4, 16, 64, 64, dtype=torch.float64)
            cpu, cuda = _run("cpu", dtype, scale, x, upstream), _run("cuda", dtype, scale, x, upstream)
            for name, a, b in zip(("values", "input grad", "alpha grad"), cpu, cuda):
                good = torch.allclose(a, b, atol=tol, rtol=tol)
                ok &= good
                print(f"{dtype} r={scale} {name}: {'ok' if good else 'MISMATCH'} (max diff {(a - b).abs().max():.2e})")
    return ok


def autocast() -> bool:
    ok = True
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), DynOPool2d((0.43, 0.61))).cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    expected = model(x)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
        out.float().sum().backward()
        good = out.dtype == dtype and torch.allclose(out.float(), expected, atol=0.05, rtol=0.05)
        good &= bool(torch.isfinite(model[1].alpha.grad).all())
        ok &= good
        print(f"autocast {dtype}: {'ok' if good else 'FAILED'}")
    return ok


def _time(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _baseline(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """max_pool2d(2) where it gives ``size``, else adaptive_max_pool2d to ``size``."""
    if 2 * size[0] == x.shape[-2] and 2 * size[1] == x.shape[-1]:
        return F.max_pool2d(x, 2)
    return F.adaptive_max_pool2d(x, size)


def timings() -> None:
    for shape in [(32, 64, 56, 56), (8, 64, 112, 112), (32, 256, 28, 28)]:
        x = torch.randn(shape, device="cuda", requires_grad=True)
        for scale in ((0.5, 0.5), (0.43, 0.61)):
            layer = DynOPool2d(scale).cuda()
            size = tuple(round(s * r) for s, r in zip(shape[-2:], scale))
            base = _time(lambda x=x, size=size: _baseline(x, size).sum().backward())
            cand = _time(lambda x=x, layer=layer: layer(x).sum().backward())
            print(f"{shape} r={scale} forward+backward: {cand:.3f} ms vs {base:.3f} ms = {cand / base:.2f}x")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(torch.cuda.get_device_name())
    ok = correctness() & autocast()
    timings()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
