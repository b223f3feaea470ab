"""DynOPool's compiled CPU kernels (``csrc/``), built on first use.

Max DynOPool's forward pass, which samples the query points and takes each 2x2 maximum in one
pass (keeping a one-byte code of the winner instead of ``max_pool2d``'s eight-byte index and no
query grid), and its backward pass in one pass over the output. They are compiled with
``torch.utils.cpp_extension`` the first time a CPU forward needs them (about 15 s, cached under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``, in a folder named by a hash
of every source file, the compiler flags and the torch they build against, so that checkouts and
versions never rebuild each other's). Where they cannot be built (no C++ compiler) the layer
falls back to PyTorch operators, which give the same values, more slowly;
``DYNOPOOL_NAS_NO_EXTENSION=1`` selects the fallback without trying.

The ops ``torch.ops.dynopool_nas.max_forward`` / ``max_backward`` get their derivative and their
fake (shape-only) implementation as they load: ``max_forward`` differentiates like the layer
(second derivatives included), and ``max_backward``, which has no derivative of its own, refuses
inputs that require one.

The sources are laid out per device, as torchvision's ops are: ``csrc/dynopool.cpp`` declares the
ops' schema, ``csrc/cpu/dynopool_kernel.cpp`` holds the CPU kernels; the GPU kernels are Triton, in
:mod:`dynopool_nas._triton`. Every ``.cpp`` file under ``csrc/`` is compiled into one library.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

DISABLE_VARIABLE = "DYNOPOOL_NAS_NO_EXTENSION"
_CSRC = Path(__file__).with_name("csrc")
_SOURCE_SUFFIXES = (".cpp", ".h")  # what the build reads; the .cpp files are compiled
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_loaded: bool | None = None
_enabled = True


def _ninja_on_path() -> None:
    """torch builds with the ``ninja`` on PATH; an unactivated virtual environment has its
    pip-installed ninja only in its own bin folder."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def read_sources(root: Path | None = None) -> dict[str, bytes]:
    """Every source file under ``csrc/`` (or ``root``), by its path relative to that folder, in
    sorted order."""
    root = _CSRC if root is None else root
    paths = sorted(path for path in root.rglob("*") if path.suffix in _SOURCE_SUFFIXES and path.is_file())
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in paths}


def build_name(sources: dict[str, bytes]) -> str:
    """The extension's name (and build folder): a hash of what the build depends on -- every
    source file and its place in ``csrc/``, the compiler flags and the torch installation it
    compiles against -- and not of where the sources live."""
    digest = hashlib.sha256()
    for name, source in sorted(sources.items()):
        digest.update(hashlib.sha256(name.encode()).digest())
        digest.update(hashlib.sha256(source).digest())
    for part in (repr((_CFLAGS, _LDFLAGS)).encode(), torch.__version__.encode(),
                 str(Path(torch.__file__).parent).encode()):
        digest.update(hashlib.sha256(part).digest())
    return f"dynopool_nas_cpu_{digest.hexdigest()[:16]}"


def _cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported quietly (its import warns that a CPU-only machine
    has no CUDA runtime)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def build_directory(sources: dict[str, bytes]) -> Path:
    """Where :func:`build_name`'s extension is built, under ``TORCH_EXTENSIONS_DIR``."""
    return Path(_cpp_extension()._get_build_directory(build_name(sources), verbose=False))


def _sources_in(directory: Path, sources: dict[str, bytes]) -> list[Path]:
    """The sources, copied into the build folder (``csrc/`` as it is laid out): every checkout
    compiles the same files with the same command, so that ninja finds the build up to date.
    Each file written atomically; returns the files to compile."""
    compiled = [name for name in sources if name.endswith(".cpp")]
    objects = [Path(name).stem for name in compiled]
    if len(set(objects)) != len(objects):  # torch names each object file after its source alone
        raise ValueError(f"two sources in csrc/ share a file name: {sorted(compiled)}")
    for name, source in sources.items():
        target = directory / "csrc" / name
        if not target.is_file() or target.read_bytes() != source:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as file:
                file.write(source)
            os.replace(file.name, target)
    return [directory / "csrc" / name for name in compiled]


