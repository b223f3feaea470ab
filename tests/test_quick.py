"""``dynopool-nas quick`` without starting NNI: the trial command it runs and its refusals."""

import shlex
import sys

import pytest

from strategies.commands.quick import QUICK_CONFIG, run_quick, trial_command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("python trial.py --space cells --epochs 2 --image-size 16",
         "trial.py --space cells --image-size 16 --epochs 7"),
        ("python3 trial.py --epochs=3 --data-dir '/data/my set'", "trial.py --data-dir '/data/my set' --epochs 7"),
        ("python trial.py --epochs  12", "trial.py --epochs 7"),
        ("python trial.py", "trial.py --epochs 7"),
    ],
)
def test_trial_command_sets_the_epochs_option_whatever_its_form(command, expected):
    assert trial_command(command, python="/opt/my env/python", epochs=7) == f"'/opt/my env/python' {expected}"


def test_trial_command_keeps_everything_else():
    command = "python trial.py --space cells --epochs 2 --data-dir '/data/my set'"
    assert shlex.split(trial_command(command)) == [sys.executable, *shlex.split(command)[1:]]
    with pytest.raises(ValueError, match="must start with python"):
        trial_command("bash run.sh")


def test_the_quick_config_sets_its_epochs_through_the_trial_command():
    import yaml

    command = yaml.safe_load(QUICK_CONFIG.read_text())["trialCommand"]
    assert shlex.split(trial_command(command, epochs=1)).count("--epochs") == 1
    assert "--epochs 1" in trial_command(command, epochs=1)


def test_missing_config_is_a_clear_error_before_nni_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no nnictl config at .*missing\.yml.*pass --config"):
        run_quick(tmp_path / "out", config=tmp_path / "missing.yml")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_refused_before_nni_starts(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="lies under the file"):
        run_quick(tmp_path / "file" / "quick")
