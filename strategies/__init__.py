"""NNI one-shot strategies that search DynOPool scales, and the GMACs constraint.

Imports NNI; the layer itself lives in :mod:`dynopool_nas`, which does not.
"""

from . import (
    _nni,  # noqa: F401  (first: NNI without its harmless import-time warnings)
    _nni_compat,  # noqa: F401  (NNI fixes; one-shot strategies refuse DynOPools they cannot search)
)
from .constraint import GMACsConstraint, supernet_cost, supernet_gates
from .darts import DynOPoolDARTS, DynOPoolGumbelDARTS
from .supernet import DynOPoolSupernet, scale_label

__all__ = [
    "DynOPoolDARTS",
    "DynOPoolGumbelDARTS",
    "DynOPoolSupernet",
    "GMACsConstraint",
    "scale_label",
    "supernet_cost",
    "supernet_gates",
]
