"""DynOPool's compiled CPU kernels (``csrc/dynopool_cpu.cpp``), built on first use.

Max DynOPool's forward pass, which samples the query points and takes each 2x2 maximum in one
pass (keeping a one-byte code of the winner instead of ``max_pool2d``'s eight-byte index and no
query grid), and its backward pass in one pass over the output. They are
compiled with ``torch.utils.cpp_extension`` the first time a CPU forward needs them (about
15 s, cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Where
they cannot be built (no C++ compiler) the layer falls back to PyTorch operators, which give
the same values, more slowly; ``DYNOPOOL_NAS_NO_EXTENSION=1`` selects the fallback without
trying.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

DISABLE_VARIABLE = "DYNOPOOL_NAS_NO_EXTENSION"
_SOURCE = Path(__file__).with_name("csrc") / "dynopool_cpu.cpp"
_loaded: bool | None = None
_enabled = True


def _ninja_on_path() -> None:
    """torch builds with the ``ninja`` on PATH; an unactivated virtual environment has its
    pip-installed ninja only in its own bin folder."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _load() -> bool:
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns that a CPU-only machine has no CUDA runtime
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)

    try:
        _ninja_on_path()
        load(name="dynopool_nas_cpu", sources=[str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # any build failure means: use the fallback
        warnings.warn(
            f"dynopool_nas: could not build the C++ kernels ({type(error).__name__}: {error}); DynOPool runs on "
            f"PyTorch operators instead (same values, slower). Install a C++ compiler and ninja to get the kernels, "
            f"or set {DISABLE_VARIABLE}=1 to skip the build.",
            RuntimeWarning, stacklevel=3)
        return False
    return True


def cpu_kernel_available() -> bool:
    """Whether max DynOPool runs in the compiled kernels on the CPU (building them if needed)."""
    global _loaded
    if not _enabled or os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return False
    if _loaded is None:
        _loaded = _load()
    return _loaded


def usable_for(x: torch.Tensor) -> bool:
    """Whether the kernels may compute on ``x``: a CPU tensor in eager mode (TorchScript,
    tracing, ONNX export and torch.compile see ``max_pool2d``, which gives the same values)."""
    if x.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return cpu_kernel_available()


@contextlib.contextmanager
def pytorch_fallback() -> Iterator[None]:
    """Within this block DynOPool runs on PyTorch operators even where the kernels are built."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def max_forward(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max DynOPool's output, its queries sampled at ``rows`` x ``cols`` and compared in one pass,
    and the winner of each 2x2 window as a uint8 code ``2a + b`` for query ``(2p + a, 2q + b)``."""
    return torch.ops.dynopool_nas.max_forward(x, rows, cols)


def max_backward(grad: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 input_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Gradients of max DynOPool to its input, row and column coordinates (see the source)."""
    grad_x, grad_rows, grad_cols = torch.ops.dynopool_nas.max_backward(grad, x, codes, rows, cols, input_grad)
    return (grad_x if input_grad else None), grad_rows, grad_cols
