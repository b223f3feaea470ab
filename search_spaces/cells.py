"""A DARTS-style cell space whose every reduction is a DynOPool.

A cell takes the outputs of the two previous cells ``(s0, s1)``, as in DARTS, and builds two
nodes: ``n0 = op(s0) + op(s1)``, ``n1 = op(s1) + op(n0)``, each ``op`` a ``LayerChoice`` among
3x3 conv-BN-ReLU, 3x3 separable conv, 3x3 max pool, 3x3 average pool and identity, all at
stride 1; the cell outputs ``n0 + n1``. Cells are stacked in stages by ``Repeat`` with a
searchable depth, and the width is a searchable choice shared by every layer. Between stages
one :class:`~dynopool_nas.DynOPool2d` resizes both cell inputs at once, so they share one alpha
and always agree in size. The pair travels as one stacked tensor ``(2, N, C, H, W)``, which keeps
every module a plain tensor-to-tensor map (TorchScript, ONNX).
"""

from __future__ import annotations

from collections.abc import Sequence

import nni
import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableBatchNorm2d, MutableConv2d, MutableLinear, Repeat
from torch import Tensor, nn

from dynopool_nas import DynOPool2d

__all__ = ["DynOPoolCellSpace"]


def _conv_bn_relu(width: object, groups: object = 1) -> nn.Sequential:
    return nn.Sequential(
        MutableConv2d(width, width, 3, padding=1, groups=groups, bias=False), MutableBatchNorm2d(width), nn.ReLU()
    )


def _operation(width: object, label: str) -> LayerChoice:
    return LayerChoice(
        {
            "conv3x3": _conv_bn_relu(width),
            "sepconv3x3": nn.Sequential(
                MutableConv2d(width, width, 3, padding=1, groups=width, bias=False),
                MutableConv2d(width, width, 1, bias=False), MutableBatchNorm2d(width), nn.ReLU(),
            ),
            "maxpool3x3": nn.MaxPool2d(3, stride=1, padding=1),
            "avgpool3x3": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            "skip": nn.Identity(),
        },
        label=label,
    )


class _Cell(nn.Module):
    def __init__(self, width: object, label: str) -> None:
        super().__init__()
        self.s0_to_n0 = _operation(width, f"{label}_s0_n0")
        self.s1_to_n0 = _operation(width, f"{label}_s1_n0")
        self.s1_to_n1 = _operation(width, f"{label}_s1_n1")
        self.n0_to_n1 = _operation(width, f"{label}_n0_n1")

    def forward(self, pair: Tensor) -> Tensor:
        s0, s1 = pair[0], pair[1]
        n0 = self.s0_to_n0(s0) + self.s1_to_n0(s1)
        n1 = self.s1_to_n1(s1) + self.n0_to_n1(n0)
        return torch.stack([s1, n0 + n1])


class _Reduce(nn.Module):
    """One DynOPool applied to both cell inputs (one shared alpha)."""

    def __init__(self, pool: DynOPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, pair: Tensor) -> Tensor:
        return self.pool(pair.flatten(0, 1)).unflatten(0, (2, -1))


class DynOPoolCellSpace(ModelSpace):
    """DARTS-style cells with DynOPool reductions (see the module description).

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        widths: candidate channel counts, one choice for the whole network (label ``width``).
        depths: candidate numbers of cells per stage (labels ``depth0``, ``depth1``, ...).
        num_stages: stages; a DynOPool (``reduce1``, ``reduce2``, ...) precedes every stage but
            the first.
        scale: initial scale of every DynOPool.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (8, 16),
        depths: Sequence[int] = (1, 2),
        num_stages: int = 3,
        scale: float = 0.5,
    ) -> None:
        super().__init__()
        width = nni.choice("width", list(widths))
        self.stem = nn.Sequential(
            MutableConv2d(in_chans, width, 3, padding=1, bias=False), MutableBatchNorm2d(width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        for stage in range(num_stages):
            if stage:
                stages.append(_Reduce(DynOPool2d(scale, name=f"reduce{stage}")))
            stages.append(Repeat(
                lambda index, stage=stage: _Cell(width, f"stage{stage}_cell{index}"),
                nni.choice(f"depth{stage}", list(depths)),
                label=f"depth{stage}",
            ))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = MutableLinear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stages(torch.stack([x, x]))[1]
        return self.classifier(self.pool(x).flatten(1))
