"""Changes to NNI 3.0 (its last release), applied when :mod:`search_spaces` (and so
:mod:`strategies`) is imported.

* Freezing a mixed operation whose module has no bias (``Conv2d(..., bias=False)``) loads
  ``{'bias': None}`` into it and fails with "Unexpected key(s) in state_dict: 'bias'". Entries
  that are ``None`` are dropped before loading.
* Every one-shot strategy refuses a model space that holds a DynOPool2d unless the strategy
  declares ``searches_dynopool_scales`` (:func:`require_scale_search`),
  whatever the space's class: NNI's own strategies would train alpha as a weight. The check
  asks the strategy for that capability and imports none.
"""

from __future__ import annotations

from . import _nni  # noqa: F401  (NNI without its harmless import-time warnings)

# isort: split

import functools
from typing import Any

import nni.nas.strategy  # noqa: F401  (before the next line, which otherwise leaves it half-initialized)
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS
from torch import nn

from dynopool_nas import DynOPool2d

__all__ = ["require_scale_search"]


def require_scale_search(strategy: Any, space: nn.Module) -> None:
    """Refuse to let ``strategy`` turn ``space`` into a supernet if the space holds a DynOPool2d
    and the strategy does not declare ``searches_dynopool_scales``: any other one-shot strategy
    would train alpha as a weight (with weight decay) and export no scale."""
    if getattr(strategy, "searches_dynopool_scales", False):
        return
    path = next((path for path, module in space.named_modules() if isinstance(module, DynOPool2d)), None)
    if path is not None:
        raise TypeError(
            f"{type(strategy).__name__} cannot search DynOPool {path!r}: its scale is a continuous parameter learned "
            "by gradient descent on the validation split, which sampling strategies (RandomOneShot, ENAS), "
            "Proxyless's binary gates and NNI's own DARTS (weight decay on it, no GMACs gradient) do not do. Use "
            "strategies.DynOPoolDARTS or strategies.DynOPoolGumbelDARTS, or fix the scales first with "
            "dynopool_nas.freeze_dynopools."
        )


def _without_missing(freeze_weight: Any) -> Any:
    @functools.wraps(freeze_weight)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in freeze_weight(self, *args, **kwargs).items() if v is not None}

    wrapper._patched_by_dynopool = True
    return wrapper


def _checking_scales(mutate_model: Any) -> Any:
    @functools.wraps(mutate_model)
    def wrapper(self: Any, model: Any) -> Any:
        require_scale_search(self, model)
        return mutate_model(self, model)

    wrapper._patched_by_dynopool = True
    return wrapper


def _patch(owner: type, method: str, change: Any) -> None:
    original = owner.__dict__.get(method)
    if original is not None and not getattr(original, "_patched_by_dynopool", False):
        setattr(owner, method, change(original))


for _operation in NATIVE_MIXED_OPERATIONS:
    _patch(_operation, "freeze_weight", _without_missing)
_patch(OneShotStrategy, "mutate_model", _checking_scales)
