"""NNI search spaces built on DynOPool.

Importing this package (and so :mod:`strategies`, which builds on it) imports NNI quietly
(:mod:`search_spaces._nni`) and makes every NNI one-shot strategy refuse a space that holds a
DynOPool2d unless the strategy declares that it can search its scale
(:mod:`search_spaces._nni_compat`); the spaces themselves are plain ``ModelSpace`` subclasses.
"""

from . import _nni, _nni_compat  # noqa: F401  (NNI quietly, then this package's changes to it)
