"""dynopool-nas: DynOPool (Dynamically Optimized Pooling) as a learnable resizing layer.

This package is plain PyTorch; the NNI integration lives in ``search_spaces`` and
``strategies``, and the command line in ``commands``.
"""

import importlib
from typing import Any

# Exports by module, imported on first use (PEP 562), so that ``dynopool-nas --help`` and
# ``import dynopool_nas._checks`` do not import torch.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "convert": ("dynopool_layers", "dynopoolify", "param_groups"),
    "cost": ("GMACsCost", "MACsReport", "count_macs"),
    "data": ("DATASETS", "DataSplits", "DigitsDataset", "load_dataset"),
    "freeze": ("FixedDynOPool2d", "freeze_dynopools"),
    "layer": ("DynOPool2d",),
    "models": ("create_model",),
    "ops": ("dynopool2d", "ste_output_size"),
    "optim": ("project_scales_",),
    "shape_adaptor": ("ShapeAdaptor2d", "shape_adaptify"),
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


__version__ = "0.1.0"
