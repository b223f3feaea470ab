import copy

import pytest
import torch
import torch.nn.functional as F

from dynopool_nas import ShapeAdaptor2d, create_model, param_groups, shape_adaptify
from dynopool_nas.shape_adaptor import sa_init


def test_mixes_the_two_resized_branches_with_its_sigmoid_weight():
    torch.manual_seed(0)
    adaptor = ShapeAdaptor2d(0.5, initial_ratio=0.7)
    assert adaptor.ratio == pytest.approx(0.7)
    x = torch.randn(2, 3, 10, 20, requires_grad=True)
    out = adaptor(x)
    assert out.shape[-2:] == (7, 14) == adaptor.output_size
    s = torch.sigmoid(adaptor.alpha.detach())
    expected = s * F.interpolate(F.max_pool2d(x, 2), size=(7, 14), mode="bilinear") + (1 - s) * F.interpolate(
        x, size=(7, 14), mode="bilinear")
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert adaptor.alpha.grad is not None and adaptor.alpha.grad != 0


@pytest.mark.parametrize("kwargs", [{"r1": 0.5, "initial_ratio": 0.5}, {"r1": 0.0}, {"aggregation": "median"}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        ShapeAdaptor2d(**kwargs)


def test_converts_the_same_places_as_dynopool_and_keeps_branches_shared():
    model = shape_adaptify(create_model("resnet50_cifar", num_classes=10))
    adaptors = [m for m in model.modules() if isinstance(m, ShapeAdaptor2d)]
    assert len(adaptors) == 3 and model.layer2[0].bn2[-1] is model.layer2[0].downsample[0]
    out = model(torch.randn(2, 3, 32, 40))
    out.sum().backward()
    assert all(a.alpha.grad is not None for a in adaptors)
    assert adaptors[0].output_size == (round(32 * 0.55), round(40 * 0.55))


# The authors' variant (Liu et al., ECCV 2020; lorenmt/shape-adaptor, model_list.py)


def _adaptors(model):
    return [m for m in model.modules() if isinstance(m, ShapeAdaptor2d)]


def test_sa_init_matches_the_authors_formula():
    # input * s**n = output, with their eps of 1e-4 added inside the log of the odds
    for count in (1, 2, 3, 4):
        target = 0.25 ** (1 / count)
        if 32 * 0.5**count > 8:
            assert sa_init(32, 8, count) == pytest.approx(0.5, abs=1e-4) and sa_init(32, 8, count) > 0.5
        else:
            odds = (target - 0.5) / (1 - target) + 1e-4
            assert sa_init(32, 8, count) == pytest.approx(0.5 + 0.5 * odds / (1 + odds), rel=1e-12)
            assert sa_init(32, 8, count) == pytest.approx(target, abs=1e-4)


@pytest.mark.parametrize("args", [(32, 8, 0), (32, 32, 2), (8, 32, 2), (32, 0, 2)])
def test_sa_init_refuses_bad_arguments(args):
    with pytest.raises(ValueError):
        sa_init(*args)


def test_authors_placement_on_the_small_cnn_at_32x32():
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    converted = shape_adaptify(model, placement="authors", input_size=32)
    assert model.features[3].__class__ is torch.nn.MaxPool2d  # the original is left alone
    adaptors = _adaptors(converted)
    # int(log2(32 / 2)) = 4 wanted, but only 3 convolution blocks before the last one: one after each
    assert [a.name for a in adaptors] == ["features.2.1", "features.6.1", "features.10.1"]
    assert all(isinstance(converted.features[i][0], torch.nn.ReLU) for i in (2, 6, 10))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in converted.modules())
    assert all(a.align_corners and a.size_rule == "truncate" and a.r1 == 0.5 for a in adaptors)
    assert all(a.ratio == pytest.approx(sa_init(32, 8, 3), abs=1e-6) for a in adaptors)
    converted(torch.zeros(1, 1, 32, 32))
    # the running dimension by hand: int(32 * 0.63) = 20, int(20 * 0.63) = 12, int(12 * 0.63) = 7
    assert [a.output_size for a in adaptors] == [(20, 20), (12, 12), (7, 7)]
    # the weights keep their state_dict keys: only the alphas are new
    new = set(converted.state_dict()) - set(model.state_dict())
    assert new == {f"{a.name}.alpha" for a in adaptors}


def test_authors_placement_on_vgg16_is_uniform_over_the_conv_blocks():
    converted = shape_adaptify(create_model("vgg16_cifar", num_classes=10, in_chans=1, width=0.125),
                               placement="authors", input_size=32)
    adaptors = _adaptors(converted)
    conv_blocks = [i for i, m in enumerate(converted.features) if isinstance(m, torch.nn.Conv2d)]
    # 13 convolutions, 12 places, 4 adaptors: places 0, 3, 6, 9 (each after its block's ReLU at conv + 2)
    assert [a.name for a in adaptors] == [f"features.{conv_blocks[k] + 2}.1" for k in (0, 3, 6, 9)]
    converted(torch.zeros(1, 1, 32, 32))
    # s = 0.25 ** (1/4) = 0.7071: int(32 s) = 22, int(22 s) = 15, int(15 s) = 10, int(10 s) = 7
    assert [a.output_size[0] for a in adaptors] == [22, 15, 10, 7]
    # rounded instead of truncated, the last map is SA_init's 8
    rounded = shape_adaptify(create_model("vgg16_cifar", num_classes=10, in_chans=1, width=0.125),
                             placement="authors", input_size=32, size_rule="round")
    rounded(torch.zeros(1, 1, 32, 32))
    assert [a.output_size[0] for a in _adaptors(rounded)] == [23, 16, 11, 8]
    wide = shape_adaptify(create_model("vgg16_cifar", num_classes=10, in_chans=1, width=0.125),
                          placement="authors", input_size=64)
    assert len(_adaptors(wide)) == 5  # int(log2(64 / 2))


def test_authors_adaptor_resizes_with_align_corners_and_truncates():
    torch.manual_seed(0)
    adaptor = ShapeAdaptor2d(0.5, initial_ratio=0.66, align_corners=True, size_rule="truncate")
    x = torch.randn(2, 3, 10, 15)
    out = adaptor(x)
    assert out.shape[-2:] == (6, 9)  # int(6.6), int(9.9); rounded: (7, 10)
    assert ShapeAdaptor2d(0.5, initial_ratio=0.66).size_for(10, 15) == (7, 10)
    s = torch.sigmoid(adaptor.alpha.detach())
    expected = s * F.interpolate(F.max_pool2d(x, 2), size=(6, 9), mode="bilinear", align_corners=True) + (
        1 - s) * F.interpolate(x, size=(6, 9), mode="bilinear", align_corners=True)
    assert torch.allclose(out, expected, atol=1e-6)
    unaligned = s * F.interpolate(F.max_pool2d(x, 2), size=(6, 9), mode="bilinear") + (1 - s) * F.interpolate(
        x, size=(6, 9), mode="bilinear")
    assert not torch.allclose(out, unaligned, atol=1e-3)
    # the corners of an aligned resize are the input's corners
    identity_branch = F.interpolate(x, size=(6, 9), mode="bilinear", align_corners=True)
    assert torch.equal(identity_branch[..., 0, 0], x[..., 0, 0]) and torch.equal(identity_branch[..., -1, -1],
                                                                               x[..., -1, -1])
    assert ShapeAdaptor2d(0.5, 0.55, size_rule="truncate").size_for(1, 1) == (1, 1)  # at least 1


def test_gradients_reach_every_alpha_and_a_trained_step_survives_a_deepcopy():
    torch.manual_seed(0)
    model = shape_adaptify(create_model("small_cnn", num_classes=10, in_chans=1), placement="authors", input_size=32)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.05, alpha_lr=0.1, scale_step="plain"), momentum=0.9)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    alphas = [a.alpha for a in _adaptors(model)]
    assert all(alpha.grad is not None and alpha.grad.abs() > 0 for alpha in alphas)
    before = [float(alpha.detach()) for alpha in alphas]
    optimizer.step()
    assert all(float(alpha.detach()) != b for alpha, b in zip(alphas, before))
    copied = copy.deepcopy(model)
    model.eval()
    copied.eval()
    assert torch.equal(model(x), copied(x))
    assert [a.output_size for a in _adaptors(copied)] == [a.output_size for a in _adaptors(model)]
    assert all(a.alpha is not b.alpha for a, b in zip(_adaptors(copied), _adaptors(model)))


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("small_cnn", {"placement": "sideways"}, "placement"),
        ("small_cnn", {"placement": "authors"}, "input_size"),
        ("small_cnn", {"placement": "authors", "input_size": 32, "count": 4}, "only 3"),
        ("small_cnn", {"placement": "authors", "input_size": 32, "count": 0}, "at least 1"),
        ("small_cnn", {"placement": "authors", "input_size": 2}, "at least 1"),
        ("small_cnn", {"placement": "authors", "input_size": 32, "size_rule": "ceil"}, "size_rule"),
        ("small_cnn", {"count": 3}, "authors"),
        ("resnet_cifar", {"placement": "authors", "input_size": 32}, "strided"),
        ("resnet50_cifar", {"placement": "authors", "input_size": 32}, "strided"),
    ],
)
def test_bad_conversions_are_refused(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shape_adaptify(create_model(model, num_classes=10), **kwargs)


def test_authors_placement_needs_one_sequential_of_convolutions():
    class TwoPaths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(ValueError, match=r"nn\.Sequential"):
        shape_adaptify(TwoPaths(), placement="authors", input_size=32)


def test_the_forward_refuses_a_batch_without_spatial_axes():
    with pytest.raises(ValueError, match="4-D"):
        ShapeAdaptor2d()(torch.randn(3, 8, 8))
