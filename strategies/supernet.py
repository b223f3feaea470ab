"""DynOPool as a module of NNI's one-shot supernets.

One-shot strategies turn a model space into a supernet by running mutation hooks over its
submodules. :meth:`DynOPoolSupernet.mutate` is that hook for :class:`~dynopool_nas.DynOPool2d`:
the replacement *is* a DynOPool2d (so conversion rules, the GMACs cost and exports keep working)
whose ``alpha`` is an architecture parameter, trained by the strategy's architecture optimizer
on the validation split instead of by the weight optimizer.

The replacement keeps the DynOPool's name in the space
(:func:`~search_spaces.arch.dynopool_name`), under which its scale is exported
(:func:`scale_label`).
"""

from __future__ import annotations

from search_spaces import _nni  # noqa: F401  (first: NNI quietly, with the package's changes to it)

# isort: split

import inspect
from typing import Any

from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

from dynopool_nas import DynOPool2d
from search_spaces.arch import dynopool_name, freeze_architecture

__all__ = ["SCALE_LABEL_PREFIX", "DynOPoolSupernet", "derived_choices", "derived_model", "scale_label"]

SCALE_LABEL_PREFIX = "dynopool/"


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


def derived_choices(supernet: nn.Module) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The architecture a one-shot supernet derives now: ``(choices, scales)``, the strongest
    candidate of every categorical choice by label and every DynOPool's scale ``(r_h, r_w)`` by
    name."""
    sample: dict[str, Any] = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            sample.update(module.export(memo=sample))
    prefix = len(SCALE_LABEL_PREFIX)
    choices = {key: value for key, value in sample.items() if not key.startswith(SCALE_LABEL_PREFIX)}
    scales = {key[prefix:]: value for key, value in sample.items() if key.startswith(SCALE_LABEL_PREFIX)}
    return choices, scales


def derived_model(supernet: nn.Module) -> nn.Module:
    """The plain model of the architecture ``supernet`` (a mutated ``ModelSpace``) derives now
    (:func:`derived_choices`), freshly initialized."""
    return freeze_architecture(supernet, *derived_choices(supernet))
