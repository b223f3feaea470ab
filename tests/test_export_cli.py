import json
import logging

import onnx
import pandas as pd
import pytest
import torch

from dynopool_nas import count_macs, create_model, dynopool_layers, dynopoolify
from dynopool_nas.cli import main
from strategies.arch import SCHEMA_VERSION, load_architecture, save_architecture
from strategies.search import make_space, run_search, space_fields, space_of
from strategies.standalone import pareto_front, run_export, standalone_model


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("searches")
    models = {}
    for seed, space in ((0, "cells"), (1, "small_cnn")):
        arch, model = run_search(space, "darts", "digits", epochs=1, output=root / space, image_size=12,
                                 batch_size=32, max_train_images=128, seed=seed)
        models[space] = (arch, model)
    return root, models


def test_exported_torchscript_and_onnx_compute_what_the_search_derived(searched, tmp_path, capsys):
    root, models = searched
    assert main(["export", str(root / "cells"), "--output", str(tmp_path)]) == 0
    assert "exported 1 model" in capsys.readouterr().out
    folder = next(tmp_path.glob("00_*"))
    scripted = torch.jit.load(str(folder / "model.pt"))
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        expected = models["cells"][1].eval()(x)
        assert torch.allclose(scripted(x), expected, atol=1e-5, rtol=1e-5)
    onnx.checker.check_model(onnx.load(str(folder / "model.onnx")))
    assert json.loads((folder / "arch.json").read_text())["schema_version"] == 1
    assert len(pd.read_csv(tmp_path / "exported.csv")) == 1


def test_front_export_covers_every_non_dominated_search(searched, tmp_path):
    root, _ = searched
    table = run_export(root, tmp_path, front=True)
    assert 1 <= len(table) <= 2 and all((tmp_path / f).is_dir() for f in table["export"])


def test_pareto_front_keeps_only_non_dominated_rows():
    table = pd.DataFrame({"top1": [0.9, 0.8, 0.85, 0.7], "gmacs": [2.0, 1.0, 2.5, 1.0], "folder": list("abcd")})
    assert list(pareto_front(table)["folder"]) == ["b", "a"]


def test_weights_of_another_architecture_are_refused(searched):
    root, _ = searched
    arch = json.loads((root / "cells" / "arch.json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        standalone_model(arch, root / "small_cnn" / "weights.pt")
    with pytest.raises(ValueError, match="lacks"):
        standalone_model({k: v for k, v in arch.items() if k != "space"}, root / "cells" / "weights.pt")


def test_export_of_a_folder_without_architectures_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no arch\.json"):
        run_export(tmp_path, tmp_path / "out")


def test_compare_trains_the_baselines_and_the_discovered_architecture(searched, tmp_path, capsys):
    root, _ = searched
    assert main(["compare", str(root / "cells"), "--output", str(tmp_path), "--epochs", "1", "--image-size", "16",
                 "--max-train-images", "128", "--batch-size", "32"]) == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["model"]) == ["efficientnet_b0", "efficientnet_b1", "dynopool:cells"]
    assert (table["gmacs"] > 0).all() and (table["cpu_latency_ms"] > 0).all()
    assert table["params"].iloc[1] > table["params"].iloc[0] > table["params"].iloc[2]
    assert "| efficientnet_b1" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison.png" in capsys.readouterr().out


def test_an_experiment_is_found_by_its_id(searched, tmp_path, monkeypatch):
    root, _ = searched
    experiments = tmp_path / "nni-experiments"
    (experiments / "abc123" / "trials").mkdir(parents=True)
    for name in ("arch.json", "weights.pt"):
        (experiments / "abc123" / "trials" / name).write_bytes((root / "cells" / name).read_bytes())
    monkeypatch.setenv("NNI_EXPERIMENTS_DIR", str(experiments))
    table = run_export("abc123", tmp_path / "out")
    assert len(table) == 1 and "abc123" in table["folder"].iloc[0]
    with pytest.raises(FileNotFoundError, match="neither a folder nor an experiment id"):
        run_export("zzz999", tmp_path / "out")


def _converted_architecture(tmp_path, placement):
    """An architecture of a converted model, as a trial would export it, and its weights."""
    space = space_of({"space": "mobilenetv2_cifar", "placement": placement}, 10, 3)
    with torch.no_grad():
        space(torch.zeros(1, 3, 32, 32))
    layers = list(dynopool_layers(space))
    arch = {
        "schema_version": SCHEMA_VERSION, "input_size": [3, 32, 32], "choices": {},
        "scales": {layer.name: list(layer.scale) for _, layer in layers},
        "sizes": {layer.name: list(layer.output_size) for _, layer in layers},
        "num_classes": 10, **space_fields("mobilenetv2_cifar", placement),
    }
    save_architecture(arch, tmp_path / "arch.json")
    torch.save(space.state_dict(), tmp_path / "weights.pt")
    return space, load_architecture(tmp_path / "arch.json")


@pytest.mark.parametrize("placement", ["after", "before"])
def test_a_converted_models_placement_travels_with_its_architecture(tmp_path, placement):
    space, arch = _converted_architecture(tmp_path, placement)
    assert arch["placement"] == placement
    model = standalone_model(arch, tmp_path / "weights.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), space.eval()(x), atol=1e-5)
    assert count_macs(model, (3, 32, 32)).total == pytest.approx(
        count_macs(dynopoolify(create_model("mobilenetv2_cifar", 10), placement=placement), (3, 32, 32)).total,
        rel=0.01)


def test_placement_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="applies to converted models"):
        make_space("cells", 10, 1, placement="before")
    with pytest.raises(ValueError, match="placement must be one of"):
        make_space("mobilenetv2_cifar", 10, 3, placement="inside")


def test_an_architecture_with_an_unknown_placement_is_refused(tmp_path):
    _, arch = _converted_architecture(tmp_path, "before")
    (tmp_path / "arch.json").write_text(json.dumps(arch | {"placement": "inside"}))
    with pytest.raises(ValueError, match="placement 'inside' is not one of"):
        load_architecture(tmp_path / "arch.json")
