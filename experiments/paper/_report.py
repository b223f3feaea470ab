"""Writing an experiment's results page under docs/results/ (command, seeds, wall time)."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

from dynopool_nas._utils import atomic_write

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def write_report(name: str, title: str, body: str, started: float, seeds: list[int] | None = None) -> Path:
    """``docs/results/<name>.md`` with the exact command, the seeds, the machine and wall time."""
    header = [
        f"# {title}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Seeds: {seeds if seeds else 'none (deterministic)'}  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}  ",
        f"Wall time: {time.perf_counter() - started:.0f} s",
        "",
        "",
    ]
    return atomic_write(RESULTS / f"{name}.md", lambda path: path.write_text("\n".join(header) + body + "\n"))
