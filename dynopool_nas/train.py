"""Training DynOPool models: task loss plus ``lambda * L_GMACs`` (eq. 4.8), with PyTorch
Lightning, so that one flag (``devices``) turns a run into a multi-GPU DDP run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .convert import param_groups
from .cost import GMACsCost
from .optim import ScaleStep

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
    device = next(model.parameters()).device
    correct = total = 0
    for images, labels in loader:
        correct += (model(images.to(device)).argmax(dim=1) == labels.to(device)).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


class _DynOPoolTraining(pl.LightningModule):
    """SGD with separate parameter groups for weights and DynOPool scales, a cosine schedule per
    step, and validation top-1 gathered over every process."""

    def __init__(
        self,
        model: nn.Module,
        cost: GMACsCost,
        *,
        epochs: int,
        steps_per_epoch: int,
        lr: float,
        alpha_lr: float | None,
        scale_step: ScaleStep,
        weight_decay: float,
        gmacs_lambda: float,
        relative_lambda: bool,
        scale_warmup_epochs: int,
        on_epoch: Callable[[EpochResult], Any] | None,
        after_step: Callable[[], Any] | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cost = cost
        self.settings = {"epochs": epochs, "steps": steps_per_epoch, "lr": lr, "alpha_lr": alpha_lr,
                         "scale_step": scale_step, "weight_decay": weight_decay, "gmacs_lambda": gmacs_lambda,
                         "scale_warmup_epochs": scale_warmup_epochs}
        # lambda per GMAC: relative to the initial cost (unit-free) or the thesis's absolute form
        self.lambda_per_gmac = gmacs_lambda / cost.initial_gmacs if relative_lambda and gmacs_lambda else gmacs_lambda
        self.on_epoch, self.after_step = on_epoch, after_step
        self.history: list[EpochResult] = []
        self._correct = self._seen = 0
        self._loss_sum, self._batches = 0.0, 0

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self._loss_sum += float(loss.detach())
        self._batches += 1
        return loss + self.lambda_per_gmac * self.cost() if self.lambda_per_gmac else loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._batches = 0.0, 0

    def on_train_batch_end(self, *args: Any) -> None:
        if self.after_step is not None:
            self.after_step()

    def on_validation_epoch_start(self) -> None:
        self._correct = self._seen = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._correct += (self.model(images).argmax(dim=1) == labels).sum().item()
        self._seen += labels.numel()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # Lightning aggregates the logged train_loss only after validation: average it here
        counts = self.trainer.strategy.reduce(
            torch.tensor([self._correct, self._seen, self._loss_sum, self._batches], device=self.device,
                         dtype=torch.float64), reduce_op="sum")
        train_loss = float(counts[2] / counts[3]) if counts[3] else float("nan")
        snapshot = self.cost.snapshot()
        result = EpochResult(self.current_epoch + 1, train_loss, float(counts[0] / counts[1].clamp_min(1)), **snapshot)
        self.history.append(result)
        if self.on_epoch is not None and self.trainer.is_global_zero:
            self.on_epoch(result)

    def configure_optimizers(self) -> Any:
        s = self.settings
        optimizer = torch.optim.SGD(
            param_groups(self.model, lr=s["lr"], alpha_lr=s["alpha_lr"], weight_decay=s["weight_decay"],
                         scale_step=s["scale_step"]),
            momentum=0.9, nesterov=True,
        )
        total, warmup = max(s["epochs"] * s["steps"], 1), s["scale_warmup_epochs"] * s["steps"]

        def cosine(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

        def scales(step: int) -> float:  # the scales hold still while the weights warm up
            return cosine(step) if step >= warmup else 0.0

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, scales])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cost: GMACsCost,
    *,
    epochs: int,
    lr: float = 0.05,
    alpha_lr: float | None = None,
    scale_step: ScaleStep = "normalized",
    weight_decay: float = 5e-4,
    gmacs_lambda: float = 0.0,
    relative_lambda: bool = True,
    scale_warmup_epochs: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], Any] | None = None,
    after_step: Callable[[], Any] | None = None,
    devices: int = 1,
    accelerator: str = "auto",
) -> list[EpochResult]:
    """Train ``model`` with SGD on ``L_task + gmacs_lambda * L_GMACs / L_GMACs_0`` (eq. 4.8 with
    lambda relative to the initial cost ``L_GMACs_0 = cost.initial_gmacs``, so that one lambda
    means the same for every model and resolution: the loss, in nats, that the whole initial
    cost is worth; ``relative_lambda=False`` is the thesis's absolute ``lambda * L_GMACs``).

    Weights and DynOPool scales share one SGD optimizer (momentum 0.9, Nesterov) with separate
    parameter groups (:func:`~dynopool_nas.param_groups`); the learning rate follows a cosine
    schedule. ``alpha_lr`` (default ``lr / 10``) is the scales' learning rate; with
    ``scale_step="normalized"`` (the default) their gradients are normalized so that one
    ``alpha_lr`` suits every layer and resolution (a steady push changes a scale by ``alpha_lr``
    of itself per step), ``"plain"`` is the thesis's gradient step. After every step the scales
    are projected into their range (:meth:`~dynopool_nas.DynOPool2d.project_`): a scale that
    runs away stops at its bound with a warning instead of ending the run.
    ``scale_warmup_epochs`` holds the scales still (learning rate 0) for that many first epochs
    while the weights train, then lets them follow the same cosine schedule.
    ``on_epoch`` receives each epoch's :class:`EpochResult` (on the first process only);
    ``after_step`` runs after every optimizer step (a GMACs budget's projection, for instance).
    ``devices > 1`` trains data-parallel (Lightning DDP, one process per device); the script
    is then started once per device, so keep the call under ``if __name__ == "__main__"``, and
    only the first process gets the history (the others get an empty list).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not 0 <= scale_warmup_epochs < epochs:
        raise ValueError(f"scale_warmup_epochs must be in [0, epochs={epochs}), got {scale_warmup_epochs}: "
                         "the scales would never move")
    module = _DynOPoolTraining(
        model, cost, epochs=epochs, steps_per_epoch=len(train_loader), lr=lr, alpha_lr=alpha_lr,
        scale_step=scale_step, weight_decay=weight_decay, gmacs_lambda=gmacs_lambda,
        relative_lambda=relative_lambda, scale_warmup_epochs=scale_warmup_epochs, on_epoch=on_epoch,
        after_step=after_step,
    )
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
        enable_progress_bar=progress, logger=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_loader, val_loader)
    return module.history if trainer.is_global_zero else []
