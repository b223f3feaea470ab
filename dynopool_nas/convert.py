"""Turn a CNN's resizers into DynOPools (thesis section 4.4, eq. 5.1 and 5.2).

* ``Pool_s -> DynOPool``: max/average pooling with stride > 1 (global pooling stays).
* ``ReLU(Conv_s) -> DynOPool(ReLU(Conv_1))``: a strided convolution runs at stride 1 and a
  DynOPool follows its normalization and activation (``placement='after'``, the default).
* ``placement='before'``: ``Conv_s -> Conv_1(DynOPool)``, the map is resized first and the
  convolution runs on the resized map (like ResNet-D's pooled shortcut). At the initial scales
  the model then has the human model's MACs, whereas eq. 5.2 runs every formerly strided
  convolution at full resolution (+34% MACs for ResNet-50 at 224x224).
* At stride 1 a convolution keeps its input's size: with its own padding where that gives the
  size, otherwise with 'same' padding in front of it, asymmetric for even kernels as in
  TensorFlow (``d(k-1)`` pixels, the odd one right and bottom). This is how patchify and
  downsampling convolutions without padding convert (ConvNeXt's 4x4/4 stem, its 2x2/2
  downsampling): the human output ``i`` is the stride-1 output at ``s*i + (k-1)//2``, which the
  DynOPool's cell ``i`` covers at the initial scale ``1/s`` (for ``k = s = 2`` on even sizes the
  cell is the 2x2 max of the stride-1 outputs whose top-left one is the human output, as for
  the 3x3/2 convolutions of eq. 5.2).
* Branches whose outputs meet (added, concatenated, multiplied: a residual block's main path
  and shortcut, ShuffleNet's or Inception's branches) must keep equal sizes, so every set of
  DynOPools whose outputs meet becomes one DynOPool module used in each place (section 4.4:
  they share one alpha), the one first in module order, with its aggregation. The meeting points are found
  by running the converted model once on the meta device (shapes only, nothing computed) with
  every DynOPool keeping its input's size, following which resizers each map went through.
  Branches that meet after different resizers (two strided layers against one, a fixed crop
  against a DynOPool), and models that do not run with their maps at the input's size (a head
  that needs one feature-map size, such as a ``Linear`` on flattened maps), are refused with a
  message that says where.
* A ResNet stem (strided conv, then max-pool) becomes one DynOPool at scale 0.25 (section 5.2.1).

Family rules handle torchvision ResNets (the shortcut's DynOPool in front of its 1x1
convolution) and timm's blocks with an ``aa`` anti-aliasing slot (EfficientNets, ResNets); a
generic rule handles ``nn.Sequential`` runs such as torchvision's ``Conv2dNormActivation``; any
other strided convolution becomes ``Sequential(conv at stride 1, DynOPool)``. Modules whose
parameters move into a new ``nn.Sequential`` change their ``state_dict`` keys, so load
pretrained weights first.

NNI search spaces (a ``ModelSpace``, or any NNI mutable module with choices left) are refused:
freezing a space rebuilds its layers from its own recipe, which drops the DynOPools. Convert the
human model first and build the space around the converted model (as
``search_spaces.converted.ConvertedSpace`` does), use the DynOPool spaces (``DynOPoolCellSpace``,
``EfficientNetSpace``), or convert a frozen (fixed) architecture.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torchvision.models.resnet import BasicBlock, Bottleneck

from ._utils import eval_mode
from .layer import DynOPool2d, ScaleLike
from .optim import SCALE_STEP_KEY, SCALE_STEPS, ScaleStep

__all__ = ["PLACEMENTS", "Placement", "dynopool_layers", "dynopoolify", "param_groups", "replace_dynopools"]

Placement = Literal["after", "before"]
PLACEMENTS: tuple[str, ...] = ("after", "before")

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_FOLLOWERS = (
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.Mish,
)
_PADS: dict[str, type[nn.Module]] = {
    "zeros": nn.ZeroPad2d,
    "reflect": nn.ReflectionPad2d,
    "replicate": nn.ReplicationPad2d,
    "circular": nn.CircularPad2d,
}


def _followers() -> tuple[type[nn.Module], ...]:
    """Normalization/activation modules that stay before the DynOPool (eq. 5.2)."""
    try:
        from timm.layers import BatchNormAct2d, GroupNormAct, LayerNorm2d
    except ImportError:
        return _FOLLOWERS
    return (*_FOLLOWERS, BatchNormAct2d, GroupNormAct, LayerNorm2d)


def _stride(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    stride = stride if isinstance(stride, (tuple, list)) else (stride, stride)
    return max(stride) if all(isinstance(s, int) for s in stride) else 1


def _is_strided_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and _stride(module) > 1


def _is_strided_pool(module: nn.Module) -> bool:
    return isinstance(module, _POOLS) and _stride(module) > 1


def _human_scale(module: nn.Module) -> tuple[float, float]:
    stride = module.stride if isinstance(module.stride, (tuple, list)) else (module.stride,) * 2
    return 1.0 / stride[0], 1.0 / stride[1]


def _same_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding that keeps the size at stride 1: ``d(k-1)`` per
    axis, the odd pixel right and bottom (TensorFlow's 'SAME', timm's ``pad_same``)."""
    (kernel_h, kernel_w), (dilation_h, dilation_w) = conv.kernel_size, conv.dilation
    total_h, total_w = dilation_h * (kernel_h - 1), dilation_w * (kernel_w - 1)
    return total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2


