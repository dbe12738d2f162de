"""Mean and coordinate-wise median (ALGORITHMS.md §3.1, §3.4)."""
from __future__ import annotations

from torch import Tensor

from .registry import Rule, register
from .sorting import columnwise


@register("mean", doc="Plain average (no robustness), ALGORITHMS.md §3.1",
          robustness="none: one Byzantine row moves it arbitrarily far")
class Mean(Rule):
    passes = "1"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        return x.mean(dim=0)


def median_of_sorted(s: Tensor) -> Tensor:
    """Midpoint of the two middle order statistics of each column of a sorted (n, c) block (§3.4)."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    return s[n // 2 - 1] * 0.5 + s[n // 2] * 0.5  # halves first: no overflow near float max


def lower_median_of_sorted(s: Tensor) -> Tensor:
    """The lower middle order statistic (torch.median's convention), used by AKSEL's reference code."""
    return s[(s.shape[0] - 1) // 2].clone()


def midpoint_median(x: Tensor) -> Tensor:
    """Coordinate-wise median of the rows of x, midpoint of the two middle values for even n (§3.4)."""
    return columnwise(x, lambda s, cols: median_of_sorted(s))


@register("cm", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Coordinate-wise median, Yin et al. ICML 2018; midpoint for even n (ALGORITHMS.md §3.4)",
          robustness="each coordinate stays within the honest values' range while f < n/2 (breakdown 1/2)")
class CoordinateMedian(Rule):
    """`[CM(x)]_k = median([x_1]_k, ..., [x_n]_k)`, the midpoint of the two middle values when n is even."""

    passes = "1 (sorting network on cache-sized chunks)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        return midpoint_median(x)


__all__ = ["Mean", "CoordinateMedian", "midpoint_median", "median_of_sorted", "lower_median_of_sorted"]
