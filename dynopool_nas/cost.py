"""MAC counts (fvcore) and the differentiable GMACs loss of eq. 4.7 / 4.8.

fvcore counts one multiply-add as one "flop", i.e. MACs. It ignores pooling, so DynOPool's
own work is added by one formula (:func:`resizer_macs`), the same for the learned layer and its
frozen form whichever operators run them -- one MAC per value of its separable bilinear
sampling, 3 per output for its 2x2 aggregation; at r = 1/2 on even sizes the query points are
pixels and only the max remains -- and the handles below add, for a like-for-like comparison,
the human models' pooling: a comparison or an addition counts as one MAC.

The loss is analytic: :class:`GMACsCost` records once, at the model's initial state, every
layer's MACs and which resizer sets its spatial size, then prices the current sizes from the
straight-through sizes of the DynOPools (:func:`~dynopool_nas.ops.ste_output_size`) without
running or tracing the model again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ._utils import eval_mode, example_input
from .freeze import FixedDynOPool2d
from .layer import DynOPool2d

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # fvcore calls torch.jit.script on import
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape

__all__ = ["GMACsCost", "MACsReport", "count_macs", "flop_analysis", "resizer_macs"]

RESIZERS = (DynOPool2d, FixedDynOPool2d)
"""The modules whose MACs are counted by :func:`resizer_macs` (a learned DynOPool and its frozen form)."""


def _pool_handle(per_window_offset: int) -> Callable[[list[Any], list[Any]], int]:
    """fvcore handle for ``aten::{max,avg}_pool2d``: (kernel area + offset) ops per output."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        kernel = [value.toIValue() for value in inputs[1].node().inputs()]  # a traced ListConstruct
        area = kernel[0] * kernel[-1]
        return math.prod(get_shape(outputs[0])) * (area + per_window_offset)

    return handle