def _load() -> bool:
    try:
        _ninja_on_path()
        sources = read_sources()
        directory = build_directory(sources)
        directory.mkdir(parents=True, exist_ok=True)
        _cpp_extension().load(name=build_name(sources), sources=[str(path) for path in _sources_in(directory, sources)],
                              build_directory=str(directory), extra_cflags=list(_CFLAGS),
                              extra_ldflags=list(_LDFLAGS), is_python_module=False)
    except Exception as error:  # any build failure means: use the fallback
        warnings.warn(
            f"dynopool_nas: could not build the C++ kernels ({type(error).__name__}: {error}); DynOPool runs on "
            f"PyTorch operators instead (same values, slower). Install a C++ compiler and ninja to get the kernels, "
            f"or set {DISABLE_VARIABLE}=1 to skip the build.",
            RuntimeWarning, stacklevel=3)
        return False
    _register_derivatives()
    return True


def _register_derivatives() -> None:
    """Give the loaded ops their derivatives and fake implementations (see the module's doc)."""
    from . import ops  # ops imports this module; the derivative is its backward pass, the layer's

    torch.library.register_fake("dynopool_nas::max_forward")(_fake_max_forward)
    torch.library.register_fake("dynopool_nas::max_backward")(_fake_max_backward)
    torch.library.register_autograd("dynopool_nas::max_forward", ops.kernel_backward(ops.CPU_KERNELS),
                                    setup_context=ops.kernel_setup_context)
    torch.library.register_autograd("dynopool_nas::max_backward", _no_derivative, setup_context=_refuse_gradients)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels compute in and return (any other layout is made contiguous)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _fake_max_forward(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0], x.shape[1], rows.shape[0] // 2, cols.shape[0] // 2)
    values = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    return values, torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=_layout(x))


def _fake_max_backward(grad: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor,
                       cols: torch.Tensor, input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x = torch.empty_like(x) if input_grad else x.new_empty(0)
    return grad_x, rows.new_empty(rows.shape), cols.new_empty(cols.shape)


_NO_DERIVATIVE = (
    "dynopool_nas::max_backward has no derivative of its own; for second derivatives differentiate "
    "dynopool_nas::max_forward (or DynOPool2d) with create_graph=True, which computes its backward pass "
    "in differentiable PyTorch operators"
)


def _refuse_gradients(ctx: object, inputs: tuple[object, ...], output: tuple[torch.Tensor, ...]) -> None:
    raise RuntimeError(_NO_DERIVATIVE)


def _no_derivative(ctx: object, *grads: torch.Tensor) -> tuple[None, ...]:
    raise RuntimeError(_NO_DERIVATIVE)


def cpu_kernel_available() -> bool:
    """Whether max DynOPool runs in the compiled kernels on the CPU (building them if needed)."""
    return kernels_enabled() and _cpu_kernel_loaded()


@torch.compiler.assume_constant_result
def _cpu_kernel_loaded() -> bool:
    """Build or load the kernels once per process. ``torch.compile`` calls this while tracing
    (the answer never changes once given) rather than tracing the build."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def kernels_enabled() -> bool:
    """Whether compiled kernels (CPU or GPU) may run: not inside :func:`pytorch_fallback` and not
    switched off by the environment variable."""
    return _enabled and os.environ.get(DISABLE_VARIABLE, "") in ("", "0")


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
    """Max DynOPool's output, its queries sampled at ``rows`` x ``cols`` (input pixel coordinates
    in ``[0, size - 1]``) and compared in one pass, and the winner of each 2x2 window as a uint8
    code ``2a + b`` for query ``(2p + a, 2q + b)``."""
    return torch.ops.dynopool_nas.max_forward(x, rows, cols)


def max_backward(grad: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 input_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Gradients of max DynOPool to its input, row and column coordinates (see the source)."""
    grad_x, grad_rows, grad_cols = torch.ops.dynopool_nas.max_backward(grad, x, codes, rows, cols, input_grad)
    return (grad_x if input_grad else None), grad_rows, grad_cols
