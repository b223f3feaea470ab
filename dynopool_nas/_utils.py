"""Small helpers shared inside the package."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, restoring every module's mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def example_input(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> Tensor:
    """A batch of one zero image of ``input_size`` (channels, height, width) on the model's
    device, or ``input_size`` itself if it is already a tensor."""
    if isinstance(input_size, Tensor):
        return input_size
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {input_size!r}")
    param = next(model.parameters(), None)
    return torch.zeros(1, *input_size, device=param.device if param is not None else None)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then move it into place: a crash
    leaves the previous file intact, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


CHECKSUMS = "SHA256SUMS"
"""The file, in ``sha256sum``'s format, that :func:`write_together` writes after the files it lists."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_together(folder: str | Path, writers: Mapping[str, Callable[[Path], object]]) -> Path:
    """Write files that belong together (an architecture and its weights) into ``folder``: each
    one atomically (:func:`atomic_write`, ``writers`` maps a file name to its writer), then
    :data:`CHECKSUMS` with the digest of every one of them, last. A run interrupted part-way over
    an older result leaves files that disagree with the listed digests, which
    :func:`check_together` refuses; ``sha256sum -c SHA256SUMS`` checks them too."""
    folder = Path(folder)
    for name, write in writers.items():
        atomic_write(folder / name, write)
    lines = "".join(f"{_sha256(folder / name)}  {name}\n" for name in writers)
    return atomic_write(folder / CHECKSUMS, lambda path: path.write_text(lines))


def _listed_digests(folder: Path) -> dict[str, str]:
    """File name -> digest, from ``folder``'s :data:`CHECKSUMS`."""
    listed = {}
    for line in (folder / CHECKSUMS).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    return listed


def check_together(folder: str | Path, names: Iterable[str]) -> None:
    """Raise ``ValueError`` unless :data:`CHECKSUMS` in ``folder`` lists each of ``names`` with its
    current digest, i.e. unless they were written together by :func:`write_together`."""
    folder = Path(folder)
    try:
        listed = _listed_digests(folder)
    except FileNotFoundError:
        raise ValueError(f"{folder} has no {CHECKSUMS}, so nothing shows that its files belong together (a run that "
                         "was interrupted, or files copied by hand); run the search or trial again, or copy the "
                         f"folder with its {CHECKSUMS}") from None
    except ValueError:
        raise ValueError(f"{folder / CHECKSUMS} is damaged; run again what wrote {folder}") from None
    for name in names:
        if name not in listed or not (folder / name).is_file() or _sha256(folder / name) != listed[name]:
            raise ValueError(f"{folder / name} is not the file written with the rest of {folder} (a run interrupted "
                             "while writing, or a file replaced since); run the search or trial that wrote it again")


@contextmanager
def atomic_folder(path: str | Path, marker: str) -> Iterator[Path]:
    """Build a folder in a fresh temporary sibling and move it to ``path`` on success, replacing
    what was there: a reader, or a second writer at the same time, sees one whole set of files,
    never a mix; a failure leaves ``path`` as it was. An existing non-empty ``path`` is replaced
    only if it holds ``marker`` (a file the same writer puts there), so that a folder of other
    files is never deleted: otherwise ``ValueError``, before the caller does any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; choose a folder for the output")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise ValueError(f"{path} holds files that this command did not write (no {marker}), and the output replaces "
                         "the folder; choose a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield temporary
        os.chmod(temporary, 0o755)
        _move_into_place(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _move_into_place(source: Path, path: Path) -> None:
    """Rename ``source`` to ``path``, first moving aside a folder already there (a previous
    result, or the one a concurrent writer has just put there), which is then deleted."""
    replaced = []
    while True:
        try:
            os.rename(source, path)  # succeeds where path is absent or an empty folder
            break
        except OSError:
            if not path.is_dir():
                raise
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        try:
            os.rename(path, old)
            replaced.append(old)
        except FileNotFoundError:  # a concurrent writer moved it aside first
            pass
    for old in replaced:
        shutil.rmtree(old, ignore_errors=True)
