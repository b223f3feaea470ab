"""The hardware-aware constraints of a one-shot search, on GMACs or on measured latency (eq. 4.7,
4.8, and a budget): one implementation, :class:`CostConstraint`, whose subclasses
:class:`GMACsConstraint` and :class:`LatencyConstraint` only name the metric and build its cost.

NNI's ``ProfilerPenalty`` sees only categorical choices and, under DARTS, receives their
probabilities as Python floats: it gives the architecture no gradient and cannot see a
DynOPool's scale. :func:`supernet_cost` prices the supernet instead: every candidate of a
``LayerChoice`` weighted by its probability, every block of a ``Repeat`` by the probability
that the depth keeps it, every width/kernel choice of a mixed operation by its expected share,
and every spatial size from the DynOPools' straight-through sizes. :func:`supernet_latency_cost`
weights a measured :class:`~dynopool_nas.LatencyCost` by the same gates.
"""

from __future__ import annotations

from search_spaces import _nni, _nni_compat  # noqa: F401  (NNI quietly, then the package's changes to it)

# isort: split

import copy
import itertools
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.supermodule._expression_utils import traverse_all_options
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedLayer, DifferentiableMixedRepeat
from nni.nas.oneshot.pytorch.supermodule.operation import MixedBatchNorm2d, MixedConv2d, MixedLinear, MixedOperation
from torch import Tensor, nn

from dynopool_nas import DynOPool2d, GMACsCost
from dynopool_nas._utils import eval_mode, example_input
from dynopool_nas.cost import Gate, gate_keys
from dynopool_nas.latency import LatencyCost, LatencyTable, Variants, _shapes, measure_model, model_table

from .supernet import derived_model

__all__ = [
    "ANCHORS", "GMACS", "LATENCY", "CostConstraint", "GMACsConstraint", "LatencyAnchor", "LatencyConstraint", "Metric",
    "check_anchor", "derived_parameter_count", "supernet_cost", "supernet_gates", "supernet_latency_cost",
    "width_forms",
]

_CHANNEL_ARGUMENTS = ("in_channels", "out_channels", "in_features", "out_features", "num_features")


def _distribution(alpha: Tensor, hard: bool) -> Tensor:
    if hard:
        return torch.nn.functional.one_hot(alpha.argmax(), alpha.numel()).to(alpha.dtype)
    return torch.softmax(alpha, dim=-1)


def _candidate_probability(alpha: Tensor, index: int, hard: bool) -> Tensor:
    return _distribution(alpha, hard)[index]


def _options(expression: Any, alphas: Any, hard: bool) -> list[tuple[Any, Tensor]]:
    return traverse_all_options(expression, weights={k: _distribution(a, hard) for k, a in alphas.items()})


def _depth_at_least(repeat: DifferentiableMixedRepeat, depth: int, hard: bool) -> Tensor:
    options = _options(repeat.depth_choice, repeat._arch_alpha, hard)
    return torch.stack([torch.as_tensor(weight) for value, weight in options if value >= depth]).sum()


def _measure(argument: str, value: Any) -> float:
    if argument == "kernel_size":
        return float(math.prod(value) if isinstance(value, (tuple, list)) else value * value)
    return float(value)


def _argument_share(operation: MixedOperation, argument: str, hard: bool) -> Tensor:
    """E[value] / max(value) of one mutable argument of a mixed operation."""
    options = _options(operation.mutable_arguments[argument], operation._arch_alpha, hard)
    largest = max(_measure(argument, value) for value, _ in options)
    return sum(weight * _measure(argument, value) / largest for value, weight in options)


def _expected_share(operation: MixedOperation, hard: bool) -> Tensor | float:
    """Expected MACs (and parameters) of a mixed operation relative to its largest candidate,
    which is what fvcore traced: channel counts enter linearly, kernel sizes by area, groups
    inversely (a depthwise convolution is linear in its width)."""
    share: Tensor | float = 1.0
    for argument in operation.mutable_arguments:
        if argument in (*_CHANNEL_ARGUMENTS, "kernel_size"):
            share = share * _argument_share(operation, argument, hard)
        elif argument == "groups":
            share = share / _argument_share(operation, argument, hard)
    return share


_OUTPUT_CHANNELS = ("out_channels", "out_features", "num_features")


