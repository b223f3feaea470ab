"""A plain training loop for DynOPool models: task loss plus ``lambda * L_GMACs`` (eq. 4.8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .convert import param_groups
from .cost import GMACsCost

__all__ = ["EpochResult", "evaluate", "fit"]


@dataclass
class EpochResult:
    """What one epoch produced: validation top-1, GMACs and every DynOPool's size."""

    epoch: int
    train_loss: float
    val_accuracy: float
    gmacs: float
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` on ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cost: GMACsCost,
    *,
    epochs: int,
    lr: float = 0.05,
    alpha_lr: float | None = None,
    weight_decay: float = 5e-4,
    gmacs_lambda: float = 0.0,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], Any] | None = None,
    after_step: Callable[[], Any] | None = None,
) -> list[EpochResult]:
    """Train ``model`` with SGD on ``L_task + gmacs_lambda * L_GMACs`` (eq. 4.8).

    Weights and DynOPool scales share one SGD optimizer with separate parameter groups
    (:func:`~dynopool_nas.param_groups`); the learning rate follows a cosine schedule.
    ``on_epoch`` receives each epoch's :class:`EpochResult`; ``after_step`` runs after every
    optimizer step (a GMACs budget's projection, for instance).
    """
    optimizer = torch.optim.SGD(
        param_groups(model, lr=lr, alpha_lr=alpha_lr, weight_decay=weight_decay), momentum=0.9, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs * len(train_loader), 1))
    history: list[EpochResult] = []
    for epoch in range(1, epochs + 1):
        model.train()
        running, seen = torch.zeros(()), 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar):
            loss = F.cross_entropy(model(images), labels)
            total = loss + gmacs_lambda * cost() if gmacs_lambda else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            running = running.to(loss.device) + loss.detach() * labels.numel()
            seen += labels.numel()
            if progress and step % 10 == 0:  # reading the loss synchronizes with the device
                bar.set_postfix(loss=f"{running.item() / seen:.3f}")
        snapshot = cost.snapshot()
        result = EpochResult(epoch, running.item() / max(seen, 1), evaluate(model, val_loader), **snapshot)
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return history
