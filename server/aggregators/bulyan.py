"""Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018, "The Hidden Vulnerability..."; ALGORITHMS.md §3.9).

Paper form: (1) select theta = n - 2f rows by running Krum repeatedly on the remaining pool (pool size r,
r - f - 2 neighbours), (2) per coordinate, average the beta = theta - 2f selected values closest to
their (midpoint) median. The pairwise distances are computed once; each Krum step reuses the rows and
columns of the pool, so the selection is a loop of n x n operations over theta steps (sequential by
definition) and the data is read twice: once for the Gram matrix, once for the coordinate-wise step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .basic import median_of_sorted
from .geometry import pairwise_sq_distances
from .krum import krum_order
from .registry import Rule, register
from .sorting import columnwise
from .trimmed import GROUP, closest_mean_of_sorted


def bulyan_selection(dist: Tensor, f: int, theta: int) -> Tensor:
    """Indices of the theta rows chosen by iterated Krum on the (n, n) squared distances."""
    pool = torch.arange(dist.shape[0], device=dist.device)
    chosen = []
    for _ in range(theta):
        sub = dist.index_select(0, pool).index_select(1, pool)
        best = int(krum_order(sub, f)[0])
        chosen.append(pool[best])
        pool = torch.cat([pool[:best], pool[best + 1:]])
    return torch.stack(chosen)


@register("bulyan", requires=(lambda n, f: n >= 4 * f + 3, "n >= 4f + 3"),
          doc="Bulyan over iterated Krum, El Mhamdi et al. ICML 2018, theta = n - 2f, beta = theta - 2f "
              "(ALGORITHMS.md §3.9)",
          robustness="(alpha, f)-Byzantine resilient and coordinate-wise bounded by the selected correct "
                     "values ('strong' resilience) for n >= 4f + 3 (El Mhamdi et al. 2018)")
class Bulyan(Rule):
    """theta = n - 2f rows by iterated Krum, then per coordinate the mean of the beta = theta - 2f closest
    to the median of the selected values."""

    passes = "1 Gram + 1 (sorting network)"

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        f = max(0, min(f, (n - 3) // 4))  # only when fewer rows than declared reached the rule
        theta = n - 2 * f
        beta = theta - 2 * f
        sel = bulyan_selection(pairwise_sq_distances(x), f, theta)
        sel = torch.sort(sel).values  # read the chosen rows in memory order
        return columnwise(x, lambda s, cols: closest_mean_of_sorted(s, median_of_sorted(s), beta), rows=sel,
                          group=GROUP)
