import json
import logging
import subprocess
import sys

import pytest
import torch

from dynopool_nas._checks import UsageError
from search_spaces.arch import build_model, load_architecture, load_weights, save_weights
from search_spaces.registry import make_space
from strategies.commands.cli import main
from strategies.commands.search import run_search
from strategies.commands.settings import SearchSettings


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


def test_search_command_writes_an_architecture_and_weights(tmp_path, capsys):
    code = main(["search", "--space", "small_cnn", "--strategy", "gumbel-darts", "--epochs", "1", "--image-size", "12",
                 "--max-train-images", "128", "--batch-size", "32", "--gmacs-lambda", "10", "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "validation top-1" in out and str(tmp_path / "arch.json") in out
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert set(arch["scales"]) == {"features.3", "features.7", "features.11"}
    assert (tmp_path / "weights.pt").stat().st_size > 0


def test_exported_weights_load_into_the_rebuilt_model_and_compute_the_same(tmp_path):
    arch, derived = run_search(SearchSettings(epochs=1, output=tmp_path, image_size=12, batch_size=32,
                                              max_train_images=128, gmacs_budget=6e-4))
    rebuilt = build_model(make_space("cells", 10, 1), load_architecture(tmp_path / "arch.json"))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), derived.eval()(x))
    assert arch["metrics"]["gmacs"] == pytest.approx(6e-4, rel=0.05)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--space", "nowhere"], "invalid choice: 'nowhere'"), (["--dataset", "cifar100"], "--data-dir"),
     (["--epochs", "0"], "must be at least 1"),
     (["--max-train-images", "10"], "--max-train-images 10 is less than one batch (--batch-size 64)"),
     (["--max-train-images", "100000"], "--max-train-images 100000 exceeds the 1438 training images"),
     (["--batch-size", "5000"], "the data set's 1438 images is less than one batch (--batch-size 5000)")],
)
def test_bad_search_arguments_are_refused_before_any_work(tmp_path, capsys, arguments, message):
    try:
        status = main(["search", "--output", str(tmp_path), *arguments])
    except SystemExit as exit:
        status = exit.code
    assert status in (1, 2) and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_search_checks_its_output_and_training_subset_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        run_search(SearchSettings(epochs=1, output=tmp_path / "file"))
    with pytest.raises(UsageError, match="exceeds the 1438 training images"):
        run_search(SearchSettings(epochs=1, output=tmp_path, max_train_images=2000))


@pytest.mark.parametrize("content", [b"", "half", b"not a checkpoint"], ids=["empty", "truncated", "foreign"])
def test_damaged_weights_are_an_error_that_names_the_file(tmp_path, content):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:100] if content == "half" else content)
    with pytest.raises(ValueError, match=f"{path} is not a readable weights file.*run the search or trial"):
        load_weights(path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights(tmp_path / "missing.pt")


def test_weights_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = load_weights(save_weights(model, tmp_path / "weights.pt"))
    assert state.keys() == model.state_dict().keys() and torch.equal(state["weight"], model.weight)


def test_one_shot_search_prints_only_what_it_found(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "strategies.commands.cli", "search", "--space", "small_cnn", "--epochs", "1",
         "--image-size", "12", "--max-train-images", "64", "--batch-size", "32", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validation top-1" in done.stdout
    for noise in ("training_service", "RuntimeWarning", "GPU available", "litlogger", "LeafSpec", "Traceback"):
        assert noise not in output, noise


def test_conflicting_constraints_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--gmacs-lambda", "1", "--gmacs-budget", "0.1"])
    assert "not allowed with" in capsys.readouterr().err


def test_the_search_and_compare_flags_default_to_their_settings_defaults():
    from strategies.commands.cli import _settings, build_parser
    from strategies.commands.settings import CompareSettings

    parser = build_parser()
    assert _settings(SearchSettings, parser.parse_args(["search"])) == SearchSettings()
    assert _settings(CompareSettings, parser.parse_args(["compare"])) == CompareSettings()
    flags = ["search", "--lr", "0.1", "--alpha-lr", "0.2", "--gmacs-budget", "0.5", "--seed", "3"]
    assert _settings(SearchSettings, parser.parse_args(flags)) == SearchSettings(
        learning_rate=0.1, alpha_learning_rate=0.2, gmacs_budget=0.5, seed=3)


def test_search_runs_the_strategies_its_settings_accept():
    from strategies.commands.search import STRATEGIES
    from strategies.commands.settings import STRATEGY_NAMES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"strategy": "enas"}, "unknown strategy 'enas'"), ({"epochs": 0}, "epochs must be at least 1, got 0"),
     ({"max_train_images": 0}, "max_train_images must be at least 1"),
     ({"alpha_learning_rate": float("nan")}, "alpha_learning_rate must be a positive number"),
     ({"gmacs_lambda": 0.1, "gmacs_budget": 0.5}, "not both"), ({"placement": "inside"}, "placement must be one of")],
)
def test_search_settings_refuse_what_no_search_can_run(changes, message):
    import dataclasses

    with pytest.raises(ValueError, match=message):
        SearchSettings(**changes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchSettings().epochs = 2  # type: ignore[misc]