def _channel_sources(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, tuple[MixedOperation, str]]:
    """For every plain layer (pooling, DynOPool, activations with a cost) whose channel count
    follows a width choice upstream: the latest mixed operation, in call order, whose largest
    output has as many channels as the layer's input, and that operation's output argument. In
    a supernet every width runs at its largest, masked, so such a layer runs at the largest width."""
    sources: list[tuple[int, tuple[MixedOperation, str]]] = []
    found: dict[str, tuple[MixedOperation, str]] = {}
    mixed = {name for name, module in model.named_modules() if isinstance(module, MixedOperation)}

    def pre(name: str, module: nn.Module, args: Any) -> None:
        if name in mixed or not args or not isinstance(args[0], Tensor) or args[0].dim() != 4:
            return
        channels = args[0].shape[1]
        for source_channels, source in reversed(sources):
            if source_channels == channels:
                found.setdefault(name, source)
                return

    def post(name: str, module: nn.Module, args: Any, output: Any) -> None:
        argument = next((a for a in _OUTPUT_CHANNELS if a in getattr(module, "mutable_arguments", {})), None)
        if argument is not None and isinstance(output, Tensor) and output.dim() >= 2:
            sources.append((output.shape[1], (module, argument)))

    handles = []
    for name, module in model.named_modules():
        leaf = not any(True for _ in module.children())
        inside_mixed = any(name.startswith(m + ".") for m in mixed)
        if name and (name in mixed or (leaf and not inside_mixed)):
            handles.append(module.register_forward_pre_hook(partial(pre, name)))
            handles.append(module.register_forward_hook(partial(post, name)))
    try:
        with eval_mode(model):
            model(example_input(model, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return found


def _channel_gates(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Gate]:
    """Gates for the plain layers of :func:`_channel_sources`: the expected share of the width
    they follow (fvcore counted them at the largest width)."""
    return {name: partial(_argument_share, operation, argument)
            for name, (operation, argument) in _channel_sources(model, input_size).items()}


def _product(first: Gate, second: Gate, hard: bool) -> Tensor | float:
    return first(hard) * second(hard)


def _add_gate(gates: dict[str, Gate], key: str, gate: Gate) -> None:
    gates[key] = partial(_product, gates[key], gate) if key in gates else gate


def _structural_gates(model: nn.Module) -> dict[str, Gate]:
    """The gates of what a supernet's choices keep: every ``LayerChoice`` candidate by its
    probability, every ``Repeat`` block by the probability that the depth keeps it."""
    gates: dict[str, Gate] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, DifferentiableMixedLayer):
            for index, candidate in enumerate(module.names):
                _add_gate(gates, f"{prefix}{candidate}", partial(_candidate_probability, module._arch_alpha, index))
        elif isinstance(module, DifferentiableMixedRepeat):
            for index in range(len(module.blocks)):
                _add_gate(gates, f"{prefix}blocks.{index}", partial(_depth_at_least, module, index + 1))
    return gates


def _mixed_operations(model: nn.Module) -> dict[str, MixedOperation]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, MixedOperation) and hasattr(module, "_arch_alpha")}


def supernet_gates(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Gate]:
    """:data:`~dynopool_nas.cost.Gate` functions for the differentiable choices of a DARTS-style
    supernet, by module name: candidates and depths (:func:`_structural_gates`), and every width
    or kernel choice by its expected share (mixed operations, and the plain layers that follow a
    width)."""
    gates = _channel_gates(model, input_size)
    for key, gate in _structural_gates(model).items():
        _add_gate(gates, key, gate)
    for name, module in _mixed_operations(model).items():
        _add_gate(gates, name, partial(_expected_share, module))
    return gates


def supernet_cost(model: nn.Module, input_size: tuple[int, int, int]) -> GMACsCost:
    """The expected GMACs of a one-shot supernet (call with ``hard=True`` for the GMACs of the
    architecture derived at that moment)."""
    return GMACsCost.from_model(model, input_size, gates=supernet_gates(model, input_size))


_FORM_INPUTS = {MixedConv2d: "in_channels", MixedBatchNorm2d: "num_features", MixedLinear: "in_features"}
"""Mixed operations :func:`width_forms` times as their plain forms, and the argument
that sets their input's channels (features, the last dimension, for a linear layer)."""


def _joint_probability(alphas: list[Tensor], indices: tuple[int, ...], hard: bool) -> Tensor:
    return math.prod(_candidate_probability(alpha, index, hard) for alpha, index in zip(alphas, indices))


def _one(hard: bool) -> float:
    return 1.0


def _option_probability(operation: MixedOperation, argument: str, index: int, hard: bool) -> Tensor:
    return torch.as_tensor(_options(operation.mutable_arguments[argument], operation._arch_alpha, hard)[index][1])


def _with_channels(shapes: tuple[Any, ...], largest: int, channels: int) -> tuple[Any, ...]:
    """``shapes`` with every feature map of ``largest`` channels given ``channels``."""
    return tuple(torch.Size((shape[0], channels, *shape[2:])) if isinstance(shape, torch.Size) and len(shape) >= 2
                 and shape[1] == largest else shape for shape in shapes)


def _channel_agnostic(module: nn.Module) -> bool:
    """Whether ``module`` runs on any number of channels: no weight or buffer sized by them (a
    pooling, an activation, a DynOPool)."""
    if isinstance(module, DynOPool2d):
        return True
    return not any(True for _ in itertools.chain(module.parameters(), module.buffers()))