def _stride_one(conv: nn.Conv2d) -> nn.Module:
    """``conv`` run at stride 1 with its output at its input's size: ``conv`` itself when its
    padding gives that size, else ``Sequential(padding, conv)`` with the convolution's own
    padding (and its mode) moved in front."""
    conv.stride = (1, 1)
    if type(conv).__name__ == "Conv2dSame" or getattr(conv, "same_pad", False):
        return conv  # timm's convolutions that pad dynamically to 'same'
    left, right, top, bottom = _same_padding(conv)
    if conv.padding == "same" or (left == right and top == bottom and tuple(conv.padding) == (top, left)):
        return conv
    pad = _PADS[conv.padding_mode]((left, right, top, bottom))
    conv.padding, conv.padding_mode = (0, 0), "zeros"
    return nn.Sequential(pad, conv)


def _parts(module: nn.Module) -> list[nn.Module]:
    """The modules of a padded convolution from :func:`_stride_one`, or ``[module]``."""
    return list(module) if type(module) is nn.Sequential else [module]


class _Converter:
    def __init__(self, scale: ScaleLike | None, stem_scale: ScaleLike, options: dict[str, Any],
                 placement: Placement) -> None:
        self.scale = scale
        self.stem_scale = stem_scale
        self.options = options
        self.before = placement == "before"

    def pool(self, human_scale: ScaleLike, aggregation: str | None = None) -> DynOPool2d:
        options = dict(self.options)
        if aggregation is not None and "aggregation" not in options:
            options["aggregation"] = aggregation
        return DynOPool2d(scale=self.scale if self.scale is not None else human_scale, **options)

    def resized_conv(self, conv: nn.Module, pool: DynOPool2d) -> nn.Sequential:
        """A formerly strided convolution with its DynOPool in front (``placement='before'``)."""
        return nn.Sequential(pool, *_parts(conv))

    # -- family rules -------------------------------------------------------------------
    def resnet_stem(self, model: nn.Module) -> None:
        conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
        if self.before or not (_is_strided_conv(conv) and _is_strided_pool(pool)):
            return
        model.conv1 = _stride_one(conv)
        model.maxpool = DynOPool2d(scale=self.stem_scale, **self.options)

    def resnet_block(self, block: BasicBlock | Bottleneck) -> None:
        main = "conv2" if isinstance(block, Bottleneck) else "conv1"
        norm_name = main.replace("conv", "bn")
        conv, norm = getattr(block, main), getattr(block, norm_name)
        if not _is_strided_conv(conv):
            return
        pool = self.pool(_human_scale(conv))
        conv = _stride_one(conv)
        if self.before:
            setattr(block, main, self.resized_conv(conv, pool))
        else:
            setattr(block, main, conv)
            setattr(block, norm_name, nn.Sequential(norm, nn.ReLU(), pool))
        if block.downsample is not None:
            shortcut = [_stride_one(layer) if _is_strided_conv(layer) else layer for layer in block.downsample]
            block.downsample = nn.Sequential(pool, *shortcut)
        block.stride = 1

    def timm_stem(self, model: nn.Module) -> None:
        conv, norm = getattr(model, "conv_stem", None), getattr(model, "bn1", None)
        if norm is None or not _is_strided_conv(conv):
            return
        pool = self.pool(_human_scale(conv))
        conv = _stride_one(conv)
        if self.before:
            model.conv_stem = self.resized_conv(conv, pool)
        else:
            model.conv_stem = conv
            model.bn1 = nn.Sequential(norm, pool)

    def timm_aa_block(self, block: nn.Module) -> None:
        if not isinstance(getattr(block, "aa", None), nn.Identity):
            return
        for child_name, child in block.named_children():
            if _is_strided_conv(child):
                pool = self.pool(_human_scale(child))
                conv = _stride_one(child)
                if self.before:
                    setattr(block, child_name, self.resized_conv(conv, pool))
                else:
                    setattr(block, child_name, conv)
                    block.aa = pool
                return

    # -- generic rules ------------------------------------------------------------------
    def sequential(self, seq: nn.Sequential) -> None:
        children = list(seq.named_children())
        followers = _followers()
        for index, (child_name, child) in enumerate(children):
            if not _is_strided_conv(child):
                continue
            pool = self.pool(_human_scale(child))
            conv = _stride_one(child)
            last = index
            while not self.before and last + 1 < len(children) and isinstance(children[last + 1][1], followers):
                last += 1
            if self.before:
                setattr(seq, child_name, self.resized_conv(conv, pool))
            elif last == index:
                setattr(seq, child_name, nn.Sequential(*_parts(conv), pool))
            else:
                setattr(seq, child_name, conv)
                last_name, last_module = children[last]
                setattr(seq, last_name, nn.Sequential(last_module, pool))

    def pools(self, model: nn.Module) -> None:
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if _is_strided_pool(child):
                    aggregation = "mean" if isinstance(child, nn.AvgPool2d) else "max"
                    setattr(parent, child_name, self.pool(_human_scale(child), aggregation))

    def leftover_convs(self, model: nn.Module) -> None:
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if _is_strided_conv(child):
                    pool = self.pool(_human_scale(child))
                    conv = _stride_one(child)
                    resized = self.resized_conv(conv, pool) if self.before else nn.Sequential(*_parts(conv), pool)
                    setattr(parent, child_name, resized)


