"""NNI one-shot strategies that search DynOPool scales, the GMACs constraint, and the export of
the architecture a search finds (:mod:`strategies.export`).

Imports NNI on first use of an export (PEP 562), so that the command line (:mod:`strategies.commands`)
parses without it; every module here that touches NNI imports it through :mod:`search_spaces`,
the layer below, which imports it quietly and applies the package's changes to NNI
(:mod:`search_spaces._nni_compat`: one-shot strategies refuse DynOPools they cannot search). The
layer itself lives in :mod:`dynopool_nas`, which does not import NNI.
"""

from dynopool_nas._lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "constraint": ("GMACsConstraint", "LatencyAnchor", "LatencyConstraint", "supernet_cost", "supernet_gates",
                   "supernet_latency_cost"),
    "darts": ("DynOPoolDARTS", "DynOPoolGumbelDARTS"),
    "export": ("export_architecture", "save_search"),
    "supernet": ("DynOPoolSupernet", "scale_label"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
