"""Starting and stopping trial-based NNI experiments with ``nnictl``, on a free port: what
``dynopool-nas quick`` and the tests that run a real experiment share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["create_experiment", "free_port", "nnictl", "stop_experiment"]


def free_port() -> int:
    """A TCP port that no process of this machine listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nnictl(*arguments: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the ``nnictl`` of this Python's environment with ``arguments``; its output is captured
    (without the ``pkg_resources`` deprecation warning every NNI 3.0 command prints)."""
    executable = Path(sys.executable).with_name("nnictl")
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore:pkg_resources is deprecated:UserWarning"}
    return subprocess.run([str(executable), *arguments], capture_output=True, text=True, timeout=timeout,
                          check=False, env=quiet)


def create_experiment(config: str | Path, port: int) -> Any:
    """``nnictl create --config config --port port``, and NNI's
    :class:`~nni.experiment.Experiment` connected to it; raises ``RuntimeError`` with nnictl's
    reason if it does not start."""
    from nni.experiment import Experiment

    created = nnictl("create", "--config", str(config), "--port", str(port))
    if created.returncode != 0:
        reason = " ".join((created.stderr or created.stdout).split())[-600:]
        raise RuntimeError(f"nnictl create --config {config} failed: {reason}")
    return Experiment.connect(port)


def stop_experiment(experiment: Any) -> subprocess.CompletedProcess:
    """``nnictl stop`` of ``experiment`` (its result, for the caller to check)."""
    return nnictl("stop", experiment.id)
