"""Trimmed mean, MeaMed and Phocas: coordinate-wise rules on the sorted columns (ALGORITHMS.md §3.5-3.7)."""
from __future__ import annotations

import torch
from torch import Tensor

from .basic import median_of_sorted
from .registry import Rule, register
from .sorting import columnwise


def trim_count(n: int, f: int) -> int:
    """b = f values dropped per side, lowered only when fewer than 2f + 1 rows reached the rule."""
    return max(0, min(f, (n - 1) // 2))


def trimmed_mean_of_sorted(s: Tensor, b: int) -> Tensor:
    """Mean of the sorted values [b, n - b) of each column (Yin et al. 2018, §3.5)."""
    n = s.shape[0]
    return s[b:n - b].mean(dim=0)


def closest_mean_of_sorted(s: Tensor, centre: Tensor, m: int) -> Tensor:
    """Per column, the average of the m values closest to `centre` (MeaMed / Phocas / Bulyan, §3.6).

    In a sorted column the m values closest to any point form a window [j, j + m), 0 <= j <= e = n - m.
    Distances to the centre fall then rise along the column, so a window holds m closest values exactly
    when its two ends are no farther than the two values just outside it; the first such window is
    taken (ties between equally distant values go to the lower values). Every window contains rows
    [e, m) when m >= e, so the sum is that core plus a suffix of the e lowest rows and a prefix of the
    e highest, both accumulated without subtraction (no cancellation next to huge values).
    """
    n = s.shape[0]
    m = max(1, min(m, n))
    e = n - m
    if e == 0:
        return s.mean(dim=0)
    if m < e:  # not used by the rules here (m >= n/2); general fallback
        return _closest_mean_general(s, centre, m)
    inf = s.new_full((1, s.shape[1]), float("inf"))
    left = (s[:e + 1] - centre).abs_()  # distance of row j, j = 0..e (window starts)
    right = (s[m - 1:] - centre).abs_()  # distance of row j + m - 1 (window ends)
    inside_far = torch.maximum(left, right)
    outside_near = torch.minimum(torch.cat([inf, left[:e]]), torch.cat([right[1:], inf]))
    j = (inside_far <= outside_near).to(torch.uint8).argmax(dim=0, keepdim=True)  # first valid window
    zero = s.new_zeros((1, s.shape[1]))
    low = torch.cat([s[:e].flip(0).cumsum(0).flip(0), zero])  # low[t] = sum of rows t..e-1
    high = torch.cat([zero, s[m:].cumsum(0)])  # high[t] = sum of rows m..m+t-1
    total = s[e:m].sum(dim=0) + low.gather(0, j).squeeze(0) + high.gather(0, j).squeeze(0)
    return total / m


def _closest_mean_general(s: Tensor, centre: Tensor, m: int) -> Tensor:
    dist = (s - centre).abs_()
    idx = torch.topk(dist, m, dim=0, largest=False).indices
    return torch.gather(s, 0, idx).mean(dim=0)


@register("tm", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Coordinate-wise trimmed mean, b = f per side; Yin et al. ICML 2018 (ALGORITHMS.md §3.5)",
          robustness="each coordinate stays within the honest values' range while n >= 2f + 1")
class TrimmedMean(Rule):
    """`[TM_b(x)]_k = 1/(n - 2b) sum_{j=b+1}^{n-b} [x]_{k,(j)}` with b = f."""

    passes = "1 (sorting network on cache-sized chunks)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        b = trim_count(x.shape[0], f)
        return columnwise(x, lambda s, cols: trimmed_mean_of_sorted(s, b))


@register("meamed", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Mean around the median, Xie, Koyejo & Gupta arXiv:1802.10116 (ALGORITHMS.md §3.6)",
          robustness="each coordinate stays within the honest values' range while n >= 2f + 1")
class MeaMed(Rule):
    """`[MeaMed_f(x)]_k` = mean of the n - f values closest to the (midpoint) coordinate median."""

    passes = "1 (sorting network on cache-sized chunks)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        m = x.shape[0] - trim_count(x.shape[0], f)
        return columnwise(x, lambda s, cols: closest_mean_of_sorted(s, median_of_sorted(s), m))


@register("phocas", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Phocas, Xie, Koyejo & Gupta arXiv:1805.09682 (ALGORITHMS.md §3.7)",
          robustness="each coordinate stays within the honest values' range while n >= 2f + 1")
class Phocas(Rule):
    """Mean of the n - f values closest to the coordinate-wise trimmed mean TM_f."""

    passes = "1 (sorting network on cache-sized chunks)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        b = trim_count(x.shape[0], f)
        m = x.shape[0] - b
        return columnwise(x, lambda s, cols: closest_mean_of_sorted(s, trimmed_mean_of_sorted(s, b), m))
