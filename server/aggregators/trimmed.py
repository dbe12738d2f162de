"""Trimmed mean, MeaMed and Phocas: coordinate-wise rules on the sorted columns (ALGORITHMS.md §3.5-3.7)."""
from __future__ import annotations

import torch
from torch import Tensor

from .basic import median_of_sorted
from .registry import Rule, register
from .sorting import columnwise

#: elements per call of the closest-values window (many small ops: larger blocks than the sort's chunks)
GROUP = 2**20


def trim_count(n: int, f: int) -> int:
    """b = f values dropped per side, lowered only when fewer than 2f + 1 rows reached the rule."""
    return max(0, min(f, (n - 1) // 2))


def trimmed_mean_of_sorted(s: Tensor, b: int) -> Tensor:
    """Mean of the sorted values [b, n - b) of each column (Yin et al. 2018, §3.5)."""
    n = s.shape[0]
    return s[b:n - b].mean(dim=0)


def closest_mean_of_sorted(s: Tensor, centre: Tensor, m: int) -> Tensor:
    """Per column, the average of the m values closest to `centre` (MeaMed / Phocas / Bulyan, §3.6).

    In a sorted column the m values closest to any point c form a window [j, j + m), 0 <= j <= e = n - m.
    Window j + 1 is closer than window j exactly when c - s_j > s_(j+m) - c, i.e. s_j + s_(j+m) < 2c:
    signed differences, not distances, so the test holds for a prefix of j even when values tie, and
    j is the number of windows that pass it (the k-closest-elements search, as one count). An equal
    pair keeps the lower value. When m >= e every window contains rows [e, m), and of each pair
    (i, m + i), i < e, exactly one row: the sum is that core plus one masked selection (no subtraction,
    hence no cancellation next to huge values).
    """
    n = s.shape[0]
    m = max(1, min(m, n))
    e = n - m
    if e == 0:
        return s.mean(dim=0)
    j = ((centre - s[:e]) > (s[m:] - centre)).sum(dim=0, dtype=torch.int32)
    if m < e:  # (Bulyan with n < 6f) no row is in every window: mask all rows
        pos = torch.arange(n, device=s.device, dtype=torch.int32).unsqueeze(1)
        zero = torch.zeros((), dtype=s.dtype, device=s.device)
        return torch.where((pos >= j) & (pos < j + m), s, zero).sum(dim=0) / m
    t = torch.arange(e, device=s.device, dtype=torch.int32).unsqueeze(1)
    total = s[e:m].sum(dim=0)  # rows e..m-1 are in every window
    # of the pair (row i, row m + i), i < e, exactly one is in the window: row i when i >= j
    total += torch.where(t >= j, s[:e], s[m:]).sum(dim=0)
    return total / m


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
        return columnwise(x, lambda s, cols: closest_mean_of_sorted(s, median_of_sorted(s), m), group=GROUP)


@register("phocas", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Phocas, Xie, Koyejo & Gupta arXiv:1805.09682 (ALGORITHMS.md §3.7)",
          robustness="each coordinate stays within the honest values' range while n >= 2f + 1")
class Phocas(Rule):
    """Mean of the n - f values closest to the coordinate-wise trimmed mean TM_f."""

    passes = "1 (sorting network on cache-sized chunks)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        b = trim_count(x.shape[0], f)
        m = x.shape[0] - b
        return columnwise(x, lambda s, cols: closest_mean_of_sorted(s, trimmed_mean_of_sorted(s, b), m),
                          group=GROUP)
