import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from dynopool_nas import DynOPool2d, count_macs, create_model, dynopool_layers, dynopoolify, param_groups

# (model, input size for the forward test, number of DynOPools)
FAMILIES = [
    ("vgg16", (48, 64), 5),
    ("vgg16_bn", (48, 64), 5),
    ("resnet50", (64, 48), 4),
    ("mobilenet_v2", (48, 64), 5),
    ("efficientnet_b0", (64, 48), 5),
    ("efficientnet_b1", (48, 64), 5),
    ("vgg16_cifar", (32, 40), 4),
    ("resnet50_cifar", (40, 32), 3),
    ("mobilenetv2_cifar", (32, 40), 3),
]


def _strided(model: nn.Module) -> list[str]:
    resizers = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    return [
        name for name, m in model.named_modules()
        if isinstance(m, resizers) and max(m.stride if isinstance(m.stride, tuple) else (m.stride,)) > 1
    ]


@pytest.mark.parametrize(("name", "input_hw", "count"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_converts_and_trains_on_a_non_square_input(name, input_hw, count):
    torch.manual_seed(0)
    model = dynopoolify(create_model(name, num_classes=10))
    layers = dict(dynopool_layers(model))
    assert len(layers) == count
    assert _strided(model) == []
    assert all(layer.name == path for path, layer in layers.items())
    out = model(torch.randn(2, 3, *input_hw))
    assert out.shape == (2, 10)
    out.logsumexp(dim=1).sum().backward()
    for path, layer in layers.items():
        assert layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0, path
        assert layer.output_size[0] != layer.output_size[1] or layer.output_size == (2, 2), path


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("vgg16_cifar", [16, 8, 4, 2]), ("resnet50_cifar", [16, 8, 4]), ("mobilenetv2_cifar", [16, 8, 4]),
     ("resnet_cifar", [16, 8])],
)
def test_cifar_models_have_table_5_1_human_feature_map_sizes(name, sizes):
    model = dynopoolify(create_model(name, num_classes=100))
    model(torch.randn(1, 3, 32, 32))
    assert [layer.output_size for _, layer in dynopool_layers(model)] == [(s, s) for s in sizes]


def test_converted_vgg16_at_half_scale_equals_the_human_model():
    torch.manual_seed(0)
    human = create_model("vgg16", num_classes=10).eval()
    converted = dynopoolify(human).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(converted(x), human(x), atol=1e-6, rtol=1e-5)


def test_resnet_blocks_share_one_dynopool_between_main_path_and_shortcut():
    model = dynopoolify(create_model("resnet50", num_classes=10))
    assert isinstance(model.maxpool, DynOPool2d) and model.maxpool.scale == pytest.approx((0.25, 0.25))
    assert model.conv1.stride == (1, 1)
    downsampling = [b for b in model.modules() if isinstance(b, Bottleneck) and isinstance(b.bn2, nn.Sequential)]
    assert len(downsampling) == 3
    for block in downsampling:
        assert block.bn2[-1] is block.downsample[0]
    model(torch.randn(1, 3, 64, 80))


def test_efficientnet_uses_the_anti_aliasing_slot_after_the_activation():
    model = dynopoolify(create_model("efficientnet_b0", num_classes=10))
    assert model.conv_stem.stride == (1, 1) and isinstance(model.bn1[-1], DynOPool2d)
    pools = [m for m in model.blocks.modules() if isinstance(getattr(m, "aa", None), DynOPool2d)]
    assert len(pools) == 4
    assert all(m.conv_dw.stride == (1, 1) for m in pools)


def test_pools_keep_their_aggregation_and_global_pooling_stays():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.MaxPool2d(3, stride=3), nn.AdaptiveAvgPool2d(1))
    converted = dynopoolify(model)
    assert converted[1].aggregation == "mean" and converted[3].aggregation == "max"
    assert converted[3].scale == pytest.approx((1 / 3, 1 / 3))
    assert isinstance(converted[4], nn.AdaptiveAvgPool2d)
    assert isinstance(model[1], nn.AvgPool2d)  # the original is untouched


