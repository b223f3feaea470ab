"""dynopool-nas: DynOPool (Dynamically Optimized Pooling) as a learnable resizing layer.

This package is plain PyTorch; the NNI integration lives in ``search_spaces`` and
``strategies``, and the command line in ``strategies.commands``.
"""

from ._lazy import lazy_exports

# Exports by module, imported on first use (PEP 562), so that ``dynopool-nas --help`` and
# ``import dynopool_nas._checks`` do not import torch.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "convert": ("dynopool_layers", "dynopoolify", "param_groups"),
    "cost": ("GMACsCost", "MACsReport", "count_macs"),
    "data": ("DATASETS", "DataSplits", "DigitsDataset", "load_dataset"),
    "freeze": ("FixedDynOPool2d", "freeze_dynopools"),
    "latency": ("LatencyCost", "LatencyTable", "measure_model", "measure_models"),
    "layer": ("DynOPool2d",),
    "models": ("create_model",),
    "ops": ("dynopool2d", "ste_output_size"),
    "optim": ("project_scales_",),
    "shape_adaptor": ("ShapeAdaptor2d", "shape_adaptify"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__version__ = "0.1.0"
