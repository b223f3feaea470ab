"""Every nnictl config in experiments/ is valid for NNI and fits the space its trials build."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from nni.experiment.config import ExperimentConfig

from search_spaces.registry import make_space
from strategies.commands.trial import SETTINGS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("*.yml"))


def _trial_option(config: dict, name: str) -> str:
    words = shlex.split(config["trialCommand"])
    return words[words.index(name) + 1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_with_nni(path, tmp_path):
    config = yaml.safe_load(path.read_text())
    for machine in config["trainingService"].get("machineList", []):
        key = tmp_path / "id_ed25519"
        key.write_text("placeholder key for validation\n")
        machine["sshKeyFile"] = str(key)
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(config))
    (tmp_path / config["searchSpaceFile"]).write_text((EXPERIMENTS / config["searchSpaceFile"]).read_text())
    ExperimentConfig.load(str(copy)).validate()
    words = shlex.split(config["trialCommand"])
    assert words[:2] == ["python", "trial.py"] or words[:3] == ["python", "-m", "strategies.commands.trial"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_search_space_labels_belong_to_the_trial_space(path):
    config = yaml.safe_load(path.read_text())
    labels = json.loads((EXPERIMENTS / config["searchSpaceFile"]).read_text())
    in_chans = 1 if _trial_option(config, "--dataset").startswith("digits") else 3
    space = make_space(_trial_option(config, "--space"), num_classes=10, in_chans=in_chans)
    mutables = space.simplify()
    assert set(labels) <= set(mutables) | set(SETTINGS)
    for label, spec in labels.items():
        if label in mutables and spec["_type"] == "choice":
            assert set(spec["_value"]) <= set(mutables[label].values), label
