import pytest
import torch
from test_layer import backward_path, kernels  # noqa: F401  (fixtures)
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


def _small_model(scales=((0.6, 0.45), (0.7, 0.55), (0.5, 0.5))) -> nn.Module:
    torch.manual_seed(0)
    model = dynopoolify(create_model("small_cnn", num_classes=4, in_chans=2))
    with torch.no_grad():
        for (_, layer), scale in zip(dynopool_layers(model), scales):
            layer.alpha.copy_(1 / torch.tensor(scale))
    return model


def test_every_parameter_of_a_frozen_model_gets_a_gradient(backward_path):  # noqa: F811
    frozen = freeze_dynopools(_small_model(), (2, 20, 24))
    x = torch.randn(2, 2, 20, 24, requires_grad=True)
    frozen(x).square().sum().backward()
    missing = [name for name, p in frozen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing and x.grad.abs().sum() > 0
    scripted = torch.jit.script(frozen)
    x_script = x.detach().clone().requires_grad_(True)
    scripted(x_script).square().sum().backward()
    assert torch.allclose(x_script.grad, x.grad, rtol=1e-4, atol=1e-6)


def test_a_frozen_model_trains_like_the_learned_one_with_its_scales_held(backward_path):  # noqa: F811
    learned = _small_model()
    for _, layer in dynopool_layers(learned):
        layer.alpha.requires_grad_(False)
    frozen = freeze_dynopools(learned, (2, 20, 24))
    images, labels = torch.randn(8, 2, 20, 24), torch.randint(0, 4, (8,))
    curves = []
    for model in (learned, frozen):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        losses = []
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0] == curves[1]
    assert curves[0][-1] < curves[0][0]
