"""DARTS and GumbelDARTS that search DynOPool scales jointly with NNI's categorical choices.

Differences from NNI's strategies of the same name:

* every :class:`~dynopool_nas.DynOPool2d` becomes an architecture module
  (:class:`~strategies.supernet.DynOPoolSupernet`): its ``alpha`` is learned on the validation
  split by the architecture optimizer (first-order), in a parameter group of its own with
  ``alpha_learning_rate`` and no weight decay (NNI's 1e-3 decay would pull alpha towards 0,
  i.e. towards huge feature maps), and it is kept out of the weight optimizer;
* an optional :class:`~strategies.constraint.GMACsConstraint` or
  :class:`~strategies.constraint.LatencyConstraint` adds the supernet's expected GMACs or
  predicted latency to the architecture loss (lambda, eq. 4.8), or holds it at a budget (after
  every epoch the latency is calibrated anew to the derived architecture and the budget projected
  again; when training ends a measured latency budget is checked on the architecture it ends with,
  :meth:`~strategies.constraint.LatencyConstraint.settle`);
* after every epoch the search reports to NNI ``'default'`` (top-1 of the supernet on the
  validation split), ``'gmacs'`` and ``'params'`` of the architecture derived at that moment,
  ``'expected_gmacs'``, under a latency constraint ``'latency_ms'`` (the derived architecture's
  predicted latency) and ``'expected_latency_ms'``, and every DynOPool's feature-map size
  (``'<name>.h'``, ``'<name>.w'``); the last report (taken again after a settled budget) is also
  the final result.
"""

from __future__ import annotations

from search_spaces import _nni, _nni_compat  # noqa: F401  (NNI quietly, then the package's changes to it)

# isort: split

from typing import Any

import nni
import torch
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule, GumbelDartsLightningModule
from nni.nas.strategy import DARTS, GumbelDARTS
from torch import nn

from dynopool_nas.cost import GMACsCost
from dynopool_nas.latency import LatencyCost
from dynopool_nas.train import evaluate
from search_spaces.arch import name_dynopools

from .constraint import GMACS, CostConstraint, derived_parameter_count, supernet_cost
from .report import trial_metrics
from .supernet import DynOPoolSupernet

__all__ = ["DynOPoolDARTS", "DynOPoolGumbelDARTS"]


class _DynOPoolSearchModule:
    """What DynOPool adds to NNI's differentiable one-shot Lightning modules."""

    def __init__(
        self,
        *args: Any,
        input_size: tuple[int, int, int],
        alpha_learning_rate: float,
        constraint: CostConstraint | None,
        val_loader: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.penalty = constraint  # NNI's hook for a term added to the architecture loss
        self.input_size = input_size
        self.alpha_learning_rate = alpha_learning_rate
        self.val_loader = val_loader
        self.cost: GMACsCost | None = None
        self.latency_cost: LatencyCost | None = None  # under a latency constraint
        self.history: list[dict[str, Any]] = []

    def scale_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.supernet_modules() if isinstance(m, DynOPoolSupernet)]

    def configure_architecture_optimizers(self) -> torch.optim.Optimizer:
        scales = self.scale_parameters()
        scale_ids = {id(p) for p in scales}
        choices = [p for p in self.arch_parameters() if id(p) not in scale_ids]
        groups = [{"params": choices, "lr": self.arc_learning_rate, "weight_decay": 1e-3}] if choices else []
        if scales:
            groups.append({"params": scales, "lr": self.alpha_learning_rate, "weight_decay": 0.0})
        if not groups:
            raise ValueError("the model space has neither a DynOPool2d nor a categorical choice: nothing to search")
        return torch.optim.Adam(groups, betas=(0.5, 0.999))

    def on_fit_start(self) -> None:
        self.cost = supernet_cost(self.model, self.input_size)
        if self.penalty is not None:
            # the GMACs cost is the one reported; another metric's is built for its constraint
            gmacs = self.penalty.metric == GMACS
            bound = self.cost if gmacs else self.penalty.supernet_cost(self.model, self.input_size)
            self.penalty.bind(bound)
            if isinstance(bound, LatencyCost):
                self.latency_cost = bound
        return super().on_fit_start()

    @torch.no_grad()
    def metrics(self) -> dict[str, Any]:
        """What is reported to NNI: validation top-1 as ``'default'`` and the derived cost."""
        assert self.cost is not None
        with torch.no_grad():
            latency = self.latency_cost
            result = trial_metrics(
                evaluate(self.model, self.val_loader), float(self.cost(hard=True)),
                derived_parameter_count(self.model, self.cost.gates), self.cost.feature_map_sizes(),
                latency_ms=None if latency is None else float(latency(hard=True)),
            )
            result["expected_gmacs"] = float(self.cost())
            if latency is not None:
                result["expected_latency_ms"] = float(latency())
        return result

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.penalty is not None:
            self.penalty.project()
        return super().on_train_batch_end(*args, **kwargs)

    def on_train_epoch_end(self) -> None:
        if self.penalty is not None:  # the calibration follows the architecture; a budget holds at its end
            self.penalty.recalibrate(self.model, self.input_size)
            self.penalty.project(check=True)
        metrics = self.metrics()
        self.history.append(metrics)
        self.log_dict({f"search/{k}": float(v) for k, v in metrics.items()})
        if nni.get_current_parameter() is not None:
            nni.report_intermediate_result(metrics)
        return super().on_train_epoch_end()

    def on_fit_end(self) -> None:
        if self.penalty is not None and self.penalty.settle(self.model, self.input_size) and self.history:
            self.history[-1] = self.metrics()  # the architecture the search hands over
        # The wrapped evaluator would report its own (training-set) result; the search's is this.
        if self.history and nni.get_current_parameter() is not None:
            nni.report_final_result(self.history[-1])