# -- NNI search spaces ------------------------------------------------------------------
def _open_choices(model: nn.Module) -> tuple[str, list[str]] | None:
    """``(module path, choice labels)`` of the first NNI mutable module with choices left, found
    without importing NNI (its mutables have ``simplify()``, a dict of the choices)."""
    for name, module in model.named_modules():
        from_nni = any(cls.__module__.split(".")[0] == "nni" for cls in type(module).__mro__)
        simplify = getattr(module, "simplify", None)
        if from_nni and callable(simplify):
            choices = simplify()
            if choices:
                return name, [str(label) for label in choices]
    return None


def _refuse_search_space(model: nn.Module) -> None:
    found = _open_choices(model)
    if found is None:
        return
    name, labels = found
    where = f"its module {name!r} ({type(model.get_submodule(name)).__name__})" if name else "it"
    shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
    raise ValueError(
        f"dynopoolify: {type(model).__name__} is an NNI search space: {where} has choices left ({shown}). "
        "Freezing a space rebuilds its layers from its own recipe, which drops the DynOPools, so a space "
        "cannot be converted. Convert the human model first and build the space around the converted model "
        "(as search_spaces.converted.ConvertedSpace does), search the DynOPool spaces "
        "search_spaces.cells.DynOPoolCellSpace or search_spaces.efficientnet.EfficientNetSpace, or convert a frozen "
        "architecture (space.freeze(sample))."
    )


