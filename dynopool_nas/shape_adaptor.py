"""Shape Adaptor (Liu et al., "Shape Adaptor: A Learnable Resizing Module", ECCV 2020), the
learnable-resizing baseline of thesis section 5.4.

Two branches at fixed ratios -- a pooling (``r1``, 0.5 for a 2x2 max-pool) and the identity
(``r2 = 1``) -- are both resized bilinearly to the mixed size ``H * (s*r1 + (1-s)*r2)`` and mixed
with weights ``s`` and ``1 - s``, ``s = sigmoid(alpha)``: one learned scalar per layer, the same
ratio on both axes. The size is computed without a gradient; alpha learns through the mixing
weights.

Two ways to use it, one layer (:class:`ShapeAdaptor2d`) with options:

* ``shape_adaptify(model)`` (``placement="human"``, this project's baseline): an adaptor wherever
  :func:`~dynopool_nas.dynopoolify` would put a DynOPool (the human model's resizers), initial
  ratio 0.55, ``align_corners=False``, sizes rounded.
* ``shape_adaptify(model, placement="authors", input_size=32)``: as the authors' code runs it
  (repository ``lorenmt/shape-adaptor``, ``model_list.py``, ``VGG(mode='shape-adaptor')``): the
  human pooling is removed, ``int(log2(input_size / 2))`` adaptors go uniformly over the
  convolution blocks (never after the last one), each initialized by their ``SA_init`` so that
  the last map would be ``output_size`` (8) wide, resized with ``align_corners=True`` to
  ``int(running_dim * s)`` (truncated).

Differences from the authors' code that remain (none changes what the layer computes on the
square maps of the VGG-style models used here):

* their ``alpha`` weights the identity branch (``s_alpha = r1 + (r2 - r1) sigmoid(alpha)``),
  this layer's weights the pooled one: ``alpha_here = -alpha_theirs``, the same ratio and mixing;
* they track one running dimension from the input size (a square output ``dim x dim``); here each
  axis of the incoming map is resized, ``int(H_in * s)`` and ``int(W_in * s)``, which equals their
  running dimension while the convolutions keep the size (3x3, padding 1) and the input is square;
* where a model has fewer convolution blocks than adaptors (the small CNN: 3 places, 4 adaptors
  for 32x32), their index formula repeats places and their forward applies one adaptor per place
  while ``SA_init`` still counts 4 (so the last map would start 10 wide); here the count is capped
  at the number of places and ``SA_init`` uses the count placed (the last map starts 7 wide:
  8 before truncation);
* their memory-limit penalty (``--limit_dim``, off by default) and residual form (ResNet,
  MobileNetV2: ``2 (1-s) x_pool + 2 s x``) are not implemented;
* their alphas have an optimizer of their own (SGD lr 0.1, Nesterov momentum 0.9, cosine, one
  step every 20 iterations on a batch of its own forward pass); the library trains them as one
  parameter group of the model's optimizer (``fit(alpha_lr=..., scale_step="plain")``).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import dynopool_layers, dynopoolify, replace_dynopools
from .layer import DynOPool2d
from .ops import check_aggregation

__all__ = ["ShapeAdaptor2d", "sa_init", "shape_adaptify"]

SizeRule = Literal["round", "truncate"]
Placement = Literal["human", "authors"]
SIZE_RULES: tuple[str, ...] = ("round", "truncate")
PLACEMENTS: tuple[str, ...] = ("human", "authors")

_SA_INIT_EPS = 1e-4  # the authors' SA_init adds it inside the log ("avoid inf")
# what may follow a convolution inside one block: the adaptor goes after the last of them
_BLOCK_TAIL = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish)


class ShapeAdaptor2d(nn.Module):
    """Shape Adaptor between a pooled branch (ratio ``r1``) and the identity (``r2 = 1``).

    The output is ``s * resize(pool(x)) + (1 - s) * resize(x)`` with ``s = sigmoid(alpha)`` (Liu
    et al., ECCV 2020, eq. 1 with the branches swapped: here ``s`` weights the pooled branch),
    both resized bilinearly to ``H_in * ratio`` by ``W_in * ratio``, ``ratio = s*r1 + (1 - s)``.

    Args:
        r1: ratio of the pooled branch (the human model's, 0.5 for a stride of 2).
        initial_ratio: the mixed ratio at initialization, strictly between ``r1`` and 1 (0.55:
            close to the human model's 0.5 while ``s`` can still move; :func:`sa_init` gives the
            authors' initialization).
        aggregation: the pooled branch's pooling, ``'max'`` (the authors') or ``'mean'``.
        name: label for reports.
        align_corners: passed to the bilinear resizing (the authors' code: True).
        size_rule: ``'round'`` rounds ``H_in * ratio`` to the nearest size, ``'truncate'`` takes
            its integer part as the authors' ``int(running_dim * s_alpha)`` does; at least 1
            either way.
    """

    def __init__(self, r1: float = 0.5, initial_ratio: float = 0.55, aggregation: str = "max",
                 name: str | None = None, *, align_corners: bool = False, size_rule: SizeRule = "round") -> None:
        super().__init__()
        if not 0 < r1 < initial_ratio < 1:
            raise ValueError(f"need 0 < r1 < initial_ratio < 1, got r1={r1}, initial_ratio={initial_ratio}")
        check_aggregation(aggregation)
        if size_rule not in SIZE_RULES:
            raise ValueError(f"size_rule must be one of {SIZE_RULES}, got {size_rule!r}")
        weight = (1 - initial_ratio) / (1 - r1)  # s with r1*s + (1 - s) = initial_ratio
        self.alpha = nn.Parameter(torch.tensor(math.log(weight / (1 - weight))))
        self.r1, self.aggregation, self.name = r1, aggregation, name or type(self).__name__
        self.align_corners, self.size_rule = bool(align_corners), size_rule
        self.output_size: tuple[int, int] | None = None

    @property
    def ratio(self) -> float:
        """The current mixed ratio ``s*r1 + (1 - s)``."""
        weight = float(torch.sigmoid(self.alpha.detach()))
        return weight * self.r1 + (1 - weight)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The output size for an ``height x width`` input at the current ratio."""
        ratio = self.ratio
        rule = int if self.size_rule == "truncate" else round
        return max(rule(height * ratio), 1), max(rule(width * ratio), 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"{self.name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        size = self.size_for(int(x.shape[-2]), int(x.shape[-1]))
        self.output_size = size
        kernel = max(round(1 / self.r1), 1)
        pooled = F.max_pool2d(x, kernel) if self.aggregation == "max" else F.avg_pool2d(x, kernel)
        weight = torch.sigmoid(self.alpha)
        return weight * self._resize(pooled, size) + (1 - weight) * self._resize(x, size)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return (f"r1={self.r1}, ratio={self.ratio:.4g}, aggregation={self.aggregation!r}, "
                f"align_corners={self.align_corners}, size_rule={self.size_rule!r}")


def sa_init(input_size: int, output_size: int, count: int, r1: float = 0.5, r2: float = 1.0) -> float:
    """The authors' ``SA_init`` as a ratio: the initial ``s_alpha`` of each of ``count`` adaptors
    such that ``input_size * s_alpha ** count = output_size`` (before truncation), with their
    ``eps`` of 1e-4 inside the log; when even ``r1 ** count`` leaves the map wider than
    ``output_size`` their ``alpha = log(eps)`` (ratio just above ``r1``)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0 < output_size < input_size:
        raise ValueError(f"need 0 < output_size < input_size, got output_size={output_size}, input_size={input_size}")
    if not 0 < r1 < r2:
        raise ValueError(f"need 0 < r1 < r2, got r1={r1}, r2={r2}")
    if input_size * r1**count > output_size:
        odds = _SA_INIT_EPS
    else:
        target = (output_size / input_size) ** (1 / count)
        odds = -(target - r1) / (target - r2) + _SA_INIT_EPS
    weight = odds / (1 + odds)  # sigmoid(log(odds)): their weight of the identity branch
    return r1 + (r2 - r1) * weight


def _is_pooling(module: nn.Module) -> bool:
    if not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return False
    stride = module.stride if module.stride is not None else module.kernel_size
    return any(s > 1 for s in ((stride, stride) if isinstance(stride, int) else stride))


def _authors_places(model: nn.Module) -> tuple[nn.Sequential, list[int]]:
    """The feature extractor (the ``nn.Sequential`` holding every convolution) and, for each
    convolution but the last, the index of its block's last layer (convolution, batch norm,
    activation): where the authors' ``sampling_index_full`` puts an adaptor."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("placement='authors' needs a model with convolutions")
    strided = [name for name, conv in convs if any(s > 1 for s in conv.stride)]
    if strided:
        raise ValueError(f"placement='authors' takes a VGG-style model whose only resizers are pooling layers; "
                         f"{strided} are strided convolutions")
    parents = {name.rpartition(".")[0] for name, _ in convs}
    features = model.get_submodule(parents.pop()) if len(parents) == 1 else None
    if not isinstance(features, nn.Sequential):
        raise ValueError("placement='authors' takes a VGG-style model: every convolution a child of one "
                         "nn.Sequential (such as models.small_cnn or models.vgg16_cifar)")
    layers = list(features)
    places = []
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            end = index
            while end + 1 < len(layers) and isinstance(layers[end + 1], _BLOCK_TAIL):
                end += 1
            places.append(end)
    return features, places[:-1]


def _adaptify_authors(model: nn.Module, input_size: int | None, output_size: int, count: int | None,
                      align_corners: bool, size_rule: SizeRule) -> nn.Module:
    if input_size is None:
        raise ValueError("placement='authors' needs input_size (the input's width, e.g. 32): it sets the number "
                         "of adaptors and their initialization")
    features, places = _authors_places(model)
    if not places:
        raise ValueError("placement='authors' needs at least two convolutions (never after the last one)")
    wanted = int(math.log2(input_size / 2)) if count is None else count
    if wanted < 1:
        raise ValueError(f"count must be at least 1, got {wanted} (input_size={input_size})")
    if count is not None and count > len(places):
        raise ValueError(f"count={count} adaptors but only {len(places)} convolution blocks to put them after")
    count = min(wanted, len(places))
    gap = len(places) / count  # the authors' "insert shape adaptors uniformly"
    chosen = [places[int(i * gap)] for i in range(count)]
    ratio = sa_init(input_size, output_size, count)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_pooling(child):
                setattr(parent, name, nn.Identity())
    prefix = next(name for name, module in model.named_modules() if module is features)
    for index in chosen:
        name = f"{prefix}.{index}.1" if prefix else f"{index}.1"  # its module path
        adaptor = ShapeAdaptor2d(0.5, ratio, "max", name, align_corners=align_corners, size_rule=size_rule)
        features[index] = nn.Sequential(features[index], adaptor)
    return model


def shape_adaptify(model: nn.Module, initial_ratio: float = 0.55, *, placement: Placement = "human",
                   input_size: int | None = None, output_size: int = 8, count: int | None = None,
                   align_corners: bool | None = None, size_rule: SizeRule | None = None) -> nn.Module:
    """A deep copy of ``model`` with :class:`ShapeAdaptor2d` layers.

    ``placement="human"`` (default): wherever :func:`~dynopool_nas.dynopoolify` would put a
    DynOPool (the same places, the same shared branches), each adaptor's ``r1`` the human model's
    ratio (kept where it is below 0.5, ResNet's stem at 0.25) and its initial ratio
    ``initial_ratio``; defaults ``align_corners=False``, ``size_rule='round'``.

    ``placement="authors"``: the Shape Adaptor paper's standard mode (their ``model_list.py``,
    ``VGG(mode='shape-adaptor')``) on a VGG-style model such as ``models.small_cnn`` or
    ``models.vgg16_cifar``: every pooling with a stride becomes ``nn.Identity``, and ``count``
    (default ``int(log2(input_size / 2))``, capped at the number of places) adaptors with
    ``r1 = 0.5`` (2x2 max-pool) go after the convolution blocks (after the block's batch norm and
    activation; never after the last block) at the authors' uniform places
    ``places[int(i * len(places) / count)]``, each initialized by :func:`sa_init` so that an
    ``input_size`` map would end ``output_size`` wide (``initial_ratio`` is not used); defaults
    ``align_corners=True``, ``size_rule='truncate'``. Each adaptor is wrapped with the layer it
    follows in an ``nn.Sequential`` (an activation has no parameters, so the weights keep their
    ``state_dict`` keys).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    authors = placement == "authors"
    align = authors if align_corners is None else align_corners
    rule: SizeRule = ("truncate" if authors else "round") if size_rule is None else size_rule
    if rule not in SIZE_RULES:
        raise ValueError(f"size_rule must be one of {SIZE_RULES}, got {rule!r}")
    if not authors and count is not None:
        raise ValueError("count is for placement='authors'; placement='human' puts one adaptor per human resizer")
    if authors:
        return _adaptify_authors(copy.deepcopy(model), input_size, output_size, count, align, rule)
    converted = dynopoolify(model)

    def adaptor(layer: DynOPool2d) -> ShapeAdaptor2d:
        r1 = min(layer.scale)
        return ShapeAdaptor2d(r1, max(initial_ratio, r1 + 0.05), layer.aggregation, layer.name,
                              align_corners=align, size_rule=rule)

    replace_dynopools(converted, adaptor)
    if any(True for _ in dynopool_layers(converted)):
        raise RuntimeError("shape_adaptify left a DynOPool2d in place")
    return converted
