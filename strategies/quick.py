"""``dynopool-nas quick``: the quick-start trial-based search, run through ``nnictl create``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dynopool_nas._utils import atomic_write

__all__ = ["QUICK_CONFIG", "results_table", "run_quick"]

QUICK_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "quick.yml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _nnictl(*arguments: str) -> subprocess.CompletedProcess:
    nnictl = Path(sys.executable).with_name("nnictl")
    return subprocess.run([str(nnictl), *arguments], capture_output=True, text=True, timeout=180, check=False)


def results_table(experiment: Any) -> pd.DataFrame:
    """One row per trial: status, parameters and its final metrics, best first."""
    rows = []
    for trial in experiment.list_trial_jobs():
        final = trial.finalMetricData[0].data if trial.finalMetricData else {}
        final = final if isinstance(final, dict) else {"default": final}
        parameters = trial.hyperParameters[0].parameters if trial.hyperParameters else {}
        rows.append({"trial": trial.trialJobId, "status": trial.status, "top1": final.get("default"),
                     "gmacs": final.get("gmacs"), "params": final.get("params"), **parameters})
    table = pd.DataFrame(rows)
    return table.sort_values("top1", ascending=False, na_position="last") if len(table) else table


def run_quick(
    output: str | Path = "runs/quick",
    *,
    port: int | None = None,
    max_trials: int | None = None,
    epochs: int | None = None,
    keep: bool = False,
    config: Path = QUICK_CONFIG,
) -> pd.DataFrame:
    """Start the quick experiment, wait for it, print the results, copy the best trial's
    ``arch.json`` and ``weights.pt`` to ``output/best``; stop the experiment unless ``keep``."""
    from nni.experiment import Experiment

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load(config.read_text())
    command = settings["trialCommand"].replace("python ", f"{sys.executable} ", 1)
    if epochs is not None:
        command = command.replace("--epochs 2", f"--epochs {epochs}")
    settings.update(
        trialCommand=command,
        trialCodeDirectory=str(config.parent),
        searchSpaceFile=str(config.parent / settings["searchSpaceFile"]),
        experimentWorkingDirectory=str(output / "nni"),
    )
    if max_trials is not None:
        settings["maxTrialNumber"] = max_trials
    run_config = output / "quick.yml"
    run_config.write_text(yaml.safe_dump(settings))
    port = port or _free_port()
    created = _nnictl("create", "--config", str(run_config), "--port", str(port))
    if created.returncode != 0:
        raise RuntimeError(f"nnictl create failed:\n{created.stdout}\n{created.stderr}")
    experiment = Experiment.connect(port)
    print(f"NNI web UI: http://127.0.0.1:{port}  (experiment {experiment.id})", flush=True)
    try:
        while (status := experiment.get_status()) not in ("DONE", "ERROR", "STOPPED"):
            done = sum(t.status in ("SUCCEEDED", "FAILED") for t in experiment.list_trial_jobs())
            print(f"  {status.lower()}: {done}/{settings['maxTrialNumber']} trials finished", flush=True)
            time.sleep(10)
        table = results_table(experiment)
    finally:
        if not keep:
            _nnictl("stop", experiment.id)
    print(table.to_string(index=False))
    best = table[table["status"] == "SUCCEEDED"].head(1)
    if len(best):
        trial_id = best["trial"].iloc[0]
        trial_dir = next((output / "nni").glob(f"{experiment.id}/environments/*/trials/{trial_id}"))
        (output / "best").mkdir(exist_ok=True)
        for name in ("arch.json", "weights.pt"):
            atomic_write(output / "best" / name, lambda path, name=name: shutil.copyfile(trial_dir / name, path))
        best_dir = output / "best"
        print(f"best trial {trial_id}: architecture {best_dir / 'arch.json'}, weights {best_dir / 'weights.pt'}")
    if not keep:
        print(f"experiment stopped; see it again with: nnictl view {experiment.id} --experiment_dir {output / 'nni'}")
    return table