def test_strided_conv_outside_a_sequential_gets_a_dynopool_after_it():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    converted = dynopoolify(Net())
    assert converted(torch.randn(1, 3, 10, 12)).shape == (1, 4, 5, 6)


@pytest.mark.parametrize(("name", "size"), [("resnet50", 64), ("mobilenet_v2", 64), ("efficientnet_b0", 64),
                                            ("resnet50_cifar", 32), ("mobilenetv2_cifar", 32), ("resnet_cifar", 32)])
def test_placement_before_keeps_the_human_models_macs_at_the_initial_scales(name, size):
    human = create_model(name, num_classes=10)
    before, after = (dynopoolify(human, placement=placement) for placement in ("before", "after"))
    assert _strided(before) == []
    human_macs = count_macs(human, (3, size, size)).total
    assert count_macs(before, (3, size, size)).total == pytest.approx(human_macs, rel=0.01)
    assert count_macs(after, (3, size, size)).total > 1.02 * human_macs  # eq. 5.2 runs those convs at stride 1
    x = torch.randn(2, 3, size, size)
    assert before(x).shape == human(x).shape


def test_placement_before_puts_the_dynopool_in_front_of_the_convolution():
    model = dynopoolify(create_model("resnet50", num_classes=10), placement="before")
    block = model.layer2[0]
    assert isinstance(block.conv2, nn.Sequential) and isinstance(block.conv2[0], DynOPool2d)
    assert block.conv2[1].stride == (1, 1) and block.downsample[0] is block.conv2[0]
    assert isinstance(model.conv1[0], DynOPool2d) and isinstance(model.maxpool, DynOPool2d)


def test_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="placement must be one of"):
        dynopoolify(create_model("vgg16_cifar", num_classes=10), placement="inside")


def test_nothing_to_convert_is_an_error():
    with pytest.raises(ValueError, match="nothing to replace"):
        dynopoolify(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1)))


def test_converting_twice_changes_nothing():
    once = dynopoolify(create_model("mobilenetv2_cifar", num_classes=10))
    twice = dynopoolify(copy.deepcopy(once))
    assert repr(twice) == repr(once)
    assert once.state_dict().keys() == twice.state_dict().keys()


def test_param_groups_put_alphas_apart_without_weight_decay():
    model = dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1))
    weights, alphas = param_groups(model, lr=0.1, weight_decay=5e-4)
    assert alphas["lr"] == pytest.approx(0.01) and alphas["weight_decay"] == 0.0
    assert [id(p) for p in alphas["params"]] == [id(layer.alpha) for _, layer in dynopool_layers(model)]
    assert len(weights["params"]) + len(alphas["params"]) == len(list(model.parameters()))
    assert param_groups(model, lr=0.1, alpha_lr=0.003)[1]["lr"] == 0.003


def test_width_options_scale_every_layer_and_keep_the_human_resizers():
    narrow, full = create_model("vgg16_cifar", 10, in_chans=1, width=0.125), create_model("vgg16_cifar", 10, in_chans=1)
    widths = [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [max(round(m.out_channels / 8), 1) for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert widths[0] == 8 and widths[-1] == 64
    assert len(dict(dynopool_layers(dynopoolify(narrow)))) == 4
    with pytest.raises(ValueError, match="width"):
        create_model("vgg16_cifar", 10, width=0)


@pytest.mark.parametrize("depth", [8, 14])
def test_cifar_resnet_has_its_depth_and_shares_one_dynopool_per_strided_block(depth):
    model = create_model("resnet_cifar", 10, in_chans=1, depth=depth)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convolutions plus the classifier
    converted = dynopoolify(model)
    assert len(dict(dynopool_layers(converted))) == 2  # the block's conv and its shortcut resize as one
    assert converted(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n"):
        create_model("resnet_cifar", 10, depth=10)
