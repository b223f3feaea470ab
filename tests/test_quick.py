"""``dynopool-nas quick`` without starting NNI: the trial command it runs and its refusals."""

import shlex
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

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


def test_quick_runs_the_config_shipped_in_the_package_which_experiments_links_to():
    packaged = resources.files("strategies.commands") / "configs"
    assert Path(str(packaged / "quick.yml")) == QUICK_CONFIG
    assert (packaged / "quick.yml").read_text() == QUICK_CONFIG.read_text()
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("quick.yml", "quick_space.json"):
        assert (experiments / name).resolve() == Path(str(packaged / name)), name


def test_the_quick_trial_program_runs_as_a_module_of_the_package():
    import yaml

    command = shlex.split(yaml.safe_load(QUICK_CONFIG.read_text())["trialCommand"])
    assert command[1:3] == ["-m", "strategies.commands.trial"]  # needs no file beside the config
    done = subprocess.run([sys.executable, *command[1:3], "--help"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0 and "--epochs" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_a_wheel_carries_the_quick_config(tmp_path):
    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"
    for name in ("dynopool_nas", "search_spaces", "strategies"):  # built from a copy: no build/ in the checkout
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                            str(tmp_path), str(source)], capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("dynopool_nas-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("quick.yml", "quick_space.json"):
            shipped = archive.read(f"strategies/commands/configs/{name}").decode()
            assert shipped == (QUICK_CONFIG.parent / name).read_text(), name


def test_trial_command_sets_the_data_set_and_its_folder_once():
    import yaml

    command = yaml.safe_load(QUICK_CONFIG.read_text())["trialCommand"]
    words = shlex.split(trial_command(command, dataset="fashion-mnist", data_dir="/data/my set", epochs=None))
    assert words.count("--dataset") == 1 and words[words.index("--dataset") + 1] == "fashion-mnist"
    assert words[words.index("--data-dir") + 1] == "/data/my set"
    assert words[words.index("--epochs") + 1] == "2"  # None leaves the config's value


def test_a_missing_data_folder_is_a_clear_error_before_nni_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        run_quick(tmp_path / "out", dataset="fashion-mnist", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out" / "nni").exists()