# -- branches that meet -----------------------------------------------------------------
_PROBE_SIZE = (37, 41)  # two primes, unlike any channel count: a map's spatial axes stand out
_EXPLICIT = "resized to an explicit size"  # such a map takes the size of whatever gave that size

_Step = int | str | tuple[str, int, int]


@dataclass(frozen=True)
class _Map:
    """Where a feature map's size comes from: the resizers it went through since the input (a
    DynOPool by ``id``, any other resize as ``('fixed', h, w)``), and the map's size in the probe
    before the first of them and after each."""

    chain: tuple[_Step, ...]
    sizes: tuple[tuple[int, int], ...]

    @property
    def size(self) -> tuple[int, int]:
        return self.sizes[-1]

    def then(self, step: _Step, size: tuple[int, int]) -> _Map:
        return _Map((*self.chain, step), (*self.sizes, size))

    def resized_to(self, size: tuple[int, int]) -> _Map:
        """After a fixed resize to ``size``; a run of fixed resizes that comes back to an earlier
        size of the run (a pad and a crop) cancels out."""
        end = len(self.chain)
        while end > 0 and isinstance(self.chain[end - 1], tuple):
            end -= 1
            if self.sizes[end] == size:
                return _Map(self.chain[:end], self.sizes[:end + 1])
        return self.then(("fixed", *size), size)


