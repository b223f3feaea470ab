"""NNI one-shot strategies that search DynOPool scales, and the GMACs constraint.

Imports NNI on first use of an export (PEP 562), so that the command line (:mod:`strategies.commands`)
parses without it; every module here that touches NNI imports it quietly first
(:mod:`strategies._nni`) and applies this package's changes to NNI (:mod:`strategies._nni_compat`:
one-shot strategies refuse DynOPools they cannot search). The layer itself lives in
:mod:`dynopool_nas`, which does not import NNI.
"""

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "constraint": ("GMACsConstraint", "supernet_cost", "supernet_gates"),
    "darts": ("DynOPoolDARTS", "DynOPoolGumbelDARTS"),
    "supernet": ("DynOPoolSupernet", "scale_label"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
