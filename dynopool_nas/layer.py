"""``DynOPool2d``: the learnable resizing module (thesis section 4.1)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .ops import Aggregation, check_aggregation, dynopool2d, ste_output_size
from .optim import register_scale

ScaleLike = float | Sequence[float] | Tensor

DEFAULT_MAX_SCALE = 4.0
DEFAULT_MAX_SIZE = 4096
# project_() keeps a scale this much (relative) inside the clamps of min_size and scale_bounds,
# which give no gradient on their edge
_ALIVE_MARGIN = 1e-4
# float32 rounding of a projected alpha is not a departure from its range
_TOLERANCE = 1e-4
# a scale this close (relative) to its bound counts as having reached it
_AT_BOUND = 1e-3


def _number(value: object, what: str, whole: object) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number or an (h, w) pair of numbers, got {whole!r}")
    return float(value)


def _pair(value: ScaleLike, what: str) -> tuple[float, float]:
    """``value`` as two positive finite floats: a number, an (h, w) pair, or a tensor of one or
    two elements."""
    if isinstance(value, Tensor):
        items = value.detach().flatten().tolist()
        pair = tuple(items * 2 if len(items) == 1 else items)
    elif isinstance(value, (numbers.Real, str, bytes)) or value is None:
        pair = (value, value)  # refused below unless a number
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise TypeError(f"{what} must be a number or an (h, w) pair of numbers, got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{what} must be a number or an (h, w) pair, got {value!r}")
    h, w = (_number(v, what, value) for v in pair)
    if not (math.isfinite(h) and math.isfinite(w) and h > 0 and w > 0):
        raise ValueError(f"{what} must be positive and finite, got {value!r}")
    return h, w


class DynOPool2d(nn.Module):
    """Dynamically Optimized Pooling: resize by a learned scale factor per axis.

    The scale ``r = (r_h, r_w)`` is stored as the learnable ``alpha = 1 / r`` (eq. 4.6).
    The output size is ``round(max(H_in * r_h, min_size))`` in the forward pass and its
    continuous value in the backward pass (eq. 4.3, 4.4, section 5.2.2); each output cell
    aggregates four bilinearly sampled query points (eq. 4.1, 4.2). ``r > 1`` upsamples.

    Args:
        scale: initial scale factor, a float or an ``(r_h, r_w)`` pair. 0.5 is the human
            model's stride 2.
        aggregation: how the four query points of a cell are combined, ``'max'`` or ``'mean'``.
        min_size: lower bound on the continuous output size; 1.5 keeps every map at least 2
            wide.
        scale_bounds: optional ``(r_min, r_max)``. A scale outside is clamped in the forward
            pass, a warning is issued once and :attr:`bound_hit` is set.
        max_scale: the largest scale factor, per axis (default 4: a map at most 4 times its
            input per side; a layer that wants more is diverging, not resizing).
        max_size: the largest output size per side, in pixels (default 4096: twice the widest
            common input, a 2048-pixel-wide Cityscapes frame; one such map of 64 channels is
            already 4 GiB in float32).
        name: label used in error messages and reports; :func:`~dynopool_nas.dynopoolify`
            sets it to the module's path.

    The scale is safe by construction: after every ``torch.optim`` step, :meth:`project_` puts
    ``alpha`` back into :meth:`alpha_bounds` (see :mod:`dynopool_nas.optim`), so it can neither
    cross ``alpha = 0`` nor pass ``max_scale``, ``max_size`` or ``scale_bounds``, and it stays
    where its gradient is alive (the map just above ``min_size``, the bound itself). A scale that
    reaches its upper bound warns once and sets :attr:`bound_hit`. A scale set by hand beyond
    ``max_scale`` or ``max_size`` is refused before any output is allocated.

    After every forward pass, :attr:`input_size` and :attr:`output_size` hold the integer
    sizes and :attr:`size` the straight-through output size (a tensor with gradient into
    ``alpha``) that the GMACs cost model (eq. 4.7) builds on.
    """

    def __init__(
        self,
        scale: ScaleLike = 0.5,
        aggregation: Aggregation = "max",
        min_size: float = 1.5,
        scale_bounds: tuple[float, float] | None = None,
        name: str | None = None,
        *,
        max_scale: float = DEFAULT_MAX_SCALE,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__()
        check_aggregation(aggregation)
        if not (math.isfinite(min_size) and min_size > 0):
            raise ValueError(f"min_size must be positive, got {min_size!r}")
        self.name = name or type(self).__name__
        self.max_scale, self.max_size = _check_limits(max_scale, max_size, min_size)
        if scale_bounds is not None:
            low, high = _pair(scale_bounds, "scale_bounds")
            if low >= high:
                raise ValueError(f"scale_bounds must be (r_min, r_max) with r_min < r_max, got {scale_bounds!r}")
            if high > self.max_scale:
                raise ValueError(f"scale_bounds {scale_bounds!r} reach above max_scale={self.max_scale:g}; "
                                 f"pass max_scale={high:g} as well")
            scale_bounds = (low, high)
        r_h, r_w = _pair(scale, "scale")
        if max(r_h, r_w) > self.max_scale * (1 + _TOLERANCE):  # a learned scale on its bound, exported, passes
            raise ValueError(
                f"{self.name}: scale {scale!r} is above max_scale={self.max_scale:g} (an output "
                f"{max(r_h, r_w):g} times its input per side); pass max_scale= if that is intended"
            )
        self.alpha = nn.Parameter(torch.tensor([1.0 / r_h, 1.0 / r_w]))
        self.aggregation = aggregation
        self.min_size = float(min_size)
        self.scale_bounds = scale_bounds
        self.bound_hit = False
        self._projected = False
        self.input_size: tuple[int, int] | None = None
        self.output_size: tuple[int, int] | None = None
        register_scale(self)

    @property
    def scale(self) -> tuple[float, float]:
        """The current scale factor ``(r_h, r_w) = 1 / alpha`` (bounds applied)."""
        r_h, r_w = self.scale_tensor().tolist()
        return r_h, r_w

    def scale_tensor(self) -> Tensor:
        """The differentiable scale ``1 / alpha``, clamped to :attr:`scale_bounds` if set."""
        scale = self.alpha.reciprocal()
        if self.scale_bounds is not None:
            scale = scale.clamp(*self.scale_bounds)
        return scale

    def alpha_bounds(self, in_size: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
        """The range ``(low, high)`` per axis that :meth:`project_` keeps ``alpha`` in.

        ``low`` is the largest scale allowed (``max_scale``, ``max_size / H_in`` and the upper
        ``scale_bounds``), ``high`` the smallest: the lower ``scale_bounds``, and a continuous
        size just above ``min_size``. Clamped scales and sizes give alpha no gradient, so the
        range keeps just inside ``scale_bounds`` and ``min_size``.
        The bounds that depend on the input use ``in_size``, by default the last input's size;
        before the first forward pass only the others apply.
        """
        in_size = in_size if in_size is not None else self.input_size
        r_min, r_max = 0.0, self.max_scale
        if self.scale_bounds is not None:
            r_min, r_max = self.scale_bounds[0] * (1 + _ALIVE_MARGIN), self.scale_bounds[1] * (1 - _ALIVE_MARGIN)
        low, high = [], []
        for axis in range(2):
            top, bottom = r_max, r_min
            if in_size is not None:
                top = min(top, self.max_size / in_size[axis])
                bottom = max(bottom, self.min_size * (1 + _ALIVE_MARGIN) / in_size[axis])
            bottom = min(bottom, top)
            low.append(1.0 / top)
            high.append(1.0 / bottom if bottom > 0 else math.inf)
        return low, high

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp ``alpha`` into :meth:`alpha_bounds` in place. Every ``torch.optim`` step calls it
        for the alphas it updated; a NaN alpha is left for the forward pass to report. On a GPU
        it does not wait for the device."""
        low, high = self.alpha_bounds()
        self._projected = True
        for axis in range(2):
            self.alpha[axis : axis + 1].clamp_(low[axis], high[axis])

    @property
    def size(self) -> Tensor | None:
        """The straight-through output size (2,) for the last input at the current alpha, with
        gradient into ``alpha`` (eq. 4.3, 4.4). Computed on access: the module keeps no autograd
        graph between calls, so that it can be copied and pickled after a training step."""
        return None if self.input_size is None else self.output_size_for(self.alpha.new_tensor(self.input_size))

    def output_size_for(self, in_size: Tensor | float) -> Tensor:
        """Straight-through output size (2,) for an input size; shared with the cost model."""
        return ste_output_size(in_size, self.scale_tensor(), self.min_size)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{self.name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single image"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: expected a floating-point tensor, got {x.dtype}; convert with x.float()")
        if x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(f"{self.name}: the input has an empty spatial size {tuple(x.shape[-2:])}")

    def _check_alpha(self, alpha: list[float], in_size: tuple[int, int]) -> None:
        """Refuse an alpha that is not a scale, or one whose output would pass the size limits
        (before anything is allocated); warn once when the scale meets a bound."""
        if not all(math.isfinite(a) and a > 0 for a in alpha):
            raise ValueError(
                f"{self.name}: alpha = {alpha} must be positive and finite (alpha = 1/scale); set a "
                "positive scale (training keeps alpha in range by itself, see DynOPool2d.project_)"
            )
        scale = [1.0 / a for a in alpha]
        if self.scale_bounds is not None:
            scale = [min(max(r, self.scale_bounds[0]), self.scale_bounds[1]) for r in scale]
        limit = [min(self.max_scale, self.max_size / n) for n in in_size]
        if any(r > top * (1 + _TOLERANCE) for r, top in zip(scale, limit)):
            out = tuple(round(n * r) for n, r in zip(in_size, scale))
            raise ValueError(
                f"{self.name}: scale {tuple(scale)} would turn a {in_size} input into a {out} output, above "
                f"the limit of max_scale={self.max_scale:g} times the input and max_size={self.max_size} pixels "
                "per side; set a smaller scale, or pass larger max_scale / max_size if that is intended"
            )
        if not self.bound_hit:
            self._warn_at_bound(alpha, scale, limit)

    def _warn_at_bound(self, alpha: list[float], scale: list[float], limit: list[float]) -> None:
        """Warn once when the scale is outside ``scale_bounds`` (set by hand) or, once training
        has projected it, when it sits on a bound; a scale merely built on its bound is quiet."""
        trained = self._projected
        if self.scale_bounds is not None:
            low, high = self.scale_bounds
            outside = any(not low <= 1.0 / a <= high for a in alpha)
            on_edge = any(1.0 / a >= high * (1 - _AT_BOUND) or 1.0 / a <= low * (1 + _AT_BOUND) for a in alpha)
            if outside or (trained and on_edge):
                self.bound_hit = True
                warnings.warn(f"{self.name}: scale {[1.0 / a for a in alpha]} reached scale_bounds "
                              f"{self.scale_bounds} and is clamped to them", RuntimeWarning, stacklevel=4)
                return
        if trained and any(r >= top * (1 - _AT_BOUND) for r, top in zip(scale, limit)):
            self.bound_hit = True
            warnings.warn(
                f"{self.name}: scale {tuple(scale)} reached its upper bound (max_scale={self.max_scale:g}, "
                f"max_size={self.max_size}) and is held there; raise lambda or lower the alpha learning rate, "
                "or pass larger max_scale / max_size", RuntimeWarning, stacklevel=4,
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        in_h, in_w = x.shape[-2:]
        size = self.output_size_for(self.alpha.new_tensor((in_h, in_w)))
        return dynopool2d(x, size, self._output_size(size, (in_h, in_w)), self.aggregation)

    @torch.compiler.disable
    def _output_size(self, size: Tensor, in_size: tuple[int, int]) -> tuple[int, int]:
        """The integer output size of the straight-through ``size``, with one device-to-host copy
        per call (alpha for the checks and the rounded sizes), and the module's records. The size
        is data-dependent, so ``torch.compile`` runs this eagerly: one graph break per call."""
        register_scale(self)
        host = torch.cat([self.alpha.detach(), size.detach()]).tolist()
        self._check_alpha(host[:2], in_size)
        out_size = (round(host[2]), round(host[3]))
        self.input_size, self.output_size = in_size, out_size
        return out_size

    def extra_repr(self) -> str:
        r_h, r_w = (1.0 / a for a in self.alpha.detach().tolist())
        text = f"scale=({r_h:.4g}, {r_w:.4g}), aggregation={self.aggregation!r}"
        if self.min_size != 1.5:
            text += f", min_size={self.min_size}"
        if self.scale_bounds is not None:
            text += f", scale_bounds={self.scale_bounds}"
        if self.max_scale != DEFAULT_MAX_SCALE:
            text += f", max_scale={self.max_scale:g}"
        if self.max_size != DEFAULT_MAX_SIZE:
            text += f", max_size={self.max_size}"
        return text


def _check_limits(max_scale: float, max_size: int, min_size: float) -> tuple[float, int]:
    if isinstance(max_scale, bool) or not isinstance(max_scale, numbers.Real) or not (
        math.isfinite(max_scale) and max_scale > 0
    ):
        raise ValueError(f"max_scale must be a positive finite number, got {max_scale!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral) or max_size < max(2, min_size):
        raise ValueError(f"max_size must be a whole number of pixels of at least max(2, min_size), got {max_size!r}")
    return float(max_scale), int(max_size)
