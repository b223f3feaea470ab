"""Messages of NNI, PyTorch Lightning and PyTorch that are known to be harmless where this
package triggers them, silenced there and only there: a user's own code still sees them.

Nothing here imports torch, NNI or Lightning at module level (the command line's parser uses it).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HARMLESS_LOGS", "HARMLESS_WARNINGS", "harmless_warnings", "import_nni", "quiet", "quiet_logs"]

#: (message regex, category) of warnings that tell a user of this package nothing to act on.
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # NNI 3.0 scans torch.nn on import and meets classes newer than itself (Buffer, ...).
    (r".* is found to be not a nn\.Module, which is unexpected", RuntimeWarning),
    # Lightning 2.x calling an API that PyTorch deprecated after it.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # TorchScript is one of the formats `export` writes on purpose.
    (r"`torch\.jit\.(script|save)` is deprecated", FutureWarning),
)

#: Logger name -> prefixes of messages that NNI and Lightning log on every run of this package's
#: commands and that tell its user nothing.
HARMLESS_LOGS: dict[str, tuple[str, ...]] = {
    "nni.nas.experiment.config.experiment": (
        "`training_service` will be ignored",  # logged each time a one-shot config is read (~10 per run)
        "Config is not provided. Will try to infer.",
        "Strategy is found to be a one-shot strategy.",
    ),
    "nni.nas.oneshot.pytorch.strategy": ("Checkpoint callback is found to be None",),
    "nni.nas.evaluator.pytorch.lightning": ("Validation dataloaders are missing. Safe to ignore",),
    **dict.fromkeys(
        ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"),
        ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "`Trainer.fit` stopped:"),
    ),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def harmless_warnings(tracing: bool = False) -> Iterator[None]:
    """Ignore :data:`HARMLESS_WARNINGS` (and, with ``tracing``, PyTorch's ``TracerWarning``,
    which tracing a model whose sizes are fixed, as export and MAC counting do, always raises)."""
    with warnings.catch_warnings():
        for message, category in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        if tracing:
            from torch.jit import TracerWarning

            warnings.filterwarnings("ignore", category=TracerWarning)
        yield


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Drop :data:`HARMLESS_LOGS` (the libraries need not be imported yet); everything else,
    warnings and errors included, is still logged."""
    filters = [(logging.getLogger(name), _DropPrefixes(prefixes)) for name, prefixes in HARMLESS_LOGS.items()]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


@contextmanager
def quiet(tracing: bool = False) -> Iterator[None]:
    """Both: what the commands of this package run under."""
    with harmless_warnings(tracing), quiet_logs():
        yield


def import_nni() -> None:
    """Import NNI's NAS modules without its import-time warnings about PyTorch classes newer
    than NNI 3.0 (once imported, they never warn again in this process)."""
    with harmless_warnings():
        importlib.import_module("nni.nas.nn.pytorch")
