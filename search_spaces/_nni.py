"""Imported first by every module that touches NNI (through :mod:`search_spaces`, which
:mod:`strategies` and the commands import): imports NNI's NAS modules without the warnings NNI
3.0 prints on import about PyTorch classes newer than itself."""

from dynopool_nas._quiet import import_nni

import_nni()
