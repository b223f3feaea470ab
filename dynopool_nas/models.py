"""Human-designed models of the thesis (section 5.1), for conversion with ``dynopoolify``.

ImageNet-size models come from torchvision and timm unchanged. The CIFAR-size (32x32) ones
follow the Shape Adaptor setup the thesis uses (section 5.2.1): one fully connected layer
after global average pooling, and feature-map sizes as in Table 5.1's human rows --
VGG-16 [16, 8, 4, 2], ResNet-50 [16, 8, 4], MobileNetV2 [16, 8, 4].
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import timm
import torchvision
from torch import nn

__all__ = ["MODELS", "create_model", "mobilenetv2_cifar", "resnet50_cifar", "resnet_cifar", "small_cnn", "vgg16_cifar"]

_VGG16_CIFAR = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _vgg(config: list[int | str], in_chans: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_chans
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(channels, num_classes),
        )
    )


def vgg16_cifar(num_classes: int = 100, in_chans: int = 3, width: float = 1.0) -> nn.Sequential:
    """VGG-16 with batch norm for 32x32 images: four 2x2 max-pools, GAP, one FC layer.
    ``width`` multiplies every layer's channels (0.125: 8 to 64 channels, for small CPU runs)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    config = [item if item == "M" else max(round(int(item) * width), 1) for item in _VGG16_CIFAR]
    return _vgg(config, in_chans, num_classes)


def small_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 16) -> nn.Sequential:
    """A VGG-style CNN with three 2x2 max-pools: the default demo model."""
    w = width
    return _vgg([w, "M", 2 * w, "M", 4 * w, "M", 4 * w], in_chans, num_classes)


def resnet50_cifar(num_classes: int = 100, in_chans: int = 3) -> torchvision.models.ResNet:
    """torchvision ResNet-50 with a 3x3 stride-1 stem and no stem max-pool, for 32x32 images."""
    model = torchvision.models.resnet50(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def mobilenetv2_cifar(num_classes: int = 100, in_chans: int = 3, width: float = 1.0) -> torchvision.models.MobileNetV2:
    """torchvision MobileNetV2 for 32x32 images: stride-1 stem and second stage; three stride-2
    inverted residual blocks remain. ``width`` is torchvision's ``width_mult``."""
    setting = [
        [1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]
    ]
    model = torchvision.models.mobilenet_v2(num_classes=num_classes, inverted_residual_setting=setting,
                                            width_mult=width)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_chans, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


def resnet_cifar(num_classes: int = 10, in_chans: int = 3, depth: int = 8, width: int = 16) -> nn.Sequential:
    """The CIFAR ResNet of He et al. (2016): ``depth = 6n + 2`` layers in three stages of ``n``
    torchvision BasicBlocks with ``width``, ``2*width`` and ``4*width`` channels; stages two and
    three start with a stride-2 convolution (and a strided 1x1 shortcut), maps 32 -> 16 -> 8."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(inplace=True)]
    channels = width
    for stage in range(3):
        planes = width << stage
        for index in range(blocks):
            stride = 2 if stage and not index else 1
            shortcut = None
            if stride != 1 or channels != planes:
                shortcut = nn.Sequential(nn.Conv2d(channels, planes, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes))
            layers.append(torchvision.models.resnet.BasicBlock(channels, planes, stride, shortcut))
            channels = planes
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), pool=nn.AdaptiveAvgPool2d(1),
                                     flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes)))


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
        if in_chans != 3:
            raise ValueError(f"{name} takes 3-channel images; got in_chans={in_chans}")
        return getattr(torchvision.models, name)(num_classes=num_classes)

    return build


def _timm(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "vgg16_cifar": vgg16_cifar,
    "resnet50_cifar": resnet50_cifar,
    "resnet_cifar": resnet_cifar,
    "mobilenetv2_cifar": mobilenetv2_cifar,
    "vgg16": _torchvision("vgg16"),
    "vgg16_bn": _torchvision("vgg16_bn"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "efficientnet_b0": _timm("efficientnet_b0"),
    "efficientnet_b1": _timm("efficientnet_b1"),
}


def create_model(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a human-designed model by name (see :data:`MODELS`), with the builder's own options
    (``width=0.125`` for ``vgg16_cifar``); no weights are downloaded."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)

