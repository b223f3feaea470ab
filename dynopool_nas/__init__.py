"""dynopool-nas: DynOPool (Dynamically Optimized Pooling) as a learnable resizing layer.

This package is plain PyTorch; the NNI integration lives in ``search_spaces`` and
``strategies``.
"""

from .convert import dynopool_layers, dynopoolify, param_groups
from .cost import GMACsCost, MACsReport, count_macs
from .data import DigitsDataset
from .export import FixedDynOPool2d, freeze_dynopools
from .layer import DynOPool2d
from .models import create_model
from .ops import dynopool2d, ste_output_size

__all__ = [
    "DigitsDataset",
    "DynOPool2d",
    "FixedDynOPool2d",
    "GMACsCost",
    "MACsReport",
    "count_macs",
    "create_model",
    "dynopool2d",
    "dynopool_layers",
    "dynopoolify",
    "freeze_dynopools",
    "param_groups",
    "ste_output_size",
]
__version__ = "0.1.0"
