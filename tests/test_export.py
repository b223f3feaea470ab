import pytest
import torch
from torch import nn

from dynopool_nas import DynOPool2d, FixedDynOPool2d, create_model, dynopool_layers, dynopoolify, freeze_dynopools


@pytest.mark.parametrize("scale", [(0.5, 0.5), (0.43, 0.61), (1.7, 0.8)])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_fixed_resizer_computes_exactly_what_the_learned_layer_computed(scale, aggregation):
    x = torch.randn(2, 3, 18, 22)
    layer = DynOPool2d(scale, aggregation=aggregation)
    expected = layer(x)
    assert torch.equal(FixedDynOPool2d(layer.output_size, aggregation)(x), expected)


def test_frozen_model_equals_the_trained_one_and_keeps_sharing():
    torch.manual_seed(0)
    model = dynopoolify(create_model("resnet50_cifar", num_classes=10)).eval()
    with torch.no_grad():
        for _, layer in dynopool_layers(model):
            layer.alpha.copy_(1 / torch.tensor([0.6, 0.45]))
    x = torch.randn(2, 3, 32, 40)
    frozen = freeze_dynopools(model, (3, 32, 40)).eval()
    assert not any(isinstance(m, DynOPool2d) for m in frozen.modules())
    assert not any(name.endswith("alpha") for name, _ in frozen.named_parameters())
    block = frozen.layer2[0]
    assert block.bn2[-1] is block.downsample[0]
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))


@pytest.mark.parametrize("output_size", [(0, 3), (2,), (2, 2, 2)])
def test_fixed_resizer_refuses_bad_sizes(output_size):
    with pytest.raises(ValueError, match="output_size"):
        FixedDynOPool2d(output_size)


def test_freezing_a_model_without_dynopool_is_an_error():
    with pytest.raises(ValueError, match="no DynOPool2d"):
        freeze_dynopools(nn.Sequential(nn.Conv2d(3, 3, 1)), (3, 8, 8))