def _dynopool_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for a direct call of :func:`~dynopool_nas.ops.dynopool2d` (a layer's
    calls are counted by :func:`resizer_macs` per module, see :func:`_own_macs`)."""
    return resizer_macs(get_shape(inputs[0]), get_shape(outputs[0]))


OP_HANDLES: dict[str, Callable[[list[Any], list[Any]], Any]] = {
    "aten::lerp": elementwise_flop_counter(0, 1),
    "prim::PythonOp._DynOPool": _dynopool_handle,
    "aten::max_pool2d": _pool_handle(-1),
    "aten::avg_pool2d": _pool_handle(0),
    "aten::adaptive_max_pool2d": elementwise_flop_counter(1, 0),
}


def flop_analysis(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> FlopCountAnalysis:
    """fvcore's ``FlopCountAnalysis`` with DynOPool's and pooling's op handles, quiet."""
    analysis = FlopCountAnalysis(model, example_input(model, input_size))
    analysis.set_op_handle(**OP_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _dynopool_work(in_size: Tensor, out_size: Tensor) -> Tensor:
    """A DynOPool's MACs per channel and image, the one formula behind every count: the
    separable sampling of ``2h`` rows of ``W_in`` (one ``lerp`` per value) and then ``2h x 2w``
    queries (none where every query is a pixel, ``in = 2 * out``), and 3 operations per output
    for the 2x2 aggregation."""
    (height, width), in_width = out_size, in_size[1]
    aligned = ((in_size - 2 * out_size).abs() < 0.5).all()
    sampling = 2 * height * (in_width + 2 * width)
    return torch.where(aligned, torch.zeros_like(sampling), sampling) + 3 * height * width


def resizer_macs(input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """MACs of one call of a DynOPool2d or a FixedDynOPool2d on an (N, C, H, W) input: both
    compute the same thing, so both cost :func:`_dynopool_work` per channel and image, however
    the operators that run it happen to be traced."""
    n, c, in_h, in_w = input_shape
    out_h, out_w = output_shape[-2:]
    work = _dynopool_work(torch.tensor((in_h, in_w), dtype=torch.float64),
                          torch.tensor((out_h, out_w), dtype=torch.float64))
    return n * c * round(float(work))


def _resizer_macs_by_module(model: nn.Module, example: Tensor) -> dict[str, int]:
    """MACs of every resizer module (all its calls together) by module name, from one forward pass."""
    names = {id(module): name for name, module in model.named_modules() if isinstance(module, RESIZERS)}
    macs = dict.fromkeys(names.values(), 0)

    def record(module: nn.Module, args: Any, output: Tensor) -> None:
        macs[names[id(module)]] += resizer_macs(args[0].shape, output.shape)

    handles = [module.register_forward_hook(record) for module in model.modules() if isinstance(module, RESIZERS)]
    try:
        with eval_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return macs


def _own_macs(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> tuple[dict[str, int], int]:
    """MACs per module that its own forward performs (children excluded), and the total. A
    resizer's are :func:`resizer_macs`, whichever operators run it."""
    example = example_input(model, input_size)
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = flop_analysis(model, example)
        by_module = analysis.by_module()
        total = analysis.total()
    own: dict[str, int] = {}
    for name, module in model.named_modules():
        children = sum(by_module.get(f"{name}.{c}" if name else c, 0) for c, _ in module.named_children())
        own[name] = by_module.get(name, 0) - children
    for name, macs in _resizer_macs_by_module(model, example).items():
        total += macs - own[name]
        own[name] = macs
    return own, total


@dataclass(frozen=True)
class MACsReport:
    """MAC counts of a model at one input size (thesis Table 5.5).

    Attributes:
        total: MACs of one image.
        dynopool: MACs spent inside DynOPool2d layers (and their frozen FixedDynOPool2d form).
        layers: one row per module with its own MACs (columns ``name``, ``type``, ``macs``).
    """

    total: int
    dynopool: int
    layers: pd.DataFrame

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    @property
    def dynopool_share(self) -> float:
        """DynOPool's fraction of the total MACs."""
        return self.dynopool / self.total if self.total else 0.0


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | Tensor) -> MACsReport:
    """Count a model's MACs for one image with fvcore, DynOPool's sampling and max included."""
    own, total = _own_macs(model, input_size)
    modules = dict(model.named_modules())
    rows = [(name, type(modules[name]).__name__, macs) for name, macs in own.items() if macs]
    layers = pd.DataFrame(rows, columns=["name", "type", "macs"])
    dynopool = int(layers.loc[layers["type"].isin([t.__name__ for t in RESIZERS]), "macs"].sum())
    return MACsReport(total=int(total), dynopool=dynopool, layers=layers)


def gate_keys(name: str, gates: Mapping[str, Any]) -> tuple[str, ...]:
    """The gated modules that contain the module (or parameter) ``name``."""
    return tuple(key for key in gates if name == key or name.startswith(key + "."))


def _spatial(tensors: Any) -> tuple[int, int] | None:
    """Spatial size of the first 4-D tensor in a forward's arguments or outputs."""
    if isinstance(tensors, Tensor):
        return (int(tensors.shape[-2]), int(tensors.shape[-1])) if tensors.dim() == 4 else None
    if isinstance(tensors, (list, tuple)):
        for item in tensors:
            found = _spatial(item)
            if found is not None:
                return found
    return None


_FIXED_SIZE_OUTPUT = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class _Source:
    """Something that sets a spatial size: the input or an adaptive pool (``parent < 0``,
    constant), a DynOPool call, or a fixed-ratio resizer such as an unconverted strided conv."""

    size0: tuple[int, int]
    parent: int = -1
    pool: DynOPool2d | None = None
    ratio: tuple[float, float] = (1.0, 1.0)


class _Probe:
    """Runs one forward pass and records, in call order, every size source and every layer's
    governing source: the latest source whose output size equals the layer's input size. A
    container's own operations (a functional pooling in its ``forward``) are taken to read the
    last feature map its children produced, as a model's head does."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int]) -> None:
        self.model = model
        self.sources = [_Source(size0=input_size)]
        self.calls: dict[str, list[int]] = {}
        self._entry: dict[int, list[int]] = {}
        self._names = {id(m): n for n, m in model.named_modules()}
        self._last_map: tuple[int, int] | None = None

    def _governing(self, size: tuple[int, int] | None) -> int:
        if size is None:
            return -1
        for index in range(len(self.sources) - 1, -1, -1):
            if self.sources[index].size0 == size:
                return index
        return -1

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._entry.setdefault(id(module), []).append(self._governing(_spatial(args)))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        parent = self._entry[id(module)][-1]
        in_size, out_size = _spatial(args), _spatial(output)
        name = self._names[id(module)]
        if isinstance(module, DynOPool2d):
            self.sources.append(_Source(size0=out_size, parent=parent, pool=module))
            self._entry[id(module)][-1] = len(self.sources) - 1
        elif isinstance(module, _FIXED_SIZE_OUTPUT) and out_size:
            self.sources.append(_Source(size0=out_size))
        elif any(True for _ in module.children()):
            self._entry[id(module)][-1] = self._governing(self._last_map)
        elif in_size and out_size and in_size != out_size:
            ratio = (out_size[0] / in_size[0], out_size[1] / in_size[1])
            self.sources.append(_Source(size0=out_size, parent=parent, ratio=ratio))
        self._last_map = out_size or self._last_map
        self.calls[name] = self._entry[id(module)]

    def run(self, example: Tensor) -> None:
        handles = []
        for module in self.model.modules():
            handles.append(module.register_forward_pre_hook(self._pre))
            handles.append(module.register_forward_hook(self._post))
        try:
            with eval_mode(self.model):
                self.model(example)
        finally:
            for handle in handles:
                handle.remove()


Gate = Callable[[bool], "Tensor | float"]
"""Weight of a part of a model that may not be in the final architecture: its current
probability (``hard=False``) or 1/0 for whether the currently derived architecture keeps it."""


class GMACsCost:
    """Differentiable model complexity ``L_GMACs`` (eq. 4.7) at a reference input size.

    ``L_GMACs = sum_l (H^t_l W^t_l) / (H^0_l W^0_l) * GMACs[l]``, where ``GMACs[l]`` is
    layer ``l``'s fvcore count at construction and ``H^t_l, W^t_l`` its current spatial size
    (its input's), built from the DynOPools' straight-through sizes so that every upstream
    ``alpha`` gets a gradient. A DynOPool's own work is priced by its exact count, which also
    depends on its input width and on whether its query points are pixels. Calling the object costs a few scalar
    operations per DynOPool: no forward pass and no re-tracing.

    In a supernet, ``gates`` maps module names to :data:`Gate` functions; every layer at or
    below a gated module is weighted by the product of its gates, which gives the expected
    GMACs under the architecture distribution (or, with ``hard=True``, the GMACs of the
    architecture derived at that moment).

    Build it with :meth:`from_model` while the model is at its initial state. Add
    ``lam * cost()`` to the task loss for eq. 4.8.
    """

    def __init__(
        self,
        sources: list[_Source],
        terms: dict[tuple[int, tuple[str, ...]], float],
        gates: Mapping[str, Gate] | None = None,
        pool_terms: dict[tuple[int, tuple[str, ...]], float] | None = None,
    ) -> None:
        self.sources = sources
        self.terms = terms
        self.pool_terms = pool_terms or {}
        self.gates = dict(gates or {})
        with torch.no_grad():
            self.initial_gmacs = float(self())

    @classmethod
    def from_model(
        cls, model: nn.Module, input_size: tuple[int, int, int], gates: Mapping[str, Gate] | None = None
    ) -> GMACsCost:
        """Record per-layer MACs (fvcore) and size dependencies for images of ``input_size``
        (channels, height, width); ``gates`` as in the class description."""
        example = example_input(model, input_size)
        own, _ = _own_macs(model, example)
        probe = _Probe(model, tuple(example.shape[-2:]))
        probe.run(example)
        gates = dict(gates or {})
        modules = dict(model.named_modules())
        sizes0 = [torch.tensor(source.size0, dtype=torch.float64) for source in probe.sources]
        terms: dict[tuple[int, tuple[str, ...]], float] = {}
        pool_terms: dict[tuple[int, tuple[str, ...]], float] = {}
        for name, macs in own.items():
            if not macs:
                continue
            calls = probe.calls.get(name, [-1])
            keys = gate_keys(name, gates)
            for source in calls:
                share = macs / len(calls)
                if isinstance(modules[name], DynOPool2d) and source >= 0:
                    per_channel = float(_dynopool_work(sizes0[probe.sources[source].parent], sizes0[source]))
                    pool_terms[source, keys] = pool_terms.get((source, keys), 0.0) + share / per_channel
                    continue
                if source >= 0:
                    height, width = probe.sources[source].size0
                    share /= height * width
                terms[source, keys] = terms.get((source, keys), 0.0) + share
        if not any(s.pool is not None for s in probe.sources):
            warnings.warn("GMACsCost: the model has no DynOPool2d; the cost is a constant", stacklevel=2)
        return cls(probe.sources, terms, gates, pool_terms)

    def sizes(self) -> list[Tensor]:
        """Straight-through spatial size (2,) of every size source, input first."""
        pools = [s.pool for s in self.sources if s.pool is not None]
        reference = pools[0].alpha if pools else torch.zeros(())
        sizes: list[Tensor] = []
        for source in self.sources:
            if source.parent < 0:
                sizes.append(reference.new_tensor(source.size0, dtype=torch.float32))
            elif source.pool is not None:
                sizes.append(source.pool.output_size_for(sizes[source.parent]))
            else:
                sizes.append(sizes[source.parent] * sizes[source.parent].new_tensor(source.ratio))
        return sizes

    def __call__(self, hard: bool = False) -> Tensor:
        """Current GMACs of one image (float64), differentiable w.r.t. every DynOPool's alpha
        (and, with soft gates, every gate's parameters). The MACs of an architecture (no gates,
        or ``hard=True``) are a whole number: the value is rounded to one, with the gradient of
        the unrounded sum, so that it is :func:`count_macs`'s count where the cost model is exact."""
        sizes = [size.double() for size in self.sizes()]
        one = sizes[0].new_ones(())
        gate_values = {key: gate(hard) for key, gate in self.gates.items()}
        macs = sizes[0].new_zeros(())
        for (source, keys), coefficient in self.terms.items():
            term = coefficient * (sizes[source].prod() if source >= 0 else one)
            for key in keys:
                term = term * gate_values[key]
            macs = macs + term
        for (source, keys), per_work in self.pool_terms.items():
            term = per_work * _dynopool_work(sizes[self.sources[source].parent], sizes[source])
            for key in keys:
                term = term * gate_values[key]
            macs = macs + term
        if hard or not self.gates:
            macs = macs + (macs.detach().round() - macs.detach())
        return macs / 1e9

    def feature_map_sizes(self) -> dict[str, tuple[int, int]]:
        """Every DynOPool's current output size at the reference input, by layer name."""
        out: dict[str, tuple[int, int]] = {}
        for source, size in zip(self.sources, self.sizes()):
            if source.pool is not None:
                h, w = size.detach().tolist()
                out.setdefault(source.pool.name, (round(h), round(w)))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers for logs and metrics: current GMACs and every DynOPool's size."""
        with torch.no_grad():
            return {"gmacs": float(self()), "sizes": self.feature_map_sizes()}
