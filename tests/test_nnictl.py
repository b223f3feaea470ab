"""A real ``nnictl create`` experiment on the local training service, on loopback."""

import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from strategies.commands.nnictl import create_experiment, free_port, stop_experiment

pytestmark = pytest.mark.slow  # real nnictl experiments

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def experiment_config(tmp_path):
    """The quick config, shrunk: two trials, one of which fails on purpose (a negative scale)."""
    config = yaml.safe_load((REPO / "experiments" / "quick.yml").read_text())
    (tmp_path / "space.json").write_text('{"scale": {"_type": "choice", "_value": [0.5, -1.0]}}')
    config.update(
        searchSpaceFile=str(tmp_path / "space.json"),
        trialCommand=f"{sys.executable} trial.py --space cells --dataset digits --epochs 1 --image-size 12",
        trialCodeDirectory=str(REPO / "experiments"),
        maxTrialNumber=2,
        tuner={"name": "GridSearch"},
        experimentWorkingDirectory=str(tmp_path / "work"),
    )
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quick_config_runs_with_nnictl_and_reports_gmacs(experiment_config):
    port = free_port()
    experiment = create_experiment(experiment_config, port)
    try:
        # What the README says: NNI 3.0 serves its web UI and REST API on every interface, with no option to bind.
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening and listening <= {"0.0.0.0", "::"}
        deadline = time.monotonic() + 300
        while experiment.get_status() not in ("DONE", "ERROR", "STOPPED") and time.monotonic() < deadline:
            time.sleep(3)
        assert experiment.get_status() == "DONE"
        trials = {trial.trialJobId: trial for trial in experiment.list_trial_jobs()}
        statuses = sorted(trial.status for trial in trials.values())
        assert statuses == ["FAILED", "SUCCEEDED"]
        succeeded = next(t for t in trials.values() if t.status == "SUCCEEDED")
        final = succeeded.finalMetricData[0].data
        assert {"default", "gmacs", "params", "reduce1.h", "reduce2.w"} <= set(final)
        intermediates = experiment.get_job_metrics()[succeeded.trialJobId]
        assert all("gmacs" in metric.data for metric in intermediates)
        trial_dir = next(experiment_config.parent.glob(f"work/*/environments/*/trials/{succeeded.trialJobId}"))
        assert (trial_dir / "arch.json").is_file() and (trial_dir / "weights.pt").is_file()
        failed = next(t for t in trials.values() if t.status == "FAILED")
        stderr = next(experiment_config.parent.glob(f"work/*/environments/*/trials/{failed.trialJobId}/trial.stderr"))
        assert "setting 'scale' must be a positive" in stderr.read_text()
    finally:
        stopped = stop_experiment(experiment)
    assert stopped.returncode == 0 and "success" in (stopped.stdout + stopped.stderr).lower()


def test_quick_command_runs_the_quick_config_and_keeps_the_best_trial(tmp_path, capsys):
    from search_spaces.arch import load_architecture
    from strategies.commands.quick import run_quick

    table = run_quick(tmp_path, max_trials=2, epochs=1)
    captured = capsys.readouterr()
    out = captured.out
    assert len(table) == 2 and set(table["status"]) == {"SUCCEEDED"}
    assert "trials finished" not in out and "2/2" in captured.err  # one progress bar, no line per poll
    assert "--epochs 1" in (tmp_path / "quick.yml").read_text()
    assert table["top1"].is_monotonic_decreasing and (table["gmacs"] > 0).all() and (table["latency_ms"] > 0).all()
    assert "NNI web UI: http://127.0.0.1:" in out and "experiment stopped" in out
    arch = load_architecture(tmp_path / "best" / "arch.json")
    assert arch["metrics"]["default"] == table["top1"].iloc[0]
    assert arch["metrics"]["latency_ms"] == table["latency_ms"].iloc[0]  # the number in the table is the trial's
    assert (tmp_path / "best" / "weights.pt").is_file()


def test_quick_runs_on_another_data_set_from_its_folder(tmp_path):
    from test_data import _write_fashion

    from search_spaces.arch import load_architecture
    from strategies.commands.quick import run_quick

    _write_fashion(tmp_path / "fashion", n_train=96, n_test=8)
    table = run_quick(tmp_path / "out", max_trials=1, epochs=1, dataset="fashion-mnist",
                      data_dir=tmp_path / "fashion", progress=False)
    assert list(table["status"]) == ["SUCCEEDED"]
    assert f"--dataset fashion-mnist --data-dir {tmp_path / 'fashion'}" in (tmp_path / "out" / "quick.yml").read_text()
    assert load_architecture(tmp_path / "out" / "best" / "arch.json")["num_classes"] == 10
