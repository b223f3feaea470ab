"""An independent DynOPool written literally from eq. 4.1-4.6 with ``grid_sample``.

It shares no code with the package: four query grids around each cell centre, each sampled
by ``grid_sample`` (bilinear, border padding, ``align_corners=False`` so that (-1, -1) and
(1, 1) are the corners of the input), then the max (or mean) of the four.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_size(in_size: float, alpha: Tensor, min_size: float = 1.5, rounded: bool = True) -> Tensor:
    """``max(H_in / alpha, min_size)``, straight-through rounded (eq. 4.3, 4.4) if asked."""
    h = torch.maximum(in_size / alpha, torch.tensor(min_size, dtype=alpha.dtype))
    return h + (torch.round(h) - h).detach() if rounded else h


def reference_dynopool(
    x: Tensor, size_h: Tensor, size_w: Tensor, out_h: int, out_w: int, aggregation: str = "max"
) -> Tensor:
    """DynOPool output for query points placed with the (possibly continuous) sizes."""
    dtype = x.dtype
    centre_h = -1 + (2 * torch.arange(out_h, dtype=dtype) + 1) / size_h
    centre_w = -1 + (2 * torch.arange(out_w, dtype=dtype) + 1) / size_w
    delta_h, delta_w = 0.25 * 2 / size_h, 0.25 * 2 / size_w
    samples = []
    for sign_h in (-1, 1):
        for sign_w in (-1, 1):
            qh = centre_h + sign_h * delta_h
            qw = centre_w + sign_w * delta_w
            grid_y, grid_x = torch.meshgrid(qh, qw, indexing="ij")
            grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
            samples.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    stacked = torch.stack(samples)
    return stacked.amax(0) if aggregation == "max" else stacked.mean(0)


def reference_layer(x: Tensor, alpha: Tensor, aggregation: str = "max", min_size: float = 1.5) -> Tensor:
    """The whole layer: straight-through sizes, then :func:`reference_dynopool`."""
    in_h, in_w = x.shape[-2:]
    size_h = reference_size(float(in_h), alpha[0], min_size)
    size_w = reference_size(float(in_w), alpha[1], min_size)
    return reference_dynopool(x, size_h, size_w, int(size_h.round()), int(size_w.round()), aggregation)