def _holds(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """Whether ``shape`` has ``size`` as two consecutive axes after the batch axis (NCHW, NHWC)."""
    return any(tuple(shape[i:i + 2]) == size for i in range(1, len(shape) - 1))


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _keep_size(x: Tensor) -> Tensor:
    """A DynOPool's forward during the probe: a new tensor of the input's size."""
    return x.view_as(x)


class _Meetings(TorchFunctionMode):
    """Follows every map's resizers through one forward pass and joins (union-find) the
    DynOPools at the same position of the resizer chains of maps that meet in an op."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pools = {id(layer): layer for _, layer in dynopool_layers(model)}
        self.order = {key: index for index, key in enumerate(self.pools)}
        self.parent = {key: key for key in self.pools}
        self.names = {id(module): name for name, module in model.named_modules()}
        self.maps: dict[int, tuple[Tensor, _Map | str]] = {}
        self.where: list[str] = []
        self.conflicts: dict[str, None] = {}

    # union-find over the DynOPools, the one first in module order at the root
    def find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: int, b: int) -> None:
        a, b = sorted((self.find(a), self.find(b)), key=self.order.__getitem__)
        self.parent[b] = a

    def canonical(self, label: _Map) -> _Map:
        return _Map(tuple(self.find(s) if isinstance(s, int) else s for s in label.chain), label.sizes)

    # labels of the tensors of this forward pass
    def label(self, tensor: Tensor) -> _Map | str | None:
        entry = self.maps.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def set_label(self, tensor: Tensor, label: _Map | str | None) -> None:
        if label is not None:
            self.maps[id(tensor)] = (tensor, label)  # the tensor is kept so that its id stays its own

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sources = [(t, label) for t in _tensors((args, kwargs)) if (label := self.label(t)) is not None]
        if not sources:
            return out
        maps = [label for _, label in sources if isinstance(label, _Map)]
        explicit_size = func is F.interpolate and (args[1] if len(args) > 1 else kwargs.get("size")) is not None
        if explicit_size or not maps:
            for tensor in _tensors(out):
                self.set_label(tensor, _EXPLICIT)
            return out
        label = self.meet(maps)
        source_dim = next(t.dim() for t, lab in sources if isinstance(lab, _Map))
        for tensor in _tensors(out):
            self.set_label(tensor, self.follow(label, tensor, source_dim))
        return out

    def follow(self, label: _Map, tensor: Tensor, source_dim: int) -> _Map | None:
        """The label of an op's output: its input's, a fixed resize's, or none (the map was
        reduced to a vector or a 1-wide strip, which broadcasts)."""
        shape = tuple(tensor.shape)
        if _holds(shape, label.size):
            return label
        if tensor.dim() == 4 and source_dim == 4 and min(shape[-2:]) > 1:
            return label.resized_to((int(shape[-2]), int(shape[-1])))
        return None

    def meet(self, maps: list[_Map]) -> _Map:
        first = self.canonical(maps[0])
        for other in map(self.canonical, maps[1:]):
            if other == first:
                continue
            pairs = list(zip(first.chain, other.chain))
            if len(first.chain) != len(other.chain) or any(
                a != b and not (isinstance(a, int) and isinstance(b, int)) for a, b in pairs
            ):
                where = self.where[-1] if self.where and self.where[-1] else "the model's own forward"
                self.conflicts[f"in {where!r}: [{self.describe(first)}] and [{self.describe(other)}]"] = None
                continue
            for a, b in pairs:
                if isinstance(a, int):
                    self.union(a, b)
        return self.canonical(first)

    def describe(self, label: _Map) -> str:
        return " -> ".join(map(self.describe_step, label.chain)) or "no resizer"

    def describe_step(self, step: _Step) -> str:
        if isinstance(step, int):
            return self.pools[step].name
        return step if isinstance(step, str) else f"a fixed resize to {step[1]}x{step[2]}"

    # module hooks
    def enter(self, module: nn.Module, args: Any) -> None:
        self.where.append(self.names.get(id(module), ""))

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.where.pop()

    def resized(self, module: nn.Module, args: Any, output: Tensor) -> None:
        source = self.label(args[0])
        size = (int(output.shape[-2]), int(output.shape[-1]))
        if not isinstance(source, _Map):
            source = _Map((), (size,)) if source is None else _Map((source,), (size, size))
        self.set_label(output, source.then(id(module), size))

    def run(self, model: nn.Module, example: Tensor, on_meta: bool) -> None:
        """One forward pass of ``model`` on ``example``, on the meta device or as it is."""
        if on_meta:
            example = torch.empty_like(example, device="meta")
        self.set_label(example, _Map((), ((int(example.shape[-2]), int(example.shape[-1])),)))
        with _meta_state(model) if on_meta else contextlib.nullcontext(), self:
            model(example)


@contextlib.contextmanager
def _meta_state(model: nn.Module) -> Iterator[None]:
    """Every parameter and buffer of ``model`` replaced by a meta tensor of its shape, restored
    afterwards (each module once, so shared modules and tied parameters come back as they were)."""
    saved = []
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, value in store.items():
                if value is not None:
                    saved.append((store, key, value))
                    meta = torch.empty_like(value, device="meta")
                    store[key] = nn.Parameter(meta, value.requires_grad) if isinstance(value, nn.Parameter) else meta
    try:
        yield
    finally:
        for store, key, value in saved:
            store[key] = value


def _probe_input(model: nn.Module, example_input: Tensor | None) -> Tensor:
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() != 4:
            raise ValueError(f"dynopoolify: example_input must be a 4-D tensor (N, C, H, W), got {example_input!r}")
        return example_input
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    param = next(model.parameters(), None)
    channels = conv.in_channels if conv is not None else 3
    return torch.zeros(1, channels, *_PROBE_SIZE, device=param.device if param is not None else None)


def _find_meetings(model: nn.Module, example_input: Tensor | None) -> _Meetings:
    """Run ``model`` with every DynOPool keeping its input's size and follow its maps (on the
    meta device; on the model's device if the model does not run there)."""
    example = _probe_input(model, example_input)
    pools = [layer for _, layer in dynopool_layers(model)]
    error: Exception | None = None
    for on_meta in (True, False):
        meetings = _Meetings(model)
        handles = [module.register_forward_pre_hook(meetings.enter) for module in model.modules()]
        handles += [module.register_forward_hook(meetings.leave) for module in model.modules()]
        handles += [pool.register_forward_hook(meetings.resized) for pool in pools]
        for pool in pools:
            pool.forward = _keep_size
        try:
            with eval_mode(model):
                meetings.run(model, example, on_meta)
            return meetings
        except Exception as caught:  # any failure of the user's model is reported below
            error = caught
        finally:
            for handle in handles:
                handle.remove()
            for pool in pools:
                del pool.forward
    shape = tuple(example.shape)
    raise ValueError(
        f"dynopoolify: could not run the converted {type(model).__name__} on an input of shape {shape} with every "
        "DynOPool keeping its input's size, which is how branches that must share one DynOPool are found "
        f"({type(error).__name__}: {error}). A model whose head needs one feature-map size (a Linear layer on "
        "flattened maps, a fixed reshape) cannot learn its sizes: end the features with global pooling "
        "(nn.AdaptiveAvgPool2d(1)). If the model needs another input, pass example_input=."
    ) from error


