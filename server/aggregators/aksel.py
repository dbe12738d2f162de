"""AKSEL (Boussetta, El-Mhamdi, Guerraoui, Maurer & Rouault, OPODIS 2020; ALGORITHMS.md §3.10).

As in the co-author's reference code: m = coordinate-wise median (lower median by default, as
torch.median), d_i = ||x_i - m||^2, output the plain average of the c rows closest to m, with
c = ceil(n/2) ("mid", default) or n - f ("n-f"). The squared distances are accumulated while each
sorted chunk is still in cache, so the data is read once for median + distances and once for the average.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .basic import lower_median_of_sorted, median_of_sorted
from .geometry import mean_of_rows, sq_distances_to
from .registry import Rule, register
from .sorting import sorted_chunks

MODES = ("mid", "n-f")
MEDIANS = ("lower", "midpoint")


@register("aksel", requires=(lambda n, f: f >= 1 and n >= 2 * f + 1, "f >= 1 and n >= 2f + 1"),
          doc="AKSEL, Boussetta et al. OPODIS 2020, reference code (ALGORITHMS.md §3.10)",
          robustness="averages whole submitted vectors close to the coordinate-wise median; "
                     "the paper's guarantee (angular error) was not checked here")
class Aksel(Rule):
    """Average of the c rows closest (squared l2) to the coordinate-wise median.

    `mode`: "mid" (c = ceil(n/2), default) or "n-f" (c = n - f). `median`: "lower" (reference code) or
    "midpoint".
    """

    passes = "2 (median + distances fused, then the average)"

    def __init__(self, n: int, f: int, mode: str = "mid", median: str = "lower"):
        super().__init__(n, f)
        if mode not in MODES or median not in MEDIANS:
            raise ValueError(f"aggregator 'aksel' needs mode in {MODES} and median in {MEDIANS}: "
                             f"got mode={mode!r}, median={median!r}")
        self.mode, self.median = mode, median

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        c = (n + 1) // 2 if self.mode == "mid" else max(1, n - f)
        centre = lower_median_of_sorted if self.median == "lower" else median_of_sorted
        sq = torch.zeros(n, dtype=torch.float64, device=x.device)
        med = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
        for cols, s in sorted_chunks(x):  # the distances while the chunk is in cache
            med[cols] = centre(s)
            sq += torch.linalg.vector_norm(x[:, cols] - med[cols], dim=1).to(torch.float64).square()
        if not bool(torch.isfinite(sq).all()):  # float32 overflow (entries beyond ~1e19), or non-finite rows
            sq = sq_distances_to(x, med)
        closest = torch.sort(sq, stable=True).indices[:c]
        return mean_of_rows(x, closest)
