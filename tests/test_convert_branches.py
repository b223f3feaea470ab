"""Conversion of models whose branches meet, of even-kernel downsampling, and of NNI spaces: a
converted model must keep training while its scales move, or the conversion must say why not."""

import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dynopool_nas import DynOPool2d, dynopool_layers, dynopoolify


def _timm(name):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10)


def _torchvision(name, **kwargs):
    return lambda: getattr(torchvision.models, name)(num_classes=10, **kwargs)


# (model, number of DynOPools once the branches that meet share one)
MODELS = {
    "timm-resnet18": (_timm("resnet18"), 4),
    "timm-regnetx_002": (_timm("regnetx_002"), 5),
    "timm-mobilenetv3_small_100": (_timm("mobilenetv3_small_100"), 5),
    "timm-efficientnet_b0": (_timm("efficientnet_b0"), 5),
    "tv-shufflenet_v2_x0_5": (_torchvision("shufflenet_v2_x0_5"), 5),
    "tv-resnet18": (_torchvision("resnet18"), 4),
    "tv-densenet121": (_torchvision("densenet121"), 5),
    "tv-googlenet": (_torchvision("googlenet", aux_logits=False, init_weights=False), 5),
}


def _spread_scales(model):
    """Give every DynOPool its own scale per axis, so that two unshared branches would differ."""
    with torch.no_grad():
        for index, (_, layer) in enumerate(dynopool_layers(model)):
            layer.alpha.mul_(torch.tensor([1.0 + 0.3 * (index + 1), 1.0 + 0.2 * (index + 1)]))


def _train(model, steps, input_hw=(48, 40), alpha_lr=0.3):
    """A few SGD steps on the weights and large Adam steps on the scales; returns the sizes
    before and after."""
    layers = [layer for _, layer in dynopool_layers(model)]
    alphas = [layer.alpha for layer in layers]
    weights = [p for p in model.parameters() if all(p is not a for a in alphas)]
    optimizers = [torch.optim.SGD(weights, lr=0.01), torch.optim.Adam(alphas, lr=alpha_lr)]
    x, y = torch.randn(2, 3, *input_hw), torch.tensor([1, 7])
    sizes = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        sizes.append([layer.output_size for layer in layers])
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    model(x)
    sizes.append([layer.output_size for layer in layers])
    return sizes[0], sizes[-1]


@pytest.mark.parametrize("name", list(MODELS))
def test_branches_that_meet_share_one_dynopool_and_train_while_scales_move(name):
    build, count = MODELS[name]
    model = dynopoolify(build())
    assert len(list(dynopool_layers(model))) == count
    assert not any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in model.modules())
    _spread_scales(model)
    first, last = _train(model, steps=3)
    assert first != last  # the scales moved and the branches kept agreeing


def test_timm_resnet_block_shares_its_dynopool_between_main_path_and_shortcut():
    model = dynopoolify(timm.create_model("resnet18", pretrained=False, num_classes=10))
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert isinstance(block.aa, DynOPool2d)
        assert any(m is block.aa for m in block.downsample.modules())


def test_shufflenet_concatenated_branches_share_one_dynopool():
    model = dynopoolify(torchvision.models.shufflenet_v2_x0_5(num_classes=10))
    unit = model.stage2[0]
    branch1 = [m for m in unit.branch1.modules() if isinstance(m, DynOPool2d)]
    branch2 = [m for m in unit.branch2.modules() if isinstance(m, DynOPool2d)]
    assert len(branch1) == len(branch2) == 1 and branch1[0] is branch2[0]


class _TwoAgainstOne(nn.Module):
    """Two stride-2 convolutions on one branch, one 4x4 pool on the other."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
        self.right = nn.AvgPool2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.left(x) + self.right(x))


def test_branches_that_meet_after_different_resizers_are_refused_with_where():
    with pytest.raises(ValueError, match=r"meet after different resizers.*left\.0.*left\.1.*right"):
        dynopoolify(_TwoAgainstOne())


def test_a_head_that_needs_one_feature_map_size_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    with pytest.raises(ValueError, match="global pooling"):
        dynopoolify(model)


class _FactorizedReduce(nn.Module):
    """DARTS's reduction of a skip connection: two stride-2 1x1 convolutions, one on the map
    shifted by a pixel (pad, then crop), concatenated."""

    def __init__(self):
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 4, 1, stride=2)
        self.conv_2 = nn.Conv2d(3, 4, 1, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.head(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def test_a_pad_and_crop_on_one_branch_does_not_count_as_a_resizer():
    model = dynopoolify(_FactorizedReduce())
    assert len(list(dynopool_layers(model))) == 1
    _spread_scales(model)
    _train(model, steps=2, input_hw=(15, 17))


class _Upsampled(nn.Module):
    """A feature-pyramid step: a downsampled branch resized back to the skip's size."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        skip = self.skip(x)
        return self.head(skip + F.interpolate(self.down(x), size=skip.shape[-2:]))


def test_a_map_resized_to_another_maps_size_meets_it_without_sharing():
    model = dynopoolify(_Upsampled())
    _spread_scales(model)
    first, last = _train(model, steps=2, input_hw=(16, 20))
    assert first != last


