"""What every DynOPool search space shares."""

from __future__ import annotations

from typing import Any

from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from dynopool_nas import DynOPool2d

__all__ = ["DynOPoolSpace"]


def _refuse_non_differentiable(strategy: Any) -> Any:
    def hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> Any:
        from strategies import DynOPoolDARTS, DynOPoolGumbelDARTS

        if type(module) is DynOPool2d and not isinstance(strategy, (DynOPoolDARTS, DynOPoolGumbelDARTS)):
            raise TypeError(
                f"{type(strategy).__name__} cannot search DynOPool {name!r}: its scale is a continuous parameter "
                "learned by gradient descent on the validation split, which sampling strategies (RandomOneShot, "
                "ENAS), Proxyless's binary gates and NNI's own DARTS (weight decay on it, no GMACs gradient) do "
                "not do. Use strategies.DynOPoolDARTS or strategies.DynOPoolGumbelDARTS, or fix the scales first "
                "with dynopool_nas.freeze_dynopools."
            )
        return None

    return hook


class DynOPoolSpace(ModelSpace):
    """An NNI model space with DynOPools: one-shot strategies other than
    :class:`~strategies.DynOPoolDARTS` / :class:`~strategies.DynOPoolGumbelDARTS` are refused with
    an error that says why."""

    def extra_oneshot_hooks(self, strategy: Any) -> list[Any]:
        return [_refuse_non_differentiable(strategy)]
