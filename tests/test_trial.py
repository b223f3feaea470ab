import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces.arch import load_architecture
from strategies.commands.trial import run_trial

REPO = Path(__file__).resolve().parents[1]


def test_trial_trains_the_chosen_architecture_and_holds_a_budget(tmp_path):
    params = {"width": 8, "depth0": 1, "stage0_cell0_s0_n0": "skip", "gmacs_budget": 4e-4, "alpha_lr": 0.01}
    final = run_trial(params, epochs=1, image_size=12, output_dir=tmp_path)
    assert {"default", "gmacs", "params", "reduce1.h"} <= set(final)
    assert final["gmacs"] == pytest.approx(4e-4, rel=0.05)
    arch = load_architecture(tmp_path / "arch.json")
    assert arch["choices"]["width"] == 8 and arch["choices"]["stage0_cell0_s0_n0"] == "skip"
    assert arch["space"] == "cells" and arch["num_classes"] == 10


def test_trial_refuses_parameters_that_are_neither_labels_nor_settings(tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameters \['depth9'\]"):
        run_trial({"depth9": 1}, epochs=1, image_size=12, output_dir=tmp_path)


@pytest.mark.slow
def test_trial_runs_data_parallel_behind_one_flag(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "trial.py"), "--devices", "2", "--accelerator", "cpu",
         "--epochs", "1", "--image-size", "12"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "NNI_OUTPUT_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "MEMBER: 2/2" in output and output.count("Final result") == 1
    for noise in ("GPU available", "litlogger", "not a nn.Module", "LeafSpec", "`Trainer.fit` stopped"):
        assert noise not in output, noise
    assert (tmp_path / "arch.json").is_file() and (tmp_path / "weights.pt").is_file()
