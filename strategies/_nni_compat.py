"""A fix for NNI 3.0 (its last release): freezing a mixed operation whose module has no bias
(``Conv2d(..., bias=False)``) loads ``{'bias': None}`` into it and fails with "Unexpected key(s)
in state_dict: 'bias'". Entries that are ``None`` are dropped before loading."""

from __future__ import annotations

import functools
from typing import Any

from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS


def _without_missing(freeze_weight: Any) -> Any:
    @functools.wraps(freeze_weight)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in freeze_weight(self, *args, **kwargs).items() if v is not None}

    wrapper._drops_missing = True
    return wrapper


for _operation in NATIVE_MIXED_OPERATIONS:
    _method = _operation.__dict__.get("freeze_weight")
    if _method is not None and not getattr(_method, "_drops_missing", False):
        _operation.freeze_weight = _without_missing(_method)
