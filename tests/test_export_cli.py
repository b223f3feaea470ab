import json
import logging
import shutil
import threading

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch

from dynopool_nas import count_macs, create_model, dynopool_layers, dynopoolify
from dynopool_nas._utils import CHECKSUMS, check_together, write_together
from search_spaces.arch import architecture_record, load_architecture, save_architecture
from search_spaces.registry import make_space, space_fields, space_of
from strategies.commands.cli import main
from strategies.commands.export import pareto_front, run_export, standalone_model
from strategies.commands.search import run_search
from strategies.commands.settings import SearchSettings


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("searches")
    models = {}
    for seed, space in ((0, "cells"), (1, "small_cnn")):
        settings = SearchSettings(space=space, epochs=1, output=root / space, image_size=12, batch_size=32,
                                  max_train_images=128, seed=seed)
        arch, model = run_search(settings)
        models[space] = (arch, model)
    return root, models


def test_exported_torchscript_and_onnx_compute_what_the_search_derived(searched, tmp_path, capsys):
    root, models = searched
    assert main(["export", str(root / "cells"), "--output", str(tmp_path)]) == 0
    assert "exported 1 model" in capsys.readouterr().out
    folder = next(tmp_path.glob("00_*"))
    scripted = torch.jit.load(str(folder / "model.pt"))
    onnx.checker.check_model(onnx.load(str(folder / "model.onnx")))
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4):  # the ONNX model takes any batch size, not only the example's
        x = torch.randn(batch, 1, 12, 12)
        with torch.no_grad():
            expected = models["cells"][1].eval()(x)
            assert torch.allclose(scripted(x), expected, atol=1e-5, rtol=1e-5)
        (logits,) = session.run(["logits"], {"images": x.numpy()})
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)
    assert json.loads((folder / "arch.json").read_text())["schema_version"] == 1
    check_together(folder, ["arch.json", "weights.pt", "model.pt", "model.onnx"])
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


def test_an_experiment_is_found_by_its_id_taken_literally(searched, tmp_path, monkeypatch):
    root, _ = searched
    experiments = tmp_path / "nni-experiments"
    shutil.copytree(root / "cells", experiments / "abc123" / "trials" / "t1")
    monkeypatch.setenv("NNI_EXPERIMENTS_DIR", str(experiments))
    monkeypatch.chdir(tmp_path)
    table = run_export("abc123", tmp_path / "out")
    assert len(table) == 1 and "abc123" in table["folder"].iloc[0]
    for pattern in ("zzz999", "abc*", "abc12?", "[a]bc123", "*"):  # an id is a name, never a pattern
        with pytest.raises(FileNotFoundError, match="neither a folder nor an experiment id"):
            run_export(pattern, tmp_path / "out")
    shutil.copytree(root / "cells", tmp_path / "runs" / "quick" / "abc123")
    with pytest.raises(ValueError, match="names 2 folders"):
        run_export("abc123", tmp_path / "out")


def test_weights_not_written_with_their_architecture_are_refused(searched, tmp_path):
    root, _ = searched
    result = shutil.copytree(root / "cells", tmp_path / "result")
    # a later run of the same space, killed after writing its weights and before its architecture
    weights = {name: tensor + 1 for name, tensor in torch.load(result / "weights.pt").items()}
    torch.save(weights, result / "weights.pt")
    with pytest.raises(ValueError, match=r"weights\.pt is not the file written with the rest"):
        run_export(result, tmp_path / "out")
    (result / CHECKSUMS).unlink()
    with pytest.raises(ValueError, match=f"has no {CHECKSUMS}"):
        run_export(result, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_export_replaces_its_output_as_a_whole(searched, tmp_path):
    root, _ = searched
    run_export(root, tmp_path / "out", front=True)
    run_export(root / "small_cnn", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00_small_cnn", "exported.csv"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="choose a new or empty folder"):
        run_export(root / "cells", tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_two_exports_into_one_folder_at_once_leave_one_whole_export(searched, tmp_path):
    root, _ = searched
    errors = []

    def export(source):
        try:
            run_export(root / source, tmp_path / "out")
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=export, args=(source,)) for source in ("cells", "small_cnn")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    folders = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(folders) == 1 and list(pd.read_csv(tmp_path / "out" / "exported.csv")["export"]) == [str(folders[0])]
    check_together(folders[0], ["arch.json", "weights.pt", "model.pt", "model.onnx"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def _converted_architecture(tmp_path, placement):
    """An architecture of a converted model, as a trial would export it, and its weights."""
    space = space_of({"space": "mobilenetv2_cifar", "placement": placement}, 10, 3)
    with torch.no_grad():
        space(torch.zeros(1, 3, 32, 32))
    layers = list(dynopool_layers(space))
    arch = architecture_record(
        (3, 32, 32), {}, {layer.name: layer.scale for _, layer in layers},
        {layer.name: layer.output_size for _, layer in layers}, num_classes=10,
        **space_fields("mobilenetv2_cifar", placement),
    )
    write_together(tmp_path, {"arch.json": lambda path: save_architecture(arch, path),
                              "weights.pt": lambda path: torch.save(space.state_dict(), path)})
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
