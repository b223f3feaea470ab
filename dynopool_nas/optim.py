"""How optimizers treat DynOPool scales: kept in range after every step, and a step size that
does not depend on the layer.

Two global ``torch.optim`` step hooks, installed when this module is imported, act on every
``torch.optim.Optimizer`` (SGD, Adam, Lightning's, NNI's architecture optimizers):

* after each step, every DynOPool ``alpha`` the optimizer holds is projected back into its
  layer's range (:meth:`~dynopool_nas.DynOPool2d.project_`), so a scale can neither cross
  ``alpha = 0`` nor grow past its bound, and its gradient stays alive at the bound;
* before each step, the gradients of a parameter group that carries ``scale_step="normalized"``
  (the default of :func:`~dynopool_nas.param_groups`) are divided by their running RMS (as Adam
  does) and by the group's momentum gain (``1 / (1 - momentum)`` for SGD), and a DynOPool
  ``alpha``'s is also multiplied by ``alpha``: a steady push then changes a scale by the group's
  learning rate of itself per step (a step in ``log alpha``), less when its gradient is noisy,
  whatever the layer's input size (``d size / d alpha = -H_in / alpha^2``), the work downstream
  and the loss's scale. ``"plain"`` keeps the thesis's gradient. The running RMS lives beside
  the optimizer, not in its ``state_dict``: a resumed run starts it afresh.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["SCALE_STEPS", "SCALE_STEP_KEY", "ScaleStep", "project_scales_", "register_scale"]

ScaleStep = Literal["normalized", "plain"]
SCALE_STEPS: tuple[str, ...] = ("normalized", "plain")
SCALE_STEP_KEY = "scale_step"  # the parameter-group key the pre-step hook reads

_RMS_DECAY = 0.999  # Adam's second-moment decay
_RMS_EPS = 1e-12

# alpha -> the layers that use it (a WeakSet: a supernet module may share its original's alpha)
_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()
_owners_version = 0
# optimizer -> (layout, DynOPool alphas it holds), so that a step does not search every parameter
_SCALES_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# optimizer -> {param: (steps, running mean of grad^2)} for the normalized groups
_RMS_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_scale(layer: nn.Module) -> None:
    """Record that ``layer.alpha`` is a DynOPool scale, projected by ``layer.project_()`` after
    every optimizer step. DynOPool2d registers itself when built and on every forward pass (so
    deep copies and reassigned parameters are covered too)."""
    global _owners_version
    owners = _OWNERS.get(layer.alpha)
    if owners is None:
        owners = _OWNERS[layer.alpha] = weakref.WeakSet()
    if layer not in owners:
        owners.add(layer)
        _owners_version += 1


def is_scale(param: Tensor) -> bool:
    """Whether ``param`` is a registered DynOPool ``alpha``."""
    return bool(_OWNERS.get(param))


def project_scales_(model: nn.Module) -> None:
    """Project every DynOPool's ``alpha`` in ``model`` into its range
    (:meth:`~dynopool_nas.DynOPool2d.project_`). Optimizer steps do this by themselves; call it
    after changing alphas by other means (a custom update rule, a budget rescaling)."""
    from .layer import DynOPool2d

    for module in model.modules():
        if isinstance(module, DynOPool2d):
            module.project_()


def _layout(optimizer: torch.optim.Optimizer) -> tuple[Any, ...]:
    return (_owners_version, *((id(group["params"]), len(group["params"])) for group in optimizer.param_groups))


def _scales_of(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    layout = _layout(optimizer)
    cached = _SCALES_OF.get(optimizer)
    if cached is None or cached[0] != layout:
        scales = [p for group in optimizer.param_groups for p in group["params"] if is_scale(p)]
        cached = _SCALES_OF[optimizer] = (layout, [weakref.ref(p) for p in scales])
    return [p for p in (ref() for ref in cached[1]) if p is not None]


@torch.no_grad()
def _project_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _OWNERS:
        return
    for alpha in _scales_of(optimizer):
        for layer in list(_OWNERS.get(alpha, ())):
            layer.project_()


def _normalized_groups(optimizer: torch.optim.Optimizer) -> Iterable[dict[str, Any]]:
    return (group for group in optimizer.param_groups if group.get(SCALE_STEP_KEY) == "normalized")


def _normalize_before_step(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Normalize the gradients now or, for a step given a closure (which computes them, as
    Lightning's do), right after the closure has run."""
    groups = list(_normalized_groups(optimizer))
    if not groups:
        return None
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        _normalize_groups(optimizer, groups)
        return None

    def normalized_closure() -> Any:
        loss = closure()
        _normalize_groups(optimizer, groups)
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": normalized_closure}
    return (args[0], normalized_closure, *args[2:]), kwargs


def _momentum_gain(group: dict[str, Any]) -> float:
    """How much a momentum buffer amplifies a steady gradient (SGD's and RMSprop's ``momentum``)."""
    momentum = group.get("momentum") or 0.0
    if not 0.0 < momentum < 1.0:
        return 1.0
    dampening = 0.0 if group.get("nesterov") else group.get("dampening") or 0.0
    return (1.0 - dampening) / (1.0 - momentum)


@torch.no_grad()
def _normalize_groups(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    states = _RMS_STATE.get(optimizer)
    if states is None:
        states = _RMS_STATE[optimizer] = WeakIdKeyDictionary()
    for group in groups:
        gain = _momentum_gain(group)
        for param in group["params"]:
            if param.grad is not None:
                _normalize_(param, states, gain)


def _normalize_(param: Tensor, states: WeakIdKeyDictionary, gain: float) -> None:
    """Divide ``param.grad`` by its bias-corrected running RMS (as Adam does) and by the momentum
    ``gain``; a DynOPool alpha's also by ``1 / alpha``, which makes its step relative (a step in
    ``log alpha``)."""
    grad = param.grad
    steps, mean_square = states.get(param, (0, None))
    if mean_square is None or mean_square.shape != grad.shape:
        mean_square = torch.zeros_like(grad)
    steps += 1
    mean_square.mul_(_RMS_DECAY).addcmul_(grad, grad, value=1 - _RMS_DECAY)
    states[param] = (steps, mean_square)
    rms = (mean_square / (1 - _RMS_DECAY**steps)).sqrt_().add_(_RMS_EPS)
    grad.div_(rms.mul_(gain))
    if is_scale(param):
        grad.mul_(param.detach().abs())


_HOOKS = (register_optimizer_step_pre_hook(_normalize_before_step),
          register_optimizer_step_post_hook(_project_after_step))
