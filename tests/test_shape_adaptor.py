import pytest
import torch
import torch.nn.functional as F

from dynopool_nas import ShapeAdaptor2d, create_model, shape_adaptify


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
