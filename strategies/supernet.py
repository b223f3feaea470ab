"""DynOPool as a module of NNI's one-shot supernets.

One-shot strategies turn a model space into a supernet by running mutation hooks over its
submodules. :meth:`DynOPoolSupernet.mutate` is that hook for :class:`~dynopool_nas.DynOPool2d`:
the replacement *is* a DynOPool2d (so conversion rules, the GMACs cost and exports keep working)
whose ``alpha`` is an architecture parameter, trained by the strategy's architecture optimizer
on the validation split instead of by the weight optimizer.

Every DynOPool of a space is known by one name in reports, exported architectures and rebuilt
models: the ``name`` it was given, or else its module path in the space (:func:`name_dynopools`).
"""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (NNI without its harmless import-time warnings)

# isort: split

import inspect
from typing import Any

from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

from dynopool_nas import DynOPool2d

__all__ = [
    "SCALE_LABEL_PREFIX", "DynOPoolSupernet", "dynopool_name", "name_dynopools", "scale_label",
]

SCALE_LABEL_PREFIX = "dynopool/"
_UNNAMED = DynOPool2d.__name__  # the name a DynOPool2d created without ``name=`` carries


def dynopool_name(path: str, layer: DynOPool2d) -> str:
    """The name under which ``layer``, found at module ``path`` of a space, is searched and
    exported: its own ``name`` if it was given one, else ``path``."""
    return path if layer.name == _UNNAMED else layer.name


def name_dynopools(space: nn.Module) -> nn.Module:
    """Give every DynOPool of ``space`` created without ``name=`` its module path as name, in
    place, so that the space, its supernet and its frozen models agree (freezing copies the
    layers, and with them their names). Returns ``space``; raises ``ValueError`` if two
    different DynOPools share a name."""
    paths: dict[str, str] = {}
    for path, module in space.named_modules():  # a shared layer is listed once
        if not isinstance(module, DynOPool2d):
            continue
        module.name = dynopool_name(path, module)
        if module.name in paths:
            raise ValueError(
                f"the DynOPools at {paths[module.name]!r} and {path!r} are both named {module.name!r}; give each its "
                "own name (or share one layer object where two branches must have one scale)"
            )
        paths[module.name] = path
    return space


def scale_label(layer: DynOPool2d) -> str:
    """The label under which a DynOPool's learned scale is exported."""
    return SCALE_LABEL_PREFIX + layer.name


def _options(layer: DynOPool2d) -> dict[str, Any]:
    """The constructor arguments that rebuild ``layer`` (each is kept under its own name)."""
    names = list(inspect.signature(DynOPool2d.__init__).parameters)[1:]
    return {name: getattr(layer, name) for name in names if hasattr(layer, name)}


class DynOPoolSupernet(DynOPool2d, BaseSuperNetModule):
    """A DynOPool2d whose ``alpha`` is an architecture parameter of a one-shot supernet.

    It holds no child module, so the hook traversal, which descends into replacements, cannot
    wrap it again; a DynOPool shared by several branches is replaced by one shared module.
    """

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> Any:
        if type(module) is not DynOPool2d:
            return None
        key = f"_dynopool_{id(module)}"
        if key not in memo:
            replacement = cls(**_options(module) | {"name": dynopool_name(name, module)})
            replacement.alpha = module.alpha
            memo[key] = replacement
        return memo[key]

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        label = scale_label(self)
        return {} if label in memo else {label: list(self.scale)}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def freeze(self, sample: dict[str, Any]) -> DynOPool2d:
        return DynOPool2d(**_options(self) | {"scale": sample.get(scale_label(self), self.scale)})

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]
