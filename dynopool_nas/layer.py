"""``DynOPool2d``: the learnable resizing module (thesis section 4.1)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .ops import AGGREGATIONS, Aggregation, dynopool2d, ste_output_size

ScaleLike = float | Sequence[float]


def _pair(value: ScaleLike, what: str) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be a number or an (h, w) pair, got {value!r}")
    h, w = (float(v) for v in pair)
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
            pass, a warning is issued once and :attr:`bound_hit` is set, so that a diverging run
            cannot allocate enormous feature maps unnoticed.
        name: label used in error messages and reports; :func:`~dynopool_nas.dynopoolify`
            sets it to the module's path.

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
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if not (math.isfinite(min_size) and min_size > 0):
            raise ValueError(f"min_size must be positive, got {min_size!r}")
        if scale_bounds is not None:
            low, high = _pair(scale_bounds, "scale_bounds")
            if low >= high:
                raise ValueError(f"scale_bounds must be (r_min, r_max) with r_min < r_max, got {scale_bounds!r}")
            scale_bounds = (low, high)
        r_h, r_w = _pair(scale, "scale")
        self.alpha = nn.Parameter(torch.tensor([1.0 / r_h, 1.0 / r_w]))
        self.aggregation = aggregation
        self.min_size = float(min_size)
        self.scale_bounds = scale_bounds
        self.name = name or type(self).__name__
        self.bound_hit = False
        self.input_size: tuple[int, int] | None = None
        self.output_size: tuple[int, int] | None = None
        self.size: Tensor | None = None

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

    def _check_alpha(self, alpha: list[float]) -> None:
        if not all(math.isfinite(a) and a > 0 for a in alpha):
            raise ValueError(
                f"{self.name}: alpha = {alpha} must be positive and finite (alpha = 1/scale); the "
                "scale diverged. Lower the alpha learning rate, raise lambda, or set scale_bounds."
            )
        if self.scale_bounds is not None and not self.bound_hit:
            low, high = self.scale_bounds
            if not all(low <= 1.0 / a <= high for a in alpha):
                self.bound_hit = True
                warnings.warn(
                    f"{self.name}: scale {[1.0 / a for a in alpha]} left scale_bounds {self.scale_bounds} "
                    "and is clamped to them",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        in_h, in_w = x.shape[-2:]
        size = self.output_size_for(self.alpha.new_tensor((in_h, in_w)))
        # One device-to-host copy per call: alpha for the checks and the rounded sizes.
        host = torch.cat([self.alpha.detach(), size.detach()]).tolist()
        self._check_alpha(host[:2])
        out_size = (round(host[2]), round(host[3]))
        self.input_size, self.output_size, self.size = (in_h, in_w), out_size, size
        return dynopool2d(x, size, out_size, self.aggregation)

    def extra_repr(self) -> str:
        r_h, r_w = (1.0 / a for a in self.alpha.detach().tolist())
        text = f"scale=({r_h:.4g}, {r_w:.4g}), aggregation={self.aggregation!r}"
        if self.min_size != 1.5:
            text += f", min_size={self.min_size}"
        if self.scale_bounds is not None:
            text += f", scale_bounds={self.scale_bounds}"
        return text