def _share_meeting_pools(model: nn.Module, example_input: Tensor | None) -> None:
    """Make every set of DynOPools whose outputs meet one module (the first in module order)."""
    meetings = _find_meetings(model, example_input)
    if meetings.conflicts:
        places = "; ".join(list(meetings.conflicts)[:3])
        more = f" (and {len(meetings.conflicts) - 3} more)" if len(meetings.conflicts) > 3 else ""
        raise ValueError(
            f"dynopoolify: branches of {type(model).__name__} meet after different resizers, so no shared "
            f"DynOPool can keep their sizes equal once the scales are learned: {places}{more}. Convert a model "
            "whose meeting branches are resized by the same number of strided layers, or replace those "
            "resizers by hand with one DynOPool2d module used in every branch."
        )
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, DynOPool2d):
                shared = meetings.pools[meetings.find(id(child))]
                if shared is not child:
                    setattr(parent, child_name, shared)


def dynopool_layers(model: nn.Module) -> Iterator[tuple[str, DynOPool2d]]:
    """``(name, layer)`` for every DynOPool2d of ``model``, each shared layer once."""
    for name, module in model.named_modules():
        if isinstance(module, DynOPool2d):
            yield name, module


def replace_dynopools(model: nn.Module, replacement: Callable[[DynOPool2d], nn.Module]) -> int:
    """Put ``replacement(layer)`` in place of every DynOPool2d of ``model`` (in place), one
    replacement per layer, so that a shared layer's replacement is shared; return how many
    layers were replaced."""
    replacements: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DynOPool2d):
                if id(child) not in replacements:
                    replacements[id(child)] = replacement(child)
                setattr(parent, name, replacements[id(child)])
    return len(replacements)


