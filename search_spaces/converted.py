"""Human-designed models converted with DynOPool, as spaces whose only dimension is the scale."""

from __future__ import annotations

from nni.nas.nn.pytorch import ModelSpace
from torch import Tensor

from dynopool_nas import create_model, dynopoolify
from dynopool_nas.convert import Placement

__all__ = ["ConvertedSpace"]


class ConvertedSpace(ModelSpace):
    """``dynopoolify(create_model(model_name), placement=placement)`` as a search space (thesis
    section 4.4): VGG-16, ResNet-50, MobileNetV2 (CIFAR and ImageNet variants), EfficientNet-B0/B1,
    the small CNN. ``placement='before'`` resizes in front of each formerly strided convolution,
    which keeps the human model's MACs at the initial scales (eq. 5.2 is ``'after'``)."""

    def __init__(self, model_name: str, num_classes: int, in_chans: int = 3, placement: Placement = "after") -> None:
        super().__init__()
        model = create_model(model_name, num_classes=num_classes, in_chans=in_chans)
        self.net = dynopoolify(model, placement=placement)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
