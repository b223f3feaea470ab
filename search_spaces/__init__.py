"""NNI search spaces built on DynOPool.

Importing this package (or :mod:`strategies`) makes every NNI one-shot strategy refuse a space
that holds a DynOPool2d unless the strategy can search its scale (see
:mod:`strategies._nni_compat`); the spaces themselves are plain ``ModelSpace`` subclasses.
"""

import strategies._nni_compat  # noqa: F401
