"""Mean and coordinate-wise median (ALGORITHMS.md §3.1, §3.4)."""
from __future__ import annotations

import torch
from torch import Tensor

from .registry import Rule, register
from .sorting import sorted_rows


@register("mean", doc="Plain average (no robustness), ALGORITHMS.md §3.1")
class Mean(Rule):
    def aggregate(self, x: Tensor, f: int) -> Tensor:
        return x.mean(dim=0)


def midpoint_median(x: Tensor) -> Tensor:
    """Coordinate-wise median, midpoint of the two middle order statistics for even n (§3.4)."""
    n = x.shape[0]
    s = sorted_rows(x)
    if n % 2:
        return s[n // 2].clone()
    return (s[n // 2 - 1] + s[n // 2]) * 0.5


@register("cm", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Coordinate-wise median, Yin et al. ICML 2018; midpoint for even n")
class CoordinateMedian(Rule):
    def aggregate(self, x: Tensor, f: int) -> Tensor:
        return midpoint_median(x)


__all__ = ["Mean", "CoordinateMedian", "midpoint_median", "torch"]
