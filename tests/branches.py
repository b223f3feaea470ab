"""A model with two gated branches, shared by the cost tests (GMACs and latency): a cheap 1x1
and a costly ``kernel`` x ``kernel`` convolution meet at one DynOPool, each weighted by a gate of
one architecture parameter ``theta`` as a supernet's choice would be."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynopool_nas import DynOPool2d


class TwoBranches(nn.Module):
    def __init__(self, channels: int = 4, kernel: int = 5) -> None:
        super().__init__()
        self.small = nn.Conv2d(3, channels, 1)
        self.large = nn.Conv2d(3, channels, kernel, padding=kernel // 2)
        self.pool = DynOPool2d(0.5, name="pool")

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.small(x) + self.large(x))


def branch_gates(theta: Tensor) -> dict[str, Callable[[bool], Tensor]]:
    """Gates of ``small`` (probability ``sigmoid(theta)``, 1 or 0 when ``hard``) and ``large``."""

    def gate(choose_small: bool) -> Callable[[bool], Tensor]:
        def probability(hard: bool) -> Tensor:
            p = torch.sigmoid(theta)
            p = (p > 0.5).float() if hard else p
            return p if choose_small else 1 - p

        return probability

    return {"small": gate(True), "large": gate(False)}
