"""dynopool-nas: DynOPool (Dynamically Optimized Pooling) as a learnable resizing layer.

This package is plain PyTorch; the NNI integration lives in ``search_spaces`` and
``strategies``.
"""

from .convert import dynopool_layers, dynopoolify, param_groups
from .cost import GMACsCost, MACsReport, count_macs
from .data import DATASETS, DataSplits, DigitsDataset, load_dataset
from .export import FixedDynOPool2d, freeze_dynopools
from .layer import DynOPool2d
from .models import create_model
from .ops import dynopool2d, ste_output_size
from .shape_adaptor import ShapeAdaptor2d, shape_adaptify

__all__ = [
    "DATASETS",
    "DataSplits",
    "DigitsDataset",
    "DynOPool2d",
    "FixedDynOPool2d",
    "GMACsCost",
    "MACsReport",
    "ShapeAdaptor2d",
    "count_macs",
    "create_model",
    "dynopool2d",
    "dynopool_layers",
    "dynopoolify",
    "freeze_dynopools",
    "load_dataset",
    "param_groups",
    "shape_adaptify",
    "ste_output_size",
]
__version__ = "0.1.0"