MAX_BLOCK_FORMS = 64
"""A block whose choices combine into more forms than this is priced layer by layer."""


def _plain(operation: MixedOperation, sample: dict[str, Any]) -> tuple[nn.Module, int]:
    """The plain layer a mixed convolution, batch norm or linear layer freezes to under
    ``sample``, and the channels (features) of its input."""
    arguments = {**operation.init_arguments,
                 **{key: mutable.freeze(sample) for key, mutable in operation.mutable_arguments.items()}}
    channels = next(arguments[key] for kind, key in _FORM_INPUTS.items() if isinstance(operation, kind))
    return operation.bound_type(**arguments), channels


def _labels(block: nn.Module) -> dict[str, tuple[Tensor, list[Any]]]:
    """Every label the mixed operations of ``block`` choose on: its architecture weights and values."""
    labels: dict[str, tuple[Tensor, list[Any]]] = {}
    for module in block.modules():
        if isinstance(module, MixedOperation):
            choices = module.simplify()
            for label, alpha in module._arch_alpha.items():
                labels.setdefault(label, (alpha, list(choices[label].values)))
    return labels


def _frozen_block(block: nn.Module, sample: dict[str, Any]) -> tuple[nn.Module, int]:
    """``block`` with every mixed operation replaced by its plain layer under ``sample``, and the
    input channels of its first mixed operation (which reads the block's input, as checked by
    :func:`_priced_blocks`)."""
    if isinstance(block, MixedOperation):
        return _plain(block, sample)
    frozen = copy.deepcopy(block)
    channels = None
    for name, module in list(frozen.named_modules()):
        if isinstance(module, MixedOperation):
            plain, inputs = _plain(module, sample)
            parent, _, attribute = name.rpartition(".")
            setattr(frozen.get_submodule(parent), attribute, plain)
            channels = inputs if channels is None else channels
    return frozen, channels


def _block_forms(block: nn.Module, shapes: tuple[Any, ...]) -> list[tuple[nn.Module, tuple[Any, ...], Gate]]:
    """One form per combination of the block's labels: the plain block it freezes to, on an
    input of that form's channels, weighted by the combination's probability."""
    labels = _labels(block)
    alphas = [alpha for alpha, _ in labels.values()]
    linear = isinstance(block, MixedLinear)
    found = []
    for indices in itertools.product(*(range(len(values)) for _, values in labels.values())):
        sample = {label: values[i] for (label, (_, values)), i in zip(labels.items(), indices)}
        form, channels = _frozen_block(block, sample)
        shape = shapes[0]
        resized = (*shape[:-1], channels) if linear else (shape[0], channels, *shape[2:])
        found.append((form, (torch.Size(resized), *shapes[1:]), partial(_joint_probability, alphas, indices)))
    return found


def _priced_blocks(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, nn.Module]:
    """The largest modules of a supernet priced whole, in every combination of their choices
    (:func:`_block_forms`): modules whose mixed operations are all convolutions, batch norms or
    linear layers, that hold no DynOPool, ``LayerChoice`` or ``Repeat``, whose choices make at
    most :data:`MAX_BLOCK_FORMS` forms, and whose every form runs on the block's input (its first
    mixed operation reads it). Pricing a block whole prices the work its ``forward`` does between
    its layers (a squeeze-excite's multiply, a residual addition), which grows with the map."""
    def eligible(module: nn.Module) -> bool:
        inner = list(module.modules())
        mixed = [m for m in inner if isinstance(m, MixedOperation)]
        return (bool(mixed) and all(isinstance(m, tuple(_FORM_INPUTS)) and hasattr(m, "_arch_alpha") for m in mixed)
                and not any(isinstance(m, (DynOPool2d, DifferentiableMixedLayer, DifferentiableMixedRepeat))
                            for m in inner)
                and math.prod(len(values) for _, values in _labels(module).values()) <= MAX_BLOCK_FORMS)

    candidates = {name: module for name, module in model.named_modules() if name and eligible(module)}
    inputs: dict[str, tuple[Any, ...]] = {}
    handles = [module.register_forward_pre_hook(partial(lambda name, _, args: inputs.setdefault(name, args), name))
               for name, module in candidates.items()]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, input_size))
    finally:
        for handle in handles:
            handle.remove()

    def runs(name: str) -> bool:
        args = inputs.get(name)
        if not args or not isinstance(args[0], Tensor):
            return False
        try:
            with torch.no_grad():
                for form, shapes, _ in _block_forms(candidates[name], _shapes(args)):
                    form.eval()(*(torch.zeros(shape, dtype=args[0].dtype, device=args[0].device)
                                  if isinstance(shape, torch.Size) else shape for shape in shapes))
        except (RuntimeError, ValueError, TypeError):
            return False
        return True

    blocks: dict[str, nn.Module] = {}
    for name in candidates:  # top-down: a block's modules are not blocks of their own
        if not any(name.startswith(outer + ".") for outer in blocks) and runs(name):
            blocks[name] = candidates[name]
    return blocks


