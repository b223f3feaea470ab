"""An EfficientNet-derived space: the EfficientNet-B0 skeleton with searchable per-stage width
multiplier, depth, kernel size and expansion ratio, and a DynOPool in place of every stride 2.

Blocks follow timm's EfficientNet layer for layer (convolutions, batch norms, squeeze-excite
with ``round(in_channels / 4)`` reduced channels and a sigmoid gate, SiLU, the same channel
rounding), so :func:`efficientnet_choices` ``("b0")`` and ``("b1")`` freeze the space into models
with exactly timm's parameter counts. Each DynOPool sits where its stride-2 convolution reads its
input (``Conv_1 o DynOPool``, the form of eq. 5.3): the stem's on the image, a block's after its
expansion, before the depthwise convolution; at scale 0.5 the MACs are timm's plus DynOPool's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nni.mutable import Categorical, MutableExpression
from nni.nas.nn.pytorch import ModelSpace, MutableBatchNorm2d, MutableConv2d, Repeat
from torch import Tensor, nn

from dynopool_nas import DynOPool2d

__all__ = ["B0_STAGES", "EfficientNetSpace", "efficientnet_choices"]

# (block type, repeats, kernel, stride, expansion, output channels) of EfficientNet-B0
B0_STAGES = [
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
]
_SCALING = {"b0": (1.0, 1.0), "b1": (1.0, 1.1)}  # (width, depth) coefficients


def _divisible(value: Any, divisor: int = 8) -> Any:
    """timm's ``make_divisible``: nearest multiple of ``divisor``, never 10% below ``value``."""
    rounded = MutableExpression.max(divisor, round(value + divisor // 2) // divisor * divisor)
    return MutableExpression.condition(rounded < 0.9 * value, rounded + divisor, rounded)


def _conv_bn(in_chs: Any, out_chs: Any, kernel: Any = 1, groups: Any = 1, act: bool = True) -> list[nn.Module]:
    layers = [MutableConv2d(in_chs, out_chs, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False),
              MutableBatchNorm2d(out_chs)]
    return [*layers, nn.SiLU()] if act else layers


def _b0_choice(label: str, candidates: Sequence[Any], b0: Any) -> Categorical:
    """A choice among ``candidates`` and B0's value, which is its default: labels that a tuner's
    search space leaves out (``mutable.default()``) keep EfficientNet-B0's."""
    return Categorical(sorted({*candidates, b0}), default=b0, label=label)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: Any, block_in_chs: Any) -> None:
        super().__init__()
        reduced = round(block_in_chs * 0.25)
        self.conv_reduce = MutableConv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.conv_expand = MutableConv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True)))).sigmoid()


class _Block(nn.Module):
    """timm's DepthwiseSeparableConv (``expansion is None``) or InvertedResidual, with a DynOPool
    in front of the depthwise convolution instead of its stride."""

    def __init__(self, in_chs: Any, out_chs: Any, kernel: Any, expansion: Any, pool: DynOPool2d | None) -> None:
        super().__init__()
        mid_chs = in_chs if expansion is None else _divisible(in_chs * expansion)
        expand = [] if expansion is None else _conv_bn(in_chs, mid_chs)
        self.body = nn.Sequential(
            *expand,
            *([pool] if pool is not None else []),
            *_conv_bn(mid_chs, mid_chs, kernel, groups=mid_chs),
            _SqueezeExcite(mid_chs, in_chs),
            *_conv_bn(mid_chs, out_chs, act=False),
        )
        self.has_skip = pool is None and in_chs is out_chs

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.has_skip else self.body(x)


class EfficientNetSpace(ModelSpace):
    """EfficientNet-B0's skeleton with searchable choices (labels ``s{i}_width``, ``s{i}_depth``,
    ``s{i}_kernel``, ``s{i}_expansion`` for stage ``i``; the first stage has no expansion).

    B0's value is always among a label's candidates and is its default, so the space's default
    sample (``space.default()``, and every label a tuner's search space leaves out) is
    EfficientNet-B0.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width_multipliers: candidate channel multipliers of every stage; B0's 1.0 is added.
        depth_multipliers: candidate depth multipliers; stage ``i`` chooses among
            ``ceil(repeats_i * m)`` and B0's ``repeats_i`` (B1 uses 1.1).
        kernel_sizes: candidate depthwise kernel sizes; each stage's B0 kernel is added.
        expand_ratios: candidate expansion ratios; B0's 6 is added.
        scale: initial scale of every DynOPool.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_multipliers: Sequence[float] = (0.75, 1.0),
        depth_multipliers: Sequence[float] = (1.0, 1.1),
        kernel_sizes: Sequence[int] = (3, 5),
        expand_ratios: Sequence[int] = (4, 6),
        scale: float = 0.5,
    ) -> None:
        super().__init__()
        stem_chs = 32
        self.stem = nn.Sequential(DynOPool2d(scale, name="stem_pool"), *_conv_bn(in_chans, stem_chs, 3))
        stages: list[nn.Module] = []
        in_chs: Any = stem_chs
        for index, (kind, repeats, kernel, stride, expansion, base_chs) in enumerate(B0_STAGES):
            width = _b0_choice(f"s{index}_width", width_multipliers, 1.0)
            out_chs = _divisible(width * base_chs)
            depth = _b0_choice(f"s{index}_depth", [math.ceil(repeats * m) for m in depth_multipliers], repeats)
            kernel_choice = _b0_choice(f"s{index}_kernel", kernel_sizes, kernel)
            expansion_choice = None if kind == "ds" else _b0_choice(f"s{index}_expansion", expand_ratios, expansion)
            pool = DynOPool2d(scale, name=f"s{index}_pool") if stride == 2 else None

            def block(position: int, in_chs: Any = in_chs, out_chs: Any = out_chs, pool: Any = pool,
                      kernel: Any = kernel_choice, expansion: Any = expansion_choice) -> _Block:
                first = position == 0
                return _Block(in_chs if first else out_chs, out_chs, kernel, expansion, pool if first else None)

            stages.append(Repeat(block, depth))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_conv_bn(in_chs, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


def efficientnet_choices(variant: str) -> dict[str, Any]:
    """The choices that freeze :class:`EfficientNetSpace` (default candidates) into
    EfficientNet-B0 or -B1."""
    if variant not in _SCALING:
        raise ValueError(f"variant must be one of {sorted(_SCALING)}, got {variant!r}")
    width, depth = _SCALING[variant]
    choices: dict[str, Any] = {}
    for index, (kind, repeats, kernel, _, expansion, _) in enumerate(B0_STAGES):
        choices[f"s{index}_width"] = width
        choices[f"s{index}_depth"] = math.ceil(repeats * depth)
        choices[f"s{index}_kernel"] = kernel
        if kind != "ds":
            choices[f"s{index}_expansion"] = expansion
    return choices
