"""A user's own space (a plain ``ModelSpace``, DynOPools without names) through the whole NNI
path: refused by strategies that cannot learn a scale, searched by DynOPoolDARTS, saved with
``save_search`` and rebuilt by what ``export`` and ``compare`` use."""

import json
import logging

import pytest
import torch
from nni.nas.evaluator.pytorch import Classification
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.strategy import DARTS, ENAS, Proxyless, RandomOneShot
from torch.utils.data import DataLoader, Subset
from user_space import UserSpace

from dynopool_nas import DigitsDataset, DynOPool2d, dynopool_layers
from search_spaces.arch import build_model
from search_spaces.registry import space_of, space_record
from strategies import DynOPoolDARTS
from strategies.commands.export import standalone_model
from strategies.export import export_architecture, save_search

SIZE = 12


@pytest.fixture(autouse=True)
def _quiet_nni():
    logging.getLogger("nni").setLevel(logging.ERROR)


def _evaluator() -> Classification:
    return Classification(
        train_dataloaders=DataLoader(Subset(DigitsDataset("train", SIZE), range(64)), batch_size=32),
        val_dataloaders=DataLoader(Subset(DigitsDataset("val", SIZE), range(64)), batch_size=64),
        max_epochs=1, num_classes=10, learning_rate=0.01, accelerator="cpu",
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )


@pytest.mark.parametrize("strategy", [DARTS(), Proxyless(), RandomOneShot(), ENAS()], ids=lambda s: type(s).__name__)
def test_nni_strategies_refuse_a_plain_model_space_with_dynopools(strategy):
    with pytest.raises(TypeError, match=r"cannot search DynOPool 'pool1'.*DynOPoolDARTS"):
        NasExperiment(UserSpace(), _evaluator(), strategy).run()


@pytest.fixture(scope="module")
def searched():
    torch.manual_seed(0)
    strategy = DynOPoolDARTS(input_size=(1, SIZE, SIZE), alpha_learning_rate=0.05)
    NasExperiment(UserSpace(width=4), _evaluator(), strategy).run()
    return strategy


def test_unnamed_dynopools_are_searched_exported_and_rebuilt_under_their_module_paths(searched):
    arch = export_architecture(searched)
    assert set(arch["scales"]) == set(arch["sizes"]) == {"pool1", "blocks.blocks.0.pool"}
    for depth in (1, 2):  # the frozen model's paths differ from the space's; the names do not
        model = build_model(UserSpace(width=4), arch | {"choices": arch["choices"] | {"depth": depth}})
        scales = {layer.name: list(layer.scale) for _, layer in dynopool_layers(model)}
        assert scales.keys() == arch["scales"].keys()
        assert all(scales[n] == pytest.approx(arch["scales"][n]) for n in scales)


def test_save_search_writes_what_export_and_compare_rebuild(searched, tmp_path):
    arch = save_search(searched, tmp_path)
    saved = json.loads((tmp_path / "arch.json").read_text())
    assert saved["space"] == "user_space:UserSpace" and saved["space_kwargs"] == {"width": 4}
    assert saved["num_classes"] == 10
    # compare rebuilds the space for its data set; export also loads the weights
    assert space_of(saved, num_classes=3, in_chans=1).head.out_features == 3
    exported = standalone_model(saved, tmp_path / "weights.pt")
    derived = build_model(searched.supernet, arch).eval()
    images = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), derived(images))


def test_a_space_that_cannot_be_rebuilt_is_refused_with_what_to_do():
    class Local(ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.pool = DynOPool2d()

    with pytest.raises(ValueError, match="importable module"):
        space_record(Local())
    with pytest.raises(ValueError, match="JSON"):
        space_record(UserSpace(width=torch.tensor(4)))
    with pytest.raises(ValueError, match="save_search"):
        space_of({"scales": {}}, 10, 1)
    with pytest.raises(ValueError, match="cannot import the space 'nowhere:Space'"):
        space_of({"space": "nowhere:Space"}, 10, 1)


def test_two_dynopools_with_one_name_are_refused():
    space = UserSpace()
    space.pool1.name = "blocks.blocks.0.pool"
    with pytest.raises(ValueError, match=r"both named 'blocks\.blocks\.0\.pool'"):
        build_model(space, {"schema_version": 1, "input_size": [1, SIZE, SIZE], "choices": {"op": 0, "depth": 1},
                            "scales": {}, "sizes": {}})
