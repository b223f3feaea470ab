"""Imported first by :mod:`strategies` (and so by :mod:`search_spaces`): imports NNI's NAS
modules without the warnings NNI 3.0 prints on import about PyTorch classes newer than itself."""

from dynopool_nas._quiet import import_nni

import_nni()