def dynopoolify(
    model: nn.Module,
    scale: ScaleLike | None = None,
    *,
    stem_scale: ScaleLike = 0.25,
    aggregation: str | None = None,
    min_size: float = 1.5,
    scale_bounds: tuple[float, float] | None = None,
    placement: Placement = "after",
    example_input: Tensor | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Replace every pooling layer with stride > 1 and every strided convolution by DynOPool.

    Args:
        model: any CNN (not an NNI search space); torchvision ResNets and timm models with an
            ``aa`` slot get their family rules. Branches whose outputs meet share one DynOPool.
        scale: initial scale of every DynOPool; ``None`` keeps the human model's ``1/stride``.
        stem_scale: initial scale of the single DynOPool that replaces a ResNet stem's strided
            convolution and max-pool (``placement='after'``; with ``'before'`` each gets its own).
        aggregation: force ``'max'`` or ``'mean'``; by default max, and mean for average pools.
        min_size, scale_bounds: passed to every :class:`DynOPool2d`.
        placement: ``'after'`` puts each strided convolution's DynOPool after its activation
            (eq. 5.2, the thesis's conversion); ``'before'`` puts it in front of the
            convolution, which keeps the human model's MACs at the initial scales.
        example_input: an input the model takes, whose shape (only) the search for meeting
            branches uses; by default one image of 37x41 with the first convolution's channels.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The converted model. Every DynOPool's ``name`` is its module path. Converting an
        already converted model returns it unchanged.

    Raises:
        ValueError: the model is an NNI search space, has neither a resizer to convert nor a
            DynOPool, has branches that meet after different resizers, or does not run with
            its maps kept at the input's size (see the module's documentation).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"dynopoolify: placement must be one of {PLACEMENTS}, got {placement!r}")
    _refuse_search_space(model)
    model = model if inplace else copy.deepcopy(model)
    options: dict[str, Any] = {"min_size": min_size, "scale_bounds": scale_bounds}
    if aggregation is not None:
        options["aggregation"] = aggregation
    converter = _Converter(scale, stem_scale, options, placement)
    converter.resnet_stem(model)
    converter.timm_stem(model)
    for module in list(model.modules()):
        if isinstance(module, (BasicBlock, Bottleneck)):
            converter.resnet_block(module)
        else:
            converter.timm_aa_block(module)
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            converter.sequential(module)
    converter.pools(model)
    converter.leftover_convs(model)
    if not any(True for _ in dynopool_layers(model)):
        raise ValueError(
            f"dynopoolify: {type(model).__name__} has no pooling layer with stride > 1 and no strided "
            "convolution, so there is nothing to replace by DynOPool2d"
        )
    _name_layers(model)
    _share_meeting_pools(model, example_input)
    _name_layers(model)
    return model


def _name_layers(model: nn.Module) -> None:
    for name, layer in dynopool_layers(model):
        layer.name = name


def param_groups(
    model: nn.Module,
    lr: float,
    alpha_lr: float | None = None,
    weight_decay: float = 0.0,
    scale_step: ScaleStep = "normalized",
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the weights, and every resizer's ``alpha`` (DynOPool's scale,
    a Shape Adaptor's mixing weight) in a group of its own with a lower learning rate
    (section 5.2.2, default ``lr / 10``) and no weight decay (decay would pull a DynOPool's
    alpha to 0, i.e. towards huge feature maps).

    ``scale_step="normalized"`` (the default) divides the resizers' gradients by their running
    RMS and the optimizer's momentum gain before each step, and a DynOPool alpha's also by
    ``1 / alpha`` (see :mod:`dynopool_nas.optim`): a steady push then changes a scale by
    ``alpha_lr`` of itself per step (0.5% at ``fit``'s defaults, about what Adam at 0.01 does to
    an alpha near 2), less when its gradient is noisy, whatever the layer's input size, the work
    downstream and the loss's scale, so one ``alpha_lr`` suits every layer and resolution.
    ``"plain"`` is the thesis's gradient step, whose size grows with ``H_in / alpha^2``. Either
    way every optimizer step keeps the scales in range (:meth:`~dynopool_nas.DynOPool2d.project_`).
    """
    if scale_step not in SCALE_STEPS:
        raise ValueError(f"scale_step must be one of {SCALE_STEPS}, got {scale_step!r}")
    alphas = list({id(m.alpha): m.alpha for m in model.modules() if isinstance(getattr(m, "alpha", None),
                                                                                nn.Parameter)}.values())
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in alpha_ids]
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": alphas, "lr": lr / 10 if alpha_lr is None else alpha_lr, "weight_decay": 0.0, "name": "alpha",
         SCALE_STEP_KEY: scale_step},
    ]
