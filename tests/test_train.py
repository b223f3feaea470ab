"""fit: eq. 4.8 with lambda relative to the initial GMACs, and the per-epoch record."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dynopool_nas import GMACsCost, dynopoolify
from dynopool_nas.models import small_cnn
from dynopool_nas.train import _DynOPoolTraining, fit

INPUT = (1, 16, 16)


def _converted() -> torch.nn.Module:
    torch.manual_seed(0)
    return dynopoolify(small_cnn(num_classes=3, in_chans=1))


def _loader(n: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, *INPUT, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _training_loss(relative: bool, lam: float) -> tuple[float, float, float]:
    model = _converted()
    cost = GMACsCost.from_model(model, INPUT)
    module = _DynOPoolTraining(model, cost, epochs=1, steps_per_epoch=1, lr=0.1, alpha_lr=None,
                               scale_step="plain", weight_decay=0.0, gmacs_lambda=lam, relative_lambda=relative,
                               scale_warmup_epochs=0, on_epoch=None, after_step=None)
    batch = next(iter(_loader()))
    total = float(module.training_step(batch, 0).detach())
    task = float(torch.nn.functional.cross_entropy(model(batch[0]), batch[1]))
    return total, task, cost.initial_gmacs


@pytest.mark.parametrize("relative", [True, False])
def test_lambda_is_relative_to_the_initial_gmacs_unless_asked_otherwise(relative):
    total, task, initial = _training_loss(relative, lam=0.5)
    expected_penalty = 0.5 if relative else 0.5 * initial  # at the initial scales the cost is its initial value
    assert math.isclose(total - task, expected_penalty, rel_tol=1e-5, abs_tol=1e-9)


def test_every_epoch_reports_its_own_mean_training_loss():
    model = _converted()
    history = fit(model, _loader(), _loader(16), GMACsCost.from_model(model, INPUT), epochs=2, progress=False)
    losses = [result.train_loss for result in history]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert losses[0] != losses[1]


def test_scales_hold_still_during_the_warm_up_and_move_after_it():
    model = _converted()
    initial = [layer.alpha.detach().clone() for layer in model.modules() if hasattr(layer, "alpha")]
    scales_per_epoch = []

    def record(_result):
        scales_per_epoch.append([layer.alpha.detach().clone() for layer in model.modules() if hasattr(layer, "alpha")])

    fit(model, _loader(), _loader(16), GMACsCost.from_model(model, INPUT), epochs=2, scale_warmup_epochs=1,
        gmacs_lambda=1.0, alpha_lr=0.05, progress=False, on_epoch=record)
    assert all(torch.equal(a, b) for a, b in zip(initial, scales_per_epoch[0]))
    assert any(not torch.equal(a, b) for a, b in zip(initial, scales_per_epoch[1]))


@pytest.mark.parametrize("warmup", [-1, 2])
def test_a_warm_up_as_long_as_the_run_is_refused(warmup):
    model = _converted()
    with pytest.raises(ValueError, match="scale_warmup_epochs"):
        fit(model, _loader(), _loader(16), GMACsCost.from_model(model, INPUT), epochs=2, scale_warmup_epochs=warmup,
            progress=False)