class _OnlySquare64(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        if x.shape[-2:] != (64, 64):
            raise ValueError("this model takes 64x64 images")
        return self.features(x)


def test_example_input_sets_the_probe_input():
    with pytest.raises(ValueError, match="example_input"):
        dynopoolify(_OnlySquare64())
    model = dynopoolify(_OnlySquare64(), example_input=torch.zeros(1, 3, 64, 64))
    assert len(list(dynopool_layers(model))) == 1
    with pytest.raises(ValueError, match="4-D tensor"):
        dynopoolify(_OnlySquare64(), example_input=torch.zeros(3, 64, 64))


def test_conversion_leaves_modes_and_statistics_as_they_were():
    human = torchvision.models.resnet18(num_classes=10)
    human.layer1.eval()
    running = human.bn1.running_mean.clone()
    model = dynopoolify(human)
    assert model.training and not model.layer1.training and model.layer2.training
    assert torch.equal(model.bn1.running_mean, running) and int(model.bn1.num_batches_tracked) == 0
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))


def test_converting_a_shared_model_again_changes_nothing():
    once = dynopoolify(timm.create_model("resnet18", pretrained=False, num_classes=10))
    twice = dynopoolify(once)
    assert repr(twice) == repr(once)
    assert [name for name, _ in dynopool_layers(twice)] == [name for name, _ in dynopool_layers(once)]


# -- even-kernel patchify and downsampling convolutions (ConvNeXt) -----------------------------


def test_convnext_converts_its_patchify_and_downsampling_convolutions_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = dynopoolify(timm.create_model("convnext_atto", pretrained=False, num_classes=10))
    layers = dict(dynopool_layers(model))
    assert [r for layer in layers.values() for r in layer.scale] == pytest.approx([0.25] * 2 + [0.5] * 6)
    assert not any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in model.modules())
    _spread_scales(model)
    first, last = _train(model, steps=2, input_hw=(64, 56))
    assert first != last


@pytest.mark.parametrize(("kernel", "stride"), [(2, 2), (4, 4), (3, 2)])
def test_unpadded_strided_conv_runs_at_stride_one_with_the_human_outputs_inside(kernel, stride):
    """At stride 1 with 'same' padding, the human output i is the stride-1 output at
    stride * i + (kernel - 1) // 2; at the human scale, the DynOPool's cell i covers it."""
    torch.manual_seed(0)
    human = nn.Sequential(nn.Conv2d(2, 3, kernel, stride=stride))
    model = dynopoolify(human)
    padded_conv, pool = model[0][:-1], model[0][-1]
    x = torch.randn(1, 2, 4 * stride, 4 * stride)
    with torch.no_grad():
        full, expected, out = padded_conv(x), human(x), model(x)
    assert isinstance(pool, DynOPool2d) and pool.scale == pytest.approx((1 / stride, 1 / stride))
    assert full.shape[-2:] == x.shape[-2:] and out.shape[-2:] == (4, 4)
    offset = (kernel - 1) // 2
    height, width = expected.shape[-2:]
    assert torch.allclose(full[..., offset::stride, offset::stride][..., :height, :width], expected, atol=1e-6)
    if kernel == stride == 2:  # on even sizes the cell is exactly the 2x2 window with the human output
        assert torch.allclose(out, F.max_pool2d(full, 2), atol=1e-6)
        assert torch.all(out >= expected - 1e-6)


# -- NNI's own spaces ----------------------------------------------------------------------------


def _random_sample(space, seed=0):
    """One architecture of ``space``, the same every run (NNI samples with numpy's RandomState)."""
    sample, random_state = {}, np.random.RandomState(seed)
    for mutable in space.simplify().values():
        mutable.random(memo=sample, random_state=random_state)
    return sample


@pytest.fixture(scope="module")
def hub():
    from nni.nas.hub import pytorch as hub

    return hub


def test_nni_mobilenetv3_space_is_refused_and_its_frozen_model_converts(hub):
    space = hub.MobileNetV3Space(num_labels=10, width_multipliers=(0.5,), expand_ratios=(3.0,))
    with pytest.raises(ValueError, match=r"NNI search space.*ConvertedSpace.*DynOPoolCellSpace.*EfficientNetSpace"):
        dynopoolify(space)
    torch.manual_seed(0)
    model = dynopoolify(space.freeze(_random_sample(space)))
    assert not any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in model.modules())
    _spread_scales(model)
    first, last = _train(model, steps=2, input_hw=(48, 40))
    assert first != last


def test_nni_darts_space_is_refused_and_its_frozen_cells_share_one_dynopool_per_reduction(hub):
    space = hub.DARTS(width=8, num_cells=3, dataset="cifar")
    with pytest.raises(ValueError, match=r"NNI search space.*choices left"):
        dynopoolify(space)
    torch.manual_seed(0)
    model = dynopoolify(space.freeze(_random_sample(space)))
    assert len(list(dynopool_layers(model))) == 2  # the two reduction cells, each one scale
    _spread_scales(model)
    out = model(torch.randn(2, 3, 32, 28))
    assert out.shape == (2, 10)
