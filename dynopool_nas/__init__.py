"""dynopool-nas: DynOPool (Dynamically Optimized Pooling) for PyTorch and NNI."""

from .cost import GMACsCost, MACsReport, count_macs
from .layer import DynOPool2d
from .ops import dynopool2d, ste_output_size

__all__ = ["DynOPool2d", "GMACsCost", "MACsReport", "count_macs", "dynopool2d", "ste_output_size"]
__version__ = "0.1.0"