def width_forms(model: nn.Module, input_size: tuple[int, int, int],
                blocks: dict[str, nn.Module] | None = None) -> Variants:
    """The ``variants`` of :meth:`~dynopool_nas.LatencyCost.from_model` for a DARTS-style
    supernet, whose width choices run at their largest width, masked, which is no
    architecture's latency. Each form is timed as the architecture would run it and weighted by
    its probability (``hard=True``: 1 for the derived form):

    * a block of :func:`_priced_blocks` (default: found here), a single mixed convolution, batch
      norm or linear layer among them: one form per combination of its labels' values, the plain
      block it freezes to, on an input with that form's channels (:func:`_block_forms`);
    * a plain layer without channel-sized weights that follows a width (pooling, activation,
      DynOPool; :func:`_channel_sources`): one form per value of that width, on an input of as
      many channels;
    * the softmax modules of NNI's mixed layers: no form (they run in the supernet only)."""
    blocks = _priced_blocks(model, input_size) if blocks is None else blocks
    following = _channel_sources(model, input_size)
    machinery = {id(module._softmax) for module in model.modules()
                 if isinstance(getattr(module, "_softmax", None), nn.Module)}

    def forms(name: str, module: nn.Module, shapes: tuple[Any, ...]) -> list[tuple[nn.Module, Any, Gate]] | None:
        if id(module) in machinery:
            return []
        if name in following and _channel_agnostic(module):
            operation, argument = following[name]
            options = _options(operation.mutable_arguments[argument], operation._arch_alpha, True)
            largest = max(value for value, _ in options)
            return [(module, _with_channels(shapes, largest, value),
                     partial(_option_probability, operation, argument, index))
                    for index, (value, _) in enumerate(options)]
        if blocks.get(name) is not module or not shapes or not isinstance(shapes[0], torch.Size):
            return None
        return _block_forms(module, shapes)

    return forms


SEARCH_SCALES: tuple[float, ...] = (0.5, 0.71, 1.0, 1.41, 2.0, 2.83)
"""The grid of a supernet's latency table (scale factors of each unit's initial height and
width): wider than :data:`~dynopool_nas.latency.DEFAULT_SCALES` upwards, because a search moves
the maps far from where they start (a budget above the initial latency grows them, and scales
compound from layer to layer); beyond its grid a unit's fit is only extrapolated."""


ANCHORS = ("measured", "predicted")
"""What a supernet's latency is calibrated to (:func:`supernet_latency_cost`)."""

ANCHOR_PROCESSES = 3
"""Fresh processes that measure a ``"measured"`` anchor (:class:`LatencyAnchor`); it is their median."""

SETTLE_ROUNDS = 2
"""At most this many measurements of the architecture a latency-budget search ends with
(:meth:`LatencyConstraint.settle`)."""

SETTLE_TOLERANCE = 0.03
""":meth:`LatencyConstraint.settle` measures no more once a measured architecture lies this close
(relative) to the budget: the projection that follows moves it by about as little."""


