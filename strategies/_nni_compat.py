"""Changes to NNI 3.0 (its last release), applied when :mod:`strategies` or
:mod:`search_spaces` is imported.

* Freezing a mixed operation whose module has no bias (``Conv2d(..., bias=False)``) loads
  ``{'bias': None}`` into it and fails with "Unexpected key(s) in state_dict: 'bias'". Entries
  that are ``None`` are dropped before loading.
* Every one-shot strategy refuses a model space that holds a DynOPool2d unless the strategy
  declares ``searches_dynopool_scales`` (:func:`~strategies.supernet.require_scale_search`),
  whatever the space's class: NNI's own strategies would train alpha as a weight.
"""

from __future__ import annotations

from . import _nni  # noqa: F401  (NNI without its harmless import-time warnings)

# isort: split

import functools
from typing import Any

import nni.nas.strategy  # noqa: F401  (before the next line, which otherwise leaves it half-initialized)
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS

from .supernet import require_scale_search


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
