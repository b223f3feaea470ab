"""A user's own NNI model space, written as the README shows: a plain ``ModelSpace`` whose
DynOPools are created without ``name=`` (importable, so that a saved search can be rebuilt)."""

import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, Repeat
from torch import Tensor, nn

from dynopool_nas import DynOPool2d


class _Block(nn.Module):
    def __init__(self, width: int, downsample: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.pool = DynOPool2d(0.5) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.conv(x)))


class UserSpace(ModelSpace):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.pool1 = DynOPool2d(0.5)
        self.op = LayerChoice([nn.Conv2d(width, width, 3, padding=1), nn.Identity()], label="op")
        self.blocks = Repeat(lambda index: _Block(width, downsample=index == 0), (1, 2), label="depth")
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.op(self.pool1(torch.relu(self.conv1(x)))))
        return self.head(x.mean((2, 3)))
