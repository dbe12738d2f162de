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

    In a sorted column the m values closest to any point form a window [j, j + m), 0 <= j <= e = n - m.
    Distances to the centre fall then rise along the column, so a window holds m closest values exactly
    when its two ends are no farther than the two values just outside it. When the centre lies between
    rows e - 1 and n - e (the median and the trimmed mean always do), j is a count of comparisons;
    otherwise the first such window is searched. Ties between equally distant values go to the lower
    values. When m >= e every window contains rows [e, m), and of each pair (i, m + i), i < e, exactly
    one row: the sum is that core plus one masked selection (no subtraction, hence no cancellation
    next to huge values).
    """
    n = s.shape[0]
    m = max(1, min(m, n))
    e = n - m
    if e == 0:
        return s.mean(dim=0)
    if e <= n - e and bool(((s[e - 1] <= centre) & (centre <= s[n - e])).all()):
        # the e lowest rows lie below the centre and the e highest above it: along each end the
        # distances fall towards the centre, so the e excluded values are the e largest of two sorted
        # sequences, and the count taken from the low end is #{i < e : |s_i - c| > |s_(n-e+i) - c|}
        j = ((centre - s[:e]) > (s[n - e:] - centre)).sum(dim=0, dtype=torch.int32)
    else:
        j = _first_valid_window(s, centre, m)
    if m < e:  # (Bulyan with n < 6f) no row is in every window: mask all rows
        pos = torch.arange(n, device=s.device, dtype=torch.int32).unsqueeze(1)
        zero = torch.zeros((), dtype=s.dtype, device=s.device)
        return torch.where((pos >= j) & (pos < j + m), s, zero).sum(dim=0) / m
    t = torch.arange(e, device=s.device, dtype=torch.int32).unsqueeze(1)
    total = s[e:m].sum(dim=0)  # rows e..m-1 are in every window
    # of the pair (row i, row m + i), i < e, exactly one is in the window: row i when i >= j
    total += torch.where(t >= j, s[:e], s[m:]).sum(dim=0)
    return total / m


def _first_valid_window(s: Tensor, centre: Tensor, m: int) -> Tensor:
    """Start j of the first window [j, j + m) whose ends are no farther from the centre than the rows
    just outside it, (c,) int32; j = n - m when none is (only with NaN)."""
    e = s.shape[0] - m
    left = (s[:e + 1] - centre).abs_()  # distance of the first row of window j = 0..e
    right = (s[m - 1:] - centre).abs_()  # distance of its last row
    far = torch.maximum(left, right)
    near = torch.empty_like(far)  # the closer of the two rows just outside window j
    near[0] = right[1]
    near[e] = left[e - 1]
    if e > 1:
        torch.minimum(left[:e - 1], right[2:], out=near[1:e])
    invalid = far > near
    run = invalid[0].clone()
    j = run.to(torch.int32)  # number of leading invalid windows (a running AND: argmax along dim 0
    for t in range(1, e + 1):  # is a slow path on CPU)
        run &= invalid[t]
        j += run
    return j.clamp_(max=e)


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
