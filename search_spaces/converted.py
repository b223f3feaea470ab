"""Human-designed models converted with DynOPool, as spaces whose only dimension is the scale."""

from __future__ import annotations

from torch import Tensor

from dynopool_nas import create_model, dynopoolify

from .base import DynOPoolSpace

__all__ = ["ConvertedSpace"]


class ConvertedSpace(DynOPoolSpace):
    """``dynopoolify(create_model(model_name))`` as a search space (thesis section 4.4): VGG-16,
    ResNet-50, MobileNetV2 (CIFAR and ImageNet variants), EfficientNet-B0/B1, the small CNN."""

    def __init__(self, model_name: str, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.net = dynopoolify(create_model(model_name, num_classes=num_classes, in_chans=in_chans))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