def check_anchor(value: str, name: str = "anchor") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of :data:`ANCHORS`."""
    if value not in ANCHORS:
        raise ValueError(f"{name} must be one of {ANCHORS}, got {value!r}")


def supernet_latency_cost(
    model: nn.Module, input_size: tuple[int, int, int], table: LatencyTable | None = None, *,
    anchor: str | LatencyAnchor = "measured",
) -> LatencyCost:
    """The expected latency (ms) of a one-shot supernet: candidates and depths weighted by their
    probabilities (:func:`_structural_gates`), widths by their forms (:func:`width_forms`); call
    with ``hard=True`` for the predicted latency of the architecture derived at that moment.
    ``table``: see :meth:`~dynopool_nas.LatencyCost.from_model` (default: the cached table of
    the model's device).

    The sum is calibrated (:meth:`~dynopool_nas.LatencyCost.calibrate`) to the plain model of the
    architecture the supernet derives at the start (:class:`LatencyAnchor`, or the name of its
    kind): to its end-to-end latency measured in fresh processes (``"measured"``, the default: the
    figure a latency budget is meant in; a table sums units timed among others, from colder caches
    than a model gives them, and on a CPU reads small models 7-18% slow), or to its ``LatencyCost``
    in the same table (``"predicted"``: every number then comes from the table; a supernet times a
    cell's operations one by one, not the cell with the work between them)."""
    blocks = _priced_blocks(model, input_size)

    def inside_block(name: str) -> bool:
        return any(name == block or name.startswith(block + ".") for block in blocks)

    gates = _structural_gates(model)
    for name in blocks:  # a unit of its own, whose forms carry its choices
        gates.setdefault(name, _one)
    for name, module in _mixed_operations(model).items():
        if not inside_block(name):
            gates.setdefault(name, partial(_expected_share, module))
    for name in _channel_sources(model, input_size):
        if not inside_block(name):
            gates.setdefault(name, _one)
    table = model_table(model) if table is None else table
    anchor = anchor if isinstance(anchor, LatencyAnchor) else LatencyAnchor(anchor, table)
    cost = LatencyCost.from_model(model, input_size, table, gates=gates,
                                  variants=width_forms(model, input_size, blocks), scales=SEARCH_SCALES)
    if isinstance(model, ModelSpace):
        cost.calibrate(anchor(model, input_size))
    return cost


class LatencyAnchor:
    """What a supernet's predicted latency is calibrated to, at the start of a search and after
    every epoch: the plain model of the architecture the supernet derives at that moment
    (:func:`~strategies.supernet.derived_model`), predicted in ``table`` on the supernet's grid,
    times, for ``kind="measured"``, that model's measured over predicted latency at the first call.

    The measurement (on the table's device, threads and mode; the median of
    :data:`ANCHOR_PROCESSES` fresh processes, as a model's latency differs from process to process
    by a few percent) is made before training, not in the search's process (there a model reads
    8-15% slow), and not while training runs (one EfficientNet search's epoch-end measurements read
    up to 20% slow). The table's ratio between architectures carries the measurement from then on,
    until :meth:`remeasure` (a budget search measures the architecture it ends with, once training
    has stopped: :meth:`LatencyConstraint.settle`). A model that cannot be sent to a fresh process (a space
    defined in ``__main__`` or a notebook) is measured in this one, with a warning.

    Args:
        kind: one of :data:`ANCHORS`.
        table: the :class:`~dynopool_nas.LatencyTable` the derived model is predicted in.
    """

    def __init__(self, kind: str, table: LatencyTable) -> None:
        check_anchor(kind)
        self.kind, self.table = kind, table
        self.ratio: float | None = None
        """Measured over predicted latency of the derived model measured last (``"measured"``)."""
        self.measured_ms: float | None = None
        """That model's measured latency (ms)."""

    def __call__(self, supernet: nn.Module, input_size: tuple[int, int, int]) -> float:
        derived = derived_model(supernet).to(device=self.table.device, dtype=self.table.dtype)
        with torch.no_grad():
            predicted = float(LatencyCost.from_model(derived, input_size, self.table, scales=SEARCH_SCALES)())
        if self.kind == "measured" and self.ratio is None:
            self.measured_ms = self._measure(derived, input_size)
            self.ratio = self.measured_ms / predicted
        return predicted if self.ratio is None else predicted * self.ratio

    def remeasure(self) -> None:
        """Measure again at the next call (``"measured"``): the ratio then comes from the
        architecture derived at that call."""
        self.ratio = self.measured_ms = None

    def _measure(self, model: nn.Module, input_size: tuple[int, int, int]) -> float:
        options = {"mode": self.table.mode, "threads": self.table.threads}
        try:
            return statistics.median(measure_model(model, input_size, fresh_process=True, **options)
                                     for _ in range(ANCHOR_PROCESSES))
        except ValueError as error:
            warnings.warn(f"the latency anchor is measured in this process, which can read it slow: {error}",
                          RuntimeWarning, stacklevel=3)
            return measure_model(model, input_size, **options)


def derived_parameter_count(model: nn.Module, gates: dict[str, Gate]) -> int:
    """Parameters of the architecture currently derived from a supernet: a gated parameter counts
    when its choice is taken, a mixed operation's by the share of its chosen width and kernel;
    architecture parameters do not count."""
    total = 0.0
    with torch.no_grad():
        values = {key: float(gate(True)) for key, gate in gates.items()}
        for name, parameter in model.named_parameters():
            if "_arch_alpha" in name:
                continue
            weight = 1.0
            for key in gate_keys(name, values):
                weight *= values[key]
            total += weight * parameter.numel()
    return round(total)


@dataclass(frozen=True)
class Metric:
    """What a :class:`CostConstraint` constrains: its ``name`` in messages, its ``unit``, the
    key under which its expected value is logged, and the cost attribute holding its initial
    value (the unit of a relative ``lam``)."""

    name: str
    unit: str
    log_key: str
    initial: str


GMACS = Metric("GMACs", "GMACs", "expected_gmacs", "initial_gmacs")
LATENCY = Metric("latency", "ms", "expected_latency_ms", "initial_ms")


REACH_TOLERANCE = 0.05
"""How far (relative) the cost of a projected architecture may lie from its budget before the
budget counts as out of the scales' reach (the sizes are whole numbers: they cannot meet it
exactly)."""

BUDGET_PRESSURE = 1.0
"""Weight of the cost, relative to the budget, in the architecture loss while a budget lies below
what the scales can reach (:class:`CostConstraint`): ``lam`` of a relative constraint at the upper
end of its useful range."""


class CostConstraint:
    """A hardware-aware constraint of a search on a differentiable cost of the model (the base of
    :class:`GMACsConstraint` and :class:`LatencyConstraint`, which set :attr:`metric` and
    :meth:`supernet_cost`). Exactly one of:

    * ``lam``: the cost added to the architecture loss (eq. 4.8). By default it is relative,
      ``lam * cost / cost_0``, with ``cost_0`` the supernet's expected cost per image when the
      search starts: unit-free, the same meaning for every model, input size and device. ``lam``
      is the task loss (cross-entropy, in nats) that the whole initial cost is worth: at ``lam =
      0.1`` the search gives up 0.01 of validation loss to save a tenth of the initial cost.
      Useful values lie between about 0.01 (barely priced) and 1 (scales fall until the task
      suffers); sweep a few on a short search. ``relative=False`` is the thesis's absolute form,
      ``lam * cost`` (``lam`` in loss per unit of the cost, so its effect depends on the model's
      size: the same search needs ``lam_absolute = lam_relative / cost_0``);
    * ``budget``: a target cost per image. After every step all DynOPool scales are multiplied
      by one common factor, found by bisection on the cost, that brings the cost of the
      architecture derived at that moment (``cost(hard=True)``) to the budget (to the nearest
      size the rounding allows). Gradient steps still decide how resolution is spread over the
      layers and axes; the projection holds the total, so no trade-off weight needs tuning. A
      budget the scales cannot reach is held at the nearest end of the reachable range, with
      one warning that names the range (see :meth:`project`). While it lies below that range
      (every map at its smallest is still too costly, as when the choices grow towards larger
      operations), the cost is also added to the architecture loss, ``BUDGET_PRESSURE * cost /
      budget``, so that the choices move towards cheaper operations until the scales can hold
      the budget again.
    """

    CHECK_EVERY = 100
    metric: Metric
    budget_argument = "budget"  # the budget's name in the constructor, for messages

    def __init__(self, lam: float | None = None, budget: float | None = None, *, relative: bool = True) -> None:
        unit, argument = self.metric.unit, self.budget_argument
        if (lam is None) == (budget is None):
            kind = type(self).__name__
            raise ValueError(f"{kind} takes exactly one of lam (eq. 4.8) and {argument} ({unit} per image)")
        if lam is not None and not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a non-negative number, got {lam!r}")
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"{argument} must be a positive number of {unit}, got {budget!r}")
        self.lam, self.budget, self.relative = lam, budget, relative
        self.cost: Any = None
        self._warned = False
        self._calls = 0
        self._short: Tensor | None = None  # 1.0 while the last projection could not bring the cost down to the budget

    def supernet_cost(self, model: nn.Module, input_size: tuple[int, int, int]) -> Any:
        """The expected cost of a one-shot supernet, the one :meth:`bind` takes in a search."""
        raise NotImplementedError

    def recalibrate(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        """Refresh what the cost is calibrated to (nothing for an exact cost such as GMACs)."""

    def settle(self, model: nn.Module, input_size: tuple[int, int, int]) -> bool:
        """At the end of a search: check the budget on what it stands for, and hold it again;
        ``True`` when the scales may have moved (nothing for an exact cost such as GMACs)."""
        return False

    def bind(self, cost: Any) -> CostConstraint:
        """Attach the cost of the model being searched; in budget mode, fix the range in which
        :meth:`project` may move every scale (at the model's state now)."""
        if self.budget is not None and not _scales(cost):
            raise ValueError(
                f"a {self.metric.name} budget is held by DynOPool scales, and the space has no DynOPool2d; use lam"
            )
        self.cost = cost
        if self.budget is not None:
            self._alpha_low, self._alpha_high = _alpha_range(cost)
        return self

    def __call__(self, loss: Tensor, probs: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``loss`` plus the cost term (lambda mode), and the expected cost for logging. The
        signature is that of NNI's DARTS ``penalty`` hook; ``probs`` (floats) is not used."""
        if self.cost is None:
            raise RuntimeError(f"{type(self).__name__}.bind(cost) must be called before the search starts")
        value = self.cost()
        logged = {self.metric.log_key: value.detach()}
        if self.lam is None:  # the scales hold the budget; the choices are priced where they cannot
            if self._short is None:
                return loss, logged
            return loss + self._short * BUDGET_PRESSURE * value / self.budget, logged
        priced = value / getattr(self.cost, self.metric.initial) if self.relative else value
        return loss + self.lam * priced, logged

    @torch.no_grad()
    def project(self, iterations: int = 24, *, check: bool = False) -> None:
        """Budget mode: rescale every DynOPool's alpha by one factor to meet the budget.

        Each alpha stays in the range fixed by :meth:`bind` (:func:`_alpha_range`): a budget out
        of reach is held at the nearest end of what the scales can reach, with one
        ``RuntimeWarning`` that names that range. The bisection runs a fixed number of steps on
        tensors, so on a GPU it never waits for the device; whether the budget is reachable is
        read back on the first call, every ``CHECK_EVERY`` calls after it and when ``check``
        (a search checks at the end of every epoch: the choices may have moved the range). It
        needs a cost that does not grow with alpha (smaller maps never cost more), as both
        costs are."""
        if self.budget is None or self.cost is None:
            return
        cost_at, most, least = self._scaled_cost(self._alpha_low, self._alpha_high)
        below, above = most, least
        for _ in range(iterations):
            middle = (below + above) / 2
            over = cost_at(middle) > self.budget
            below, above = torch.where(over, middle, below), torch.where(over, above, middle)
        stay = torch.zeros_like(below)  # where the cost is flat (a budget out of reach), nothing moves
        miss_stay, miss_below, miss_above = ((cost_at(t) / self.budget - 1).abs() for t in (stay, below, above))
        closest = torch.where(miss_below <= miss_above, below, above)
        closest = torch.where(miss_stay <= torch.minimum(miss_below, miss_above), stay, closest)
        self._calls += 1
        if not self._warned and (check or (self._calls - 1) % self.CHECK_EVERY == 0):
            self._warn_if_out_of_reach(float(cost_at(closest)), float(cost_at(least)), float(cost_at(most)))
        reached = cost_at(closest)
        self._short = (reached > self.budget * (1 + REACH_TOLERANCE)).to(reached.dtype)

    def _scaled_cost(self, low: Tensor, high: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
        """``cost_at(log_factor)``, which sets every DynOPool's alpha to its current value times
        ``exp(log_factor)`` within ``[low, high]`` and returns the derived architecture's cost, and
        the log factors past which nothing changes: ``most`` (every map at its largest) and
        ``least`` (every map at its smallest)."""
        alphas = [layer.alpha for layer in _scales(self.cost)]
        start = torch.stack([alpha.detach() for alpha in alphas]).clamp(low, high)

        def cost_at(log_factor: Tensor) -> Tensor:
            for alpha, value in zip(alphas, (start * log_factor.exp()).clamp(low, high)):
                alpha.copy_(value)
            return self.cost(hard=True)

        # a larger factor is a larger alpha: smaller maps, a lower cost
        return cost_at, (low / start).log().min(), (high / start).log().max()

    @torch.no_grad()
    def reach(self) -> tuple[float, float]:
        """``(lowest, highest)`` cost of the architecture derived now that :meth:`project` can
        reach by moving the DynOPool scales (within the range of :func:`_alpha_range` at the
        model's state now): where a budget can lie. Every alpha is left as it was."""
        if self.cost is None:
            raise RuntimeError(f"{type(self).__name__}.bind(cost) must be called before reach()")
        alphas = [layer.alpha for layer in _scales(self.cost)]
        if not alphas:
            value = float(self.cost(hard=True))
            return value, value
        saved = [alpha.detach().clone() for alpha in alphas]
        cost_at, most, least = self._scaled_cost(*_alpha_range(self.cost))
        try:
            return float(cost_at(least)), float(cost_at(most))
        finally:
            for alpha, value in zip(alphas, saved):
                alpha.copy_(value)

    def _warn_if_out_of_reach(self, closest: float, least: float, most: float) -> None:
        if abs(closest / self.budget - 1) <= REACH_TOLERANCE:
            return
        self._warned = True
        unit = self.metric.unit
        warnings.warn(
            f"{self.metric.name} budget {self.budget:g} is out of reach: with the current choices the DynOPool "
            f"scales reach {least:.4g} to {most:.4g} {unit} (maps no smaller than min_size, no scale above 1 or its "
            f"value when the search started); the search holds {closest:.4g}. Choose a budget in that range or "
            "change the space",
            RuntimeWarning, stacklevel=3,
        )


class GMACsConstraint(CostConstraint):
    """The hardware-aware GMACs constraint of a search (eq. 4.7, 4.8): :class:`CostConstraint` on
    the expected GMACs of the supernet (:func:`supernet_cost`). Exactly one of ``lam`` (relative
    to the initial GMACs unless ``relative=False``) and ``budget`` (GMACs per image)."""

    metric = GMACS

    def supernet_cost(self, model: nn.Module, input_size: tuple[int, int, int]) -> GMACsCost:
        return supernet_cost(model, input_size)


class LatencyConstraint(CostConstraint):
    """The latency constraint of a search: :class:`CostConstraint` on the supernet's expected
    latency predicted by a measured :class:`~dynopool_nas.LatencyCost`
    (:func:`supernet_latency_cost`). Exactly one of ``lam`` (relative to the initial latency
    unless ``relative=False``, then in loss per millisecond) and ``budget_ms`` (milliseconds per
    image on the device ``table`` was measured on).

    Args:
        table: the :class:`~dynopool_nas.LatencyTable` the cost is looked up in (and extended);
            default: the cached table of the supernet's device and dtype at the current thread
            count, for inference.
        anchor: what the supernet's predicted latency is calibrated to at the start and after
            every epoch (:class:`LatencyAnchor`, :meth:`recalibrate`): ``"measured"`` (default),
            its derived architecture's prediction scaled to that architecture measured end to end
            in fresh processes before training (a budget means measured milliseconds), or
            ``"predicted"``, the prediction alone (on a CPU a table reads small models 7-18% slow).
    """

    metric = LATENCY
    budget_argument = "budget_ms"

    def __init__(self, lam: float | None = None, budget_ms: float | None = None, *, relative: bool = True,
                 table: LatencyTable | None = None, anchor: str = "measured") -> None:
        super().__init__(lam, budget_ms, relative=relative)
        check_anchor(anchor)
        self.table = table
        self.anchor = anchor
        self._anchor: LatencyAnchor | None = None

    @property
    def budget_ms(self) -> float | None:
        return self.budget

    def supernet_cost(self, model: nn.Module, input_size: tuple[int, int, int]) -> LatencyCost:
        self._anchor = LatencyAnchor(self.anchor, model_table(model) if self.table is None else self.table)
        return supernet_latency_cost(model, input_size, self._anchor.table, anchor=self._anchor)

    def recalibrate(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        """Calibrate the bound cost anew to the architecture the supernet derives now
        (:class:`LatencyAnchor`): a search calls it after every epoch, so that the calibration
        follows the architecture as it moves."""
        if isinstance(model, ModelSpace):
            if self._anchor is None:
                self._anchor = LatencyAnchor(self.anchor, self.cost.table)
            self.cost.calibrate(self._anchor(model, input_size))

    def settle(self, model: nn.Module, input_size: tuple[int, int, int]) -> bool:
        """Budget mode with the ``"measured"`` anchor: measure the architecture the search ends
        with (fresh processes, as the anchor at the start), calibrate the cost to it and project
        the budget again; measure once more (at most :data:`SETTLE_ROUNDS` times) if it lay more
        than :data:`SETTLE_TOLERANCE` from the budget. The budget then rests on a measurement of
        the architecture delivered, or of one a single small projection away, not on the
        table's ratio between it and the starting architecture (the table's units, timed one by
        one, misjudge that ratio by several percent). A search calls it when training ends; the
        weights were trained under every step's projection of the same kind."""
        if self.budget is None or self.anchor != "measured" or not isinstance(model, ModelSpace):
            return False
        for _ in range(SETTLE_ROUNDS):
            if self._anchor is not None:
                self._anchor.remeasure()
            self.recalibrate(model, input_size)
            self.project(check=True)
            measured = self._anchor.measured_ms
            if measured is None or abs(measured / self.budget - 1) <= SETTLE_TOLERANCE:
                break
        return True


def _alpha_range(cost: GMACsCost | LatencyCost) -> tuple[Tensor, Tensor]:
    """``(low, high)``, one row per DynOPool of ``cost`` (in :func:`_scales` order), in which a
    budget projection keeps each alpha: the layer's own bounds
    (:meth:`~dynopool_nas.DynOPool2d.alpha_bounds`) at its input size at the reference input,
    and no scale above ``max(1, its current scale)``. The layer would allow up to ``max_scale``
    (4) per DynOPool, but scales compound from layer to layer: a budget must not buy feature
    maps larger than the input (or than a layer's initial upsampling) and run out of memory."""
    with torch.no_grad():
        sizes = cost.sizes()
        inputs: dict[int, list[float]] = {}
        for source in cost.sources:
            if source.pool is not None:
                size = sizes[source.parent].tolist()
                previous = inputs.get(id(source.pool), size)
                inputs[id(source.pool)] = [max(a, b) for a, b in zip(size, previous)]
        rows_low, rows_high = [], []
        for layer in _scales(cost):
            low, high = layer.alpha_bounds([round(v) for v in inputs[id(layer)]])
            alpha = layer.alpha.detach().tolist()
            floor = [max(bound, min(a, 1.0)) for bound, a in zip(low, alpha)]
            rows_low.append(floor)
            rows_high.append([max(bound, f) for bound, f in zip(high, floor)])
        reference = _scales(cost)[0].alpha
        return reference.new_tensor(rows_low), reference.new_tensor(rows_high)


def _scales(cost: GMACsCost | LatencyCost) -> list[Any]:
    return list({id(s.pool): s.pool for s in cost.sources if s.pool is not None}.values())
