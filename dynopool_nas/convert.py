"""Turn a CNN's resizers into DynOPools (thesis section 4.4, eq. 5.1 and 5.2).

* ``Pool_s -> DynOPool``: max/average pooling with stride > 1 (global pooling stays).
* ``ReLU(Conv_s) -> DynOPool(ReLU(Conv_1))``: a strided convolution runs at stride 1 and a
  DynOPool follows its normalization and activation (``placement='after'``, the default).
* ``placement='before'``: ``Conv_s -> Conv_1(DynOPool)``, the map is resized first and the
  convolution runs on the resized map (like ResNet-D's pooled shortcut). At the initial scales
  the model then has the human model's MACs, whereas eq. 5.2 runs every formerly strided
  convolution at full resolution (+34% MACs for ResNet-50 at 224x224).
* Branches that must agree in size share one DynOPool: a torchvision ResNet block's main
  path and shortcut. A ResNet stem (strided conv, then max-pool) becomes one DynOPool at
  scale 0.25 (section 5.2.1).

Family rules handle torchvision ResNets and timm's EfficientNet-style blocks (through their
``aa`` anti-aliasing slot); a generic rule handles ``nn.Sequential`` runs such as
torchvision's ``Conv2dNormActivation``; any other strided convolution becomes
``Sequential(conv at stride 1, DynOPool)``. Modules whose parameters move into a new
``nn.Sequential`` change their ``state_dict`` keys, so load pretrained weights first.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any, Literal

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .layer import DynOPool2d, ScaleLike

__all__ = ["PLACEMENTS", "Placement", "dynopool_layers", "dynopoolify", "param_groups"]

Placement = Literal["after", "before"]
PLACEMENTS: tuple[str, ...] = ("after", "before")

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_FOLLOWERS = (
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.Mish,
)


def _followers() -> tuple[type[nn.Module], ...]:
    """Normalization/activation modules that stay before the DynOPool (eq. 5.2)."""
    try:
        from timm.layers import BatchNormAct2d, GroupNormAct
    except ImportError:
        return _FOLLOWERS
    return (*_FOLLOWERS, BatchNormAct2d, GroupNormAct)


def _stride(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    stride = stride if isinstance(stride, (tuple, list)) else (stride, stride)
    return max(stride) if all(isinstance(s, int) for s in stride) else 1


def _is_strided_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and _stride(module) > 1


def _is_strided_pool(module: nn.Module) -> bool:
    return isinstance(module, _POOLS) and _stride(module) > 1


def _human_scale(module: nn.Module) -> tuple[float, float]:
    stride = module.stride if isinstance(module.stride, (tuple, list)) else (module.stride,) * 2
    return 1.0 / stride[0], 1.0 / stride[1]


def _unstride(conv: nn.Conv2d) -> bool:
    """Run ``conv`` at stride 1 with 'same' output size; False if its padding cannot give it."""
    if type(conv).__name__ == "Conv2dSame":  # timm: pads dynamically to 'same'
        conv.stride = (1, 1)
        return True
    kernel, dilation = conv.kernel_size, conv.dilation
    same = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)) or (
        conv.padding != same and conv.padding != "same"
    ):
        return False
    conv.stride = (1, 1)
    return True


class _Converter:
    def __init__(self, scale: ScaleLike | None, stem_scale: ScaleLike, options: dict[str, Any],
                 placement: Placement) -> None:
        self.scale = scale
        self.stem_scale = stem_scale
        self.options = options
        self.before = placement == "before"
        self.converted = 0
        self.skipped: list[str] = []

    def pool(self, human_scale: ScaleLike, aggregation: str | None = None) -> DynOPool2d:
        self.converted += 1
        options = dict(self.options)
        if aggregation is not None and "aggregation" not in options:
            options["aggregation"] = aggregation
        return DynOPool2d(scale=self.scale if self.scale is not None else human_scale, **options)

    def unstride_or_skip(self, conv: nn.Conv2d, name: str) -> bool:
        if _unstride(conv):
            return True
        self.skipped.append(name)
        return False

    def resized_conv(self, conv: nn.Conv2d, pool: DynOPool2d) -> nn.Sequential:
        """A formerly strided convolution with its DynOPool in front (``placement='before'``)."""
        return nn.Sequential(pool, conv)

    # -- family rules -------------------------------------------------------------------
    def resnet_stem(self, model: nn.Module) -> None:
        conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
        if self.before or not (_is_strided_conv(conv) and _is_strided_pool(pool)) or not _unstride(conv):
            return
        self.converted += 1
        model.maxpool = DynOPool2d(scale=self.stem_scale, **self.options)

    def resnet_block(self, block: BasicBlock | Bottleneck, name: str) -> None:
        main = "conv2" if isinstance(block, Bottleneck) else "conv1"
        conv, norm = getattr(block, main), getattr(block, main.replace("conv", "bn"))
        shortcut = block.downsample
        if not _is_strided_conv(conv):
            return
        human = _human_scale(conv)
        if not self.unstride_or_skip(conv, f"{name}.{main}"):
            return
        pool = self.pool(human)
        if self.before:
            setattr(block, main, self.resized_conv(conv, pool))
        else:
            setattr(block, main.replace("conv", "bn"), nn.Sequential(norm, nn.ReLU(), pool))
        if shortcut is not None:
            for layer in shortcut:
                if _is_strided_conv(layer):
                    layer.stride = (1, 1)
            block.downsample = nn.Sequential(pool, *shortcut)
        block.stride = 1

    def timm_stem(self, model: nn.Module) -> None:
        conv, norm = getattr(model, "conv_stem", None), getattr(model, "bn1", None)
        if norm is None or not _is_strided_conv(conv):
            return
        human = _human_scale(conv)
        if not _unstride(conv):
            return
        if self.before:
            model.conv_stem = self.resized_conv(conv, self.pool(human))
        else:
            model.bn1 = nn.Sequential(norm, self.pool(human))

    def timm_aa_block(self, block: nn.Module, name: str) -> None:
        if not isinstance(getattr(block, "aa", None), nn.Identity):
            return
        for child_name, child in block.named_children():
            if _is_strided_conv(child):
                human = _human_scale(child)
                if not self.unstride_or_skip(child, f"{name}.{child_name}"):
                    return
                if self.before:
                    setattr(block, child_name, self.resized_conv(child, self.pool(human)))
                else:
                    block.aa = self.pool(human)
                return

    # -- generic rules ------------------------------------------------------------------
    def sequential(self, seq: nn.Sequential, name: str) -> None:
        children = list(seq.named_children())
        followers = _followers()
        for index, (child_name, child) in enumerate(children):
            if not _is_strided_conv(child):
                continue
            human = _human_scale(child)
            if not self.unstride_or_skip(child, f"{name}.{child_name}" if name else child_name):
                continue
            if self.before:
                setattr(seq, child_name, self.resized_conv(child, self.pool(human)))
                continue
            last = index
            while last + 1 < len(children) and isinstance(children[last + 1][1], followers):
                last += 1
            last_name, last_module = children[last]
            setattr(seq, last_name, nn.Sequential(last_module, self.pool(human)))

    def pools(self, model: nn.Module) -> None:
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if _is_strided_pool(child):
                    aggregation = "mean" if isinstance(child, nn.AvgPool2d) else "max"
                    setattr(parent, child_name, self.pool(_human_scale(child), aggregation))

    def leftover_convs(self, model: nn.Module) -> None:
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if _is_strided_conv(child):
                    path = f"{parent_name}.{child_name}" if parent_name else child_name
                    human = _human_scale(child)
                    if self.unstride_or_skip(child, path):
                        pool = self.pool(human)
                        resized = self.resized_conv(child, pool) if self.before else nn.Sequential(child, pool)
                        setattr(parent, child_name, resized)


def dynopool_layers(model: nn.Module) -> Iterator[tuple[str, DynOPool2d]]:
    """``(name, layer)`` for every DynOPool2d of ``model``, each shared layer once."""
    for name, module in model.named_modules():
        if isinstance(module, DynOPool2d):
            yield name, module


def dynopoolify(
    model: nn.Module,
    scale: ScaleLike | None = None,
    *,
    stem_scale: ScaleLike = 0.25,
    aggregation: str | None = None,
    min_size: float = 1.5,
    scale_bounds: tuple[float, float] | None = None,
    placement: Placement = "after",
    inplace: bool = False,
) -> nn.Module:
    """Replace every pooling layer with stride > 1 and every strided convolution by DynOPool.

    Args:
        model: any CNN; torchvision ResNets and timm EfficientNets get their family rules.
        scale: initial scale of every DynOPool; ``None`` keeps the human model's ``1/stride``.
        stem_scale: initial scale of the single DynOPool that replaces a ResNet stem's strided
            convolution and max-pool (``placement='after'``; with ``'before'`` each gets its own).
        aggregation: force ``'max'`` or ``'mean'``; by default max, and mean for average pools.
        min_size, scale_bounds: passed to every :class:`DynOPool2d`.
        placement: ``'after'`` puts each strided convolution's DynOPool after its activation
            (eq. 5.2, the thesis's conversion); ``'before'`` puts it in front of the
            convolution, which keeps the human model's MACs at the initial scales.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The converted model. Every DynOPool's ``name`` is its module path. Converting an
        already converted model returns it unchanged.

    Raises:
        ValueError: the model has neither a resizer to convert nor a DynOPool.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"dynopoolify: placement must be one of {PLACEMENTS}, got {placement!r}")
    model = model if inplace else copy.deepcopy(model)
    options: dict[str, Any] = {"min_size": min_size, "scale_bounds": scale_bounds}
    if aggregation is not None:
        options["aggregation"] = aggregation
    converter = _Converter(scale, stem_scale, options, placement)
    converter.resnet_stem(model)
    converter.timm_stem(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, (BasicBlock, Bottleneck)):
            converter.resnet_block(module, name)
        else:
            converter.timm_aa_block(module, name)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential):
            converter.sequential(module, name)
    converter.pools(model)
    converter.leftover_convs(model)
    if converter.skipped:
        warnings.warn(
            "dynopoolify: these strided convolutions were left as they are because their padding "
            f"cannot keep the size at stride 1: {converter.skipped}",
            stacklevel=2,
        )
    layers = list(dynopool_layers(model))
    if not layers:
        raise ValueError(
            f"dynopoolify: {type(model).__name__} has no pooling layer with stride > 1 and no strided "
            "convolution, so there is nothing to replace by DynOPool2d"
        )
    for name, layer in layers:
        layer.name = name
    return model


def param_groups(
    model: nn.Module, lr: float, alpha_lr: float | None = None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the weights, and every resizer's ``alpha`` (DynOPool's scale,
    a Shape Adaptor's mixing weight) in a group of its own with a lower learning rate
    (section 5.2.2, default ``lr / 10``) and no weight decay (decay would pull a DynOPool's
    alpha to 0, i.e. towards huge feature maps)."""
    alphas = list({id(m.alpha): m.alpha for m in model.modules() if isinstance(getattr(m, "alpha", None),
                                                                                nn.Parameter)}.values())
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in alpha_ids]
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": alphas, "lr": lr / 10 if alpha_lr is None else alpha_lr, "weight_decay": 0.0, "name": "alpha"},
    ]
