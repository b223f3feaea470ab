"""``dynopool-nas quick``: the quick-start trial-based search, run through ``nnictl create``."""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

import shlex
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from dynopool_nas import load_dataset
from dynopool_nas._checks import writable_folder
from dynopool_nas._utils import CHECKSUMS, atomic_write

from .nnictl import create_experiment, free_port, stop_experiment

__all__ = ["QUICK_CONFIG", "results_table", "run_quick", "trial_command"]

QUICK_CONFIG = Path(str(resources.files("strategies.commands") / "configs" / "quick.yml"))
"""The quick experiment's config, package data of :mod:`strategies.commands` (in a wheel as in a
source checkout, where ``experiments/quick.yml`` links to it), beside its ``quick_space.json``."""

_FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


def trial_command(command: str, *, python: str = sys.executable, **options: object) -> str:
    """``command`` (a config's ``trialCommand``, ``python -m strategies.commands.trial ...`` or
    ``python trial.py ...``) run by ``python``, with each of ``options`` that is not None set as
    the trial program's flag (``epochs=2`` -> ``--epochs 2``, ``data_dir=...`` -> ``--data-dir
    ...``): replaced where the command has it (``--flag value`` or ``--flag=value``), added
    otherwise."""
    words = shlex.split(command)
    if not words or not Path(words[0]).name.startswith("python"):
        raise ValueError(f"the config's trialCommand must start with python, got {command!r}")
    words[0] = python
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        words = [word for word in words if not word.startswith(f"{flag}=")]
        if flag in words:
            at = words.index(flag)
            del words[at:at + 2]
        words += [flag, str(value)]
    return shlex.join(words)


def _read_config(config: Path) -> dict[str, Any]:
    if not config.is_file():
        raise FileNotFoundError(
            f"no nnictl config at {config}; pass --config a quick-style nnictl config, or leave it out to run the "
            "quick experiment that dynopool-nas ships (experiments/quick.yml)"
        )
    settings = yaml.safe_load(config.read_text())
    missing = [key for key in ("trialCommand", "searchSpaceFile", "maxTrialNumber") if key not in (settings or {})]
    if missing:
        raise ValueError(f"{config} lacks {missing}: start from experiments/quick.yml")
    return settings


def results_table(experiment: Any) -> pd.DataFrame:
    """One row per trial: status, parameters and its final metrics, best first."""
    rows = []
    for trial in experiment.list_trial_jobs():
        final = trial.finalMetricData[0].data if trial.finalMetricData else {}
        final = final if isinstance(final, dict) else {"default": final}
        parameters = trial.hyperParameters[0].parameters if trial.hyperParameters else {}
        rows.append({"trial": trial.trialJobId, "status": trial.status, "top1": final.get("default"),
                     "gmacs": final.get("gmacs"), "latency_ms": final.get("latency_ms"), "params": final.get("params"),
                     **parameters})
    table = pd.DataFrame(rows)
    return table.sort_values("top1", ascending=False, na_position="last") if len(table) else table


def _wait(experiment: Any, total: int, progress: bool) -> None:
    """Poll ``experiment`` until it ends, with one progress bar of finished trials."""
    with tqdm(total=total, unit="trial", desc="trials", disable=not progress, dynamic_ncols=True) as bar:
        while True:
            status = experiment.get_status()
            trials = experiment.list_trial_jobs()
            failed = sum(trial.status == "FAILED" for trial in trials)
            bar.update(sum(trial.status in _FINISHED for trial in trials) - bar.n)
            bar.set_postfix_str(f"{status.lower()}, {failed} failed" if failed else status.lower())
            if status in ("DONE", "ERROR", "STOPPED"):
                return
            time.sleep(2)


def run_quick(
    output: str | Path = "runs/quick",
    *,
    port: int | None = None,
    max_trials: int | None = None,
    epochs: int | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    keep: bool = False,
    config: Path = QUICK_CONFIG,
    progress: bool = True,
) -> pd.DataFrame:
    """Start the quick experiment, wait for it, print the results, copy the best trial's
    ``arch.json`` and ``weights.pt`` to ``output/best``; stop the experiment unless ``keep``.
    ``epochs``, ``dataset`` and ``data_dir`` (resolved to an absolute path, as trials run in their
    own folders) replace the config's trial options."""
    output = writable_folder(output).resolve()
    if dataset is not None:  # a missing data folder fails here, with its fix, not in every trial's log
        load_dataset(dataset, root=data_dir)
    config = Path(config).resolve()
    settings = _read_config(config)
    settings.update(
        trialCommand=trial_command(settings["trialCommand"], epochs=epochs, dataset=dataset,
                                   data_dir=None if data_dir is None else Path(data_dir).resolve()),
        trialCodeDirectory=str(config.parent / settings.get("trialCodeDirectory", ".")),
        searchSpaceFile=str(config.parent / settings["searchSpaceFile"]),
        experimentWorkingDirectory=str(output / "nni"),
    )
    if max_trials is not None:
        settings["maxTrialNumber"] = max_trials
    output.mkdir(parents=True, exist_ok=True)
    run_config = atomic_write(output / "quick.yml", lambda path: path.write_text(yaml.safe_dump(settings)))
    port = port or free_port()
    experiment = create_experiment(run_config, port)
    print(f"NNI web UI: http://127.0.0.1:{port}  (experiment {experiment.id}; NNI serves it, and the REST API that "
          "starts and stops trials, on every network interface of this machine)", flush=True)
    try:
        _wait(experiment, settings["maxTrialNumber"], progress)
        table = results_table(experiment)
    finally:
        if not keep:
            stop_experiment(experiment)
    print(table.to_string(index=False))
    best = table[table["status"] == "SUCCEEDED"].head(1)
    if len(best):
        trial_id = best["trial"].iloc[0]
        trial_dir = next((output / "nni").glob(f"{experiment.id}/environments/*/trials/{trial_id}"))
        for name in ("arch.json", "weights.pt", CHECKSUMS):  # the checksums last, as they were written
            atomic_write(output / "best" / name, lambda path, name=name: shutil.copyfile(trial_dir / name, path))
        best_dir = output / "best"
        print(f"best trial {trial_id}: architecture {best_dir / 'arch.json'}, weights {best_dir / 'weights.pt'}")
    if not keep:
        print(f"experiment stopped; see it again with: nnictl view {experiment.id} --experiment_dir {output / 'nni'}")
    return table
