"""The settings of ``dynopool-nas search`` and ``compare``, each one frozen dataclass: built by the
command line from its flags (whose defaults are these fields' defaults) and passed whole to
:func:`~strategies.commands.search.run_search` and :func:`~strategies.commands.compare.run_compare`.

Importing this module imports neither torch nor NNI (the command line's parser reads the
defaults); a settings object is checked when it is built, before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynopool_nas.convert import Placement

__all__ = ["BASELINES", "CONSTRAINTS", "STRATEGY_NAMES", "CompareSettings", "SearchSettings"]

STRATEGY_NAMES = ("darts", "gumbel-darts")
"""The one-shot strategies ``search`` runs (:data:`~strategies.commands.search.STRATEGIES`)."""

CONSTRAINTS = ("gmacs_lambda", "gmacs_budget", "latency_lambda", "latency_budget_ms")
"""The fields of :class:`SearchSettings` that each choose a constraint; at most one is set."""

BASELINES = ("efficientnet_b0", "efficientnet_b1")
"""The timm models a comparison trains beside the discovered architectures."""


def _at_least_one(settings: object, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be at least 1, got {value!r}")


def _positive_number(settings: object, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _placement(value: str) -> None:
    from dynopool_nas.convert import PLACEMENTS

    if value not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {value!r}")


@dataclass(frozen=True)
class SearchSettings:
    """One one-shot search (``dynopool-nas search``): ``space`` searched by ``strategy`` on
    ``dataset`` for ``epochs``, ``arch.json`` and ``weights.pt`` written to ``output``.

    Args:
        space: ``cells``, ``efficientnet`` or a converted model's name
            (:data:`~search_spaces.registry.SPACES`).
        strategy: one of :data:`STRATEGY_NAMES`.
        dataset: a name of :data:`~dynopool_nas.data.DATASETS`.
        epochs: training epochs of the supernet.
        output: folder of the result.
        data_dir: folder of a data set that is not bundled; ``download`` fetches it there.
        image_size: square input size; GMACs are counted at it.
        batch_size: training batch size.
        learning_rate: learning rate of the weights (Adam).
        alpha_learning_rate: learning rate of the DynOPool scales.
        gmacs_lambda: lambda of eq. 4.8, relative to the initial GMACs; or
        gmacs_budget: a target in GMACs per image; or
        latency_lambda: lambda of eq. 4.8 on the predicted latency, relative to the initial one; or
        latency_budget_ms: a target latency in milliseconds per image, on the device the search
            runs on (at most one of the four; the latency ones measure, or read from
            the cache, a latency table of that device: :class:`~strategies.LatencyConstraint`).
        latency_anchor: what the predicted latency is calibrated to at the start and after every
            epoch (:class:`~strategies.LatencyAnchor`): ``"measured"`` (default), the table's
            prediction of the derived architecture scaled to the starting architecture measured
            in fresh processes (a budget means measured milliseconds, and a budget search
            measures the architecture it ends with again), or ``"predicted"``, the table's alone:
            :data:`~strategies.constraint.ANCHORS`.
        max_train_images: use only the first N training images.
        seed: seed of the initialization, the data order and the validation split.
        placement: converted models: DynOPool ``after`` a strided conv (eq. 5.2) or ``before`` it.
    """

    space: str = "cells"
    strategy: str = "darts"
    dataset: str = "digits"
    epochs: int = 5
    output: Path = Path("runs/search")
    data_dir: str | None = None
    download: bool = False
    image_size: int = 32
    batch_size: int = 64
    learning_rate: float = 0.01
    alpha_learning_rate: float = 0.01
    gmacs_lambda: float | None = None
    gmacs_budget: float | None = None
    max_train_images: int | None = None
    seed: int = 0
    placement: Placement = "after"
    latency_lambda: float | None = None
    latency_budget_ms: float | None = None
    latency_anchor: str = "measured"

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Path(self.output))
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {sorted(STRATEGY_NAMES)}")
        _at_least_one(self, "epochs", "image_size", "batch_size", "max_train_images")
        _positive_number(self, "learning_rate", "alpha_learning_rate")
        given = [name for name in CONSTRAINTS if getattr(self, name) is not None]
        if given == ["gmacs_lambda", "gmacs_budget"]:
            raise ValueError("give gmacs_lambda (eq. 4.8) or gmacs_budget (GMACs per image), not both")
        if len(given) > 1:
            raise ValueError(f"give at most one constraint of {', '.join(CONSTRAINTS)}, not {' and '.join(given)}")
        for name in ("latency_lambda", "gmacs_lambda"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        _positive_number(self, *(name for name in ("gmacs_budget", "latency_budget_ms") if name in given))
        from strategies.constraint import check_anchor

        check_anchor(self.latency_anchor, "latency_anchor")
        _placement(self.placement)


@dataclass(frozen=True)
class CompareSettings:
    """One comparison (``dynopool-nas compare``): the ``baselines`` and every architecture of
    ``architectures`` (``arch.json`` files or folders holding one) trained from scratch with one
    recipe, once per seed, the table written to ``output``.

    Args:
        architectures: the discovered architectures.
        output: folder of the comparison, replaced as a whole.
        dataset: a name of :data:`~dynopool_nas.data.DATASETS`; ``data_dir`` holds it if it is
            not bundled.
        epochs: training epochs of every model.
        image_size: square input size.
        batch_size: training batch size.
        lr: learning rate (SGD, Nesterov momentum, cosine schedule).
        max_train_images: use only the first N training images.
        seeds: one or more different seeds; every model trains once per seed.
        baselines: timm models trained beside the architectures (:data:`BASELINES`).
    """

    architectures: Sequence[str | Path] = ()
    output: Path = Path("runs/compare")
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 5
    image_size: int = 32
    batch_size: int = 64
    lr: float = 0.05
    max_train_images: int | None = None
    seeds: Sequence[int] = (0,)
    baselines: Sequence[str] = BASELINES

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Path(self.output))
        for name in ("architectures", "seeds", "baselines"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be one or more different integers, got {list(self.seeds)}")
        if not self.architectures and not self.baselines:
            raise ValueError("nothing to compare: give an architecture or keep the baselines")
        _at_least_one(self, "epochs", "image_size", "batch_size", "max_train_images")
        _positive_number(self, "lr")