class DynOPoolDartsModule(_DynOPoolSearchModule, DartsLightningModule):
    """NNI's DARTS Lightning module with DynOPool's scales, GMACs or latency constraint and reports."""


class DynOPoolGumbelDartsModule(_DynOPoolSearchModule, GumbelDartsLightningModule):
    """NNI's GumbelDARTS Lightning module with DynOPool's scales, GMACs or latency constraint and reports."""


class _DynOPoolStrategy:
    """What DynOPool adds to NNI's DARTS-family strategies."""

    module_class: type
    searches_dynopool_scales = True  # see search_spaces._nni_compat.require_scale_search

    def __init__(
        self,
        *,
        input_size: tuple[int, int, int],
        alpha_learning_rate: float = 1e-2,
        constraint: CostConstraint | None = None,
        **kwargs: Any,
    ) -> None:
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {input_size!r}")
        super().__init__(**kwargs)
        self.input_size = tuple(input_size)
        self.alpha_learning_rate = alpha_learning_rate
        self.constraint = constraint
        self._val_loader: Any = None

    def default_mutation_hooks(self) -> list[Any]:
        return [DynOPoolSupernet.mutate, *super().default_mutation_hooks()]

    def mutate_model(self, model: Any) -> Any:
        return super().mutate_model(name_dynopools(model))

    def mutate_evaluator(self, evaluator: Any) -> Any:
        self._val_loader = evaluator.val_dataloaders
        if self._val_loader is None:
            raise ValueError(
                "the evaluator needs val_dataloaders: architecture parameters learn on the validation split"
            )
        return super().mutate_evaluator(evaluator)

    def configure_oneshot_module(self, training_module: Any) -> Any:
        base = super().configure_oneshot_module(training_module)  # NNI's, for its parsed settings
        scheduler = (base.temperature_scheduler,) if isinstance(base, GumbelDartsLightningModule) else ()
        return self.module_class(
            training_module,
            *scheduler,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            input_size=self.input_size,
            alpha_learning_rate=self.alpha_learning_rate,
            constraint=self.constraint,
            val_loader=self._val_loader,
        )


class DynOPoolDARTS(_DynOPoolStrategy, DARTS):
    """First-order DARTS over a space with DynOPools (see the module description).

    Args:
        input_size: (channels, height, width) at which GMACs are counted (and latency predicted).
        alpha_learning_rate: learning rate of every DynOPool's alpha (Adam, no weight decay).
        constraint: optional :class:`~strategies.constraint.GMACsConstraint` or
            :class:`~strategies.constraint.LatencyConstraint` (whose cost is built, and its
            latency table measured if needed, when the search starts).
        **kwargs: NNI's ``DARTS`` arguments (``arc_learning_rate``, ``warmup_epochs``, ...).
    """

    module_class = DynOPoolDartsModule


class DynOPoolGumbelDARTS(_DynOPoolStrategy, GumbelDARTS):
    """GumbelDARTS over a space with DynOPools; the arguments of :class:`DynOPoolDARTS` plus NNI's
    ``temperature``."""

    module_class = DynOPoolGumbelDartsModule
