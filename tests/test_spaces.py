import subprocess
import sys

import pytest
import timm
import torch

from dynopool_nas import DynOPool2d, count_macs, dynopool_layers
from search_spaces.cells import DynOPoolCellSpace
from search_spaces.converted import ConvertedSpace
from search_spaces.efficientnet import EfficientNetSpace, efficientnet_choices


def _weights(model: torch.nn.Module) -> int:
    alphas = {id(layer.alpha) for _, layer in dynopool_layers(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in alphas)


@pytest.mark.parametrize(("variant", "size"), [("b0", 224), ("b1", 240)])
def test_fixed_choices_reproduce_timm_efficientnet(variant, size):
    model = EfficientNetSpace().freeze(efficientnet_choices(variant))
    reference = timm.create_model(f"efficientnet_{variant}")
    assert _weights(model) == sum(p.numel() for p in reference.parameters())
    assert len(list(dynopool_layers(model))) == 5
    assert count_macs(model, (3, size, size)).gmacs == pytest.approx(count_macs(reference, (3, size, size)).gmacs,
                                                                      rel=0.02)


def test_efficientnet_labels_left_out_default_to_b0():
    # a tuner's partial search space leaves labels out; the trial takes each one's default
    space = EfficientNetSpace(num_classes=10, width_multipliers=(0.5, 0.75), depth_multipliers=(1.2,))
    defaults = {label: mutable.default() for label, mutable in space.simplify().items()}
    assert defaults == efficientnet_choices("b0")
    reference = timm.create_model("efficientnet_b0", num_classes=10)
    assert _weights(space.freeze(defaults)) == sum(p.numel() for p in reference.parameters())


def test_efficientnet_choices_refuse_unknown_variants():
    with pytest.raises(ValueError, match="variant"):
        efficientnet_choices("b7")


def test_cell_space_reductions_share_one_dynopool_for_both_inputs():
    edges = ("s0_n0", "s1_n0", "s1_n1", "n0_n1")
    skips = {f"stage{s}_cell{c}_{e}": "skip" for s in range(3) for c in range(2) for e in edges}
    model = DynOPoolCellSpace(widths=(4, 8), depths=(1, 2), num_stages=3).freeze(
        {"width": 4, "depth0": 1, "depth1": 1, "depth2": 2} | skips
    )
    pools = [m for m in model.modules() if isinstance(m, DynOPool2d)]
    assert [p.name for p in pools] == ["reduce1", "reduce2"]
    assert model(torch.randn(2, 1, 16, 12)).shape == (2, 10)
    assert [p.output_size for p in pools] == [(8, 6), (4, 3)]


def test_converted_space_keeps_the_layer_names_of_the_model():
    space = ConvertedSpace("resnet50_cifar", num_classes=10)
    assert [layer.name for _, layer in dynopool_layers(space)] == ["layer2.0.bn2.2", "layer3.0.bn2.2", "layer4.0.bn2.2"]


def test_search_spaces_import_no_strategy_and_still_make_nni_refuse_dynopools():
    """The layering: search_spaces is below strategies. Importing it (every module of it) applies
    the package's NNI changes, the refusal of strategies that cannot search a scale included,
    and imports nothing of strategies."""
    program = (
        "import sys, pkgutil, importlib, search_spaces\n"
        "for module in pkgutil.iter_modules(search_spaces.__path__):\n"
        "    importlib.import_module(f'search_spaces.{module.name}')\n"
        "from nni.nas.oneshot.pytorch.strategy import OneShotStrategy\n"
        "assert OneShotStrategy.mutate_model._patched_by_dynopool\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'strategies'))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
