import logging
import shutil

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dynopool_nas import count_macs, dynopool_layers, freeze_dynopools, load_dataset
from search_spaces.arch import build_model, load_architecture
from search_spaces.registry import space_of
from strategies.commands.cli import main
from strategies.commands.compare import candidate_models, is_at_chance, run_compare
from strategies.commands.search import run_search
from strategies.commands.settings import CompareSettings, SearchSettings
from strategies.commands.trial import run_trial


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A one-epoch search at 13x13: odd sizes, so no DynOPool's query points are pixels."""
    folder = tmp_path_factory.mktemp("search") / "cells"
    arch, _ = run_search(SearchSettings(epochs=1, output=folder, image_size=13, batch_size=32, max_train_images=128,
                                        seed=0, alpha_learning_rate=0.05))
    return folder, arch


def _one_count(arch):
    """The GMACs of the rebuilt model, of its frozen form, and as arch.json records them."""
    input_size = tuple(arch["input_size"])
    rebuilt = build_model(space_of(arch, arch["num_classes"], input_size[0]), arch)
    frozen = freeze_dynopools(rebuilt, input_size)
    sampled = [layer.output_size for _, layer in dynopool_layers(rebuilt)]
    assert any(2 * h != input_size[1] for h, _ in sampled)  # the sampling is counted, not only the max
    return count_macs(rebuilt, input_size).gmacs, count_macs(frozen, input_size).gmacs


def test_search_export_and_compare_report_one_mac_count(searched, tmp_path):
    folder, arch = searched
    gmacs = load_architecture(folder / "arch.json")["metrics"]["gmacs"]
    assert _one_count(arch) == (gmacs, gmacs)  # exactly, not approximately
    table = run_compare(CompareSettings([folder], tmp_path, epochs=1, image_size=13, batch_size=32,
                                        max_train_images=32, baselines=()))
    assert table["gmacs"].tolist() == [gmacs]


def test_a_trial_reports_the_mac_count_of_its_model(tmp_path):
    metrics = run_trial({"scale": 0.6, "alpha_lr": 0.05}, space="small_cnn", epochs=1, image_size=13,
                        output_dir=tmp_path)
    arch = load_architecture(tmp_path / "arch.json")
    assert metrics["gmacs"] == arch["metrics"]["gmacs"]
    assert _one_count(arch) == (metrics["gmacs"], metrics["gmacs"])


def test_the_models_compare_trains_learn_with_every_weight(searched):
    _, arch = searched
    splits = load_dataset("digits", image_size=13)
    images = torch.stack([splits.train[i][0] for i in range(32)])
    labels = torch.tensor([splits.train[i][1] for i in range(32)])
    model = candidate_models([("found", arch)], 10, tuple(arch["input_size"]), baselines=(), seed=0)["found"].train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(12):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if step == 0:
            silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not silent, f"parameters without a gradient: {silent}"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_compare_trains_every_model_per_seed_and_reports_the_spread(searched, tmp_path, capsys):
    folder, _ = searched
    assert main(["compare", str(folder), "--output", str(tmp_path), "--epochs", "1", "--image-size", "16",
                 "--max-train-images", "64", "--batch-size", "32", "--seeds", "0", "1"]) == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["model"]) == ["efficientnet_b0", "efficientnet_b1", "dynopool:cells"]
    assert (table["n"] == 2).all() and table["top1_std"].notna().all()
    assert (table["gmacs"] > 0).all() and (table[["latency_ms_predicted", "latency_ms_measured"]] > 0).all().all()
    assert table["params"].iloc[1] > table["params"].iloc[0] > table["params"].iloc[2]
    val_images = len(load_dataset("digits", image_size=16).val)
    assert list(table["at_chance"]) == [is_at_chance(top1, 10, val_images) for top1 in table["top1_mean"]]
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert len(runs) == 6 and sorted(set(runs["seed"])) == [0, 1]
    report = (tmp_path / "comparison.md").read_text()
    assert "64 training images, 1 epochs" in report and "seeds [0, 1]" in report and "At chance" in report
    assert "| efficientnet_b1" in report
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison.png" in capsys.readouterr().out


def test_accuracy_at_chance_is_flagged():
    assert is_at_chance(0.1, 10, 360) and is_at_chance(0.14, 10, 360)  # 3 sd of guessing is 4.7 points here
    assert not is_at_chance(0.2, 10, 360) and not is_at_chance(0.9, 10, 360)


def test_compare_refuses_an_architecture_whose_weights_were_not_written_with_it(searched, tmp_path):
    folder, _ = searched
    result = shutil.copytree(folder, tmp_path / "result")
    (result / "weights.pt").write_bytes(b"from another run")
    with pytest.raises(ValueError, match=r"weights\.pt is not the file written with the rest"):
        run_compare(CompareSettings([result], tmp_path / "out", epochs=1, image_size=13, batch_size=32, baselines=()))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"seeds": []}, "seeds must be one or more different integers"),
     ({"seeds": [1, 1]}, r"seeds must be one or more different integers, got \[1, 1\]"),
     ({"baselines": ()}, "nothing to compare"), ({"lr": 0.0}, "lr must be a positive number")],
)
def test_compare_settings_refuse_what_no_comparison_can_run(changes, message):
    with pytest.raises(ValueError, match=message):
        CompareSettings(**changes)
    assert CompareSettings(["a.json"], seeds=[2, 0]).seeds == (2, 0)


def test_compare_reports_test_top1_on_a_data_set_with_a_test_split(searched, tmp_path):
    from test_data import _write_fashion

    folder, _ = searched
    _write_fashion(tmp_path / "fashion", n_train=120, n_test=7)  # validation: 10 images, test: 7
    table = run_compare(CompareSettings([folder], tmp_path / "out", dataset="fashion-mnist",
                                        data_dir=str(tmp_path / "fashion"), epochs=1, image_size=13, batch_size=16,
                                        seeds=[0, 1], baselines=()))
    runs = pd.read_csv(tmp_path / "out" / "comparison_runs.csv")
    assert {"top1", "test_top1"} <= set(runs.columns)
    assert all(abs(7 * value - round(7 * value)) < 1e-9 for value in runs["test_top1"])  # sevenths: the test split
    assert table["test_top1_mean"].iloc[0] == pytest.approx(runs["test_top1"].mean())
    report = (tmp_path / "out" / "comparison.md").read_text()
    assert "test top-1 (%)" in report and "validation top-1 (%)" in report


def test_compare_has_no_test_column_without_a_test_split(searched, tmp_path):
    folder, _ = searched
    table = run_compare(CompareSettings([folder], tmp_path, epochs=1, image_size=13, batch_size=32,
                                        max_train_images=32, baselines=()))
    assert "test_top1_mean" not in table and "test top-1" not in (tmp_path / "comparison.md").read_text()
