import json
import logging

import pytest
import torch

from dynopool_nas.cli import main
from strategies.arch import build_model, load_architecture
from strategies.search import make_space, run_search


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
    arch, derived = run_search("cells", "darts", "digits", epochs=1, output=tmp_path, image_size=12,
                               batch_size=32, max_train_images=128, gmacs_budget=6e-4)
    rebuilt = build_model(make_space("cells", 10, 1), load_architecture(tmp_path / "arch.json"))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), derived.eval()(x))
    assert arch["metrics"]["gmacs"] == pytest.approx(6e-4, rel=0.05)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--space", "nowhere"], "unknown space"), (["--dataset", "cifar100"], "--data-dir"),
     (["--epochs", "0"], "at least 1")],
)
def test_bad_search_arguments_are_refused(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        main(["search", "--output", str(tmp_path), *arguments])


def test_conflicting_constraints_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--gmacs-lambda", "1", "--gmacs-budget", "0.1"])
    assert "not allowed with" in capsys.readouterr().err
