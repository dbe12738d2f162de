"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017; ALGORITHMS.md §3.2)."""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import mean_of_rows, pairwise_sq_distances
from .registry import Rule, register

NEIGHBOURS = ("n-f-2", "n-f-1")


def neighbour_count(n: int, f: int, neighbours: str = "n-f-2") -> int:
    """k = n - f - 2 (paper) or n - f - 1 (ByzFL/Allouah), clamped to the n - 1 others that exist."""
    k = n - f - (2 if neighbours == "n-f-2" else 1)
    return max(0, min(k, n - 1))


def krum_scores(dist: Tensor, k: int) -> Tensor:
    """s(i) = sum of the k smallest squared distances from x_i to the others; dist is (n, n) float64."""
    n = dist.shape[0]
    if k == 0:
        return torch.zeros(n, dtype=dist.dtype, device=dist.device)
    others = dist + torch.diag(dist.new_full((n,), float("inf")))  # x_i itself is not its own neighbour
    return torch.topk(others, k, dim=1, largest=False).values.sum(dim=1)


def krum_order(dist: Tensor, f: int, neighbours: str = "n-f-2") -> Tensor:
    """Row indices by ascending Krum score, ties broken by index (ALGORITHMS.md §3.2 pseudo-code)."""
    scores = krum_scores(dist, neighbour_count(dist.shape[0], f, neighbours))
    scores = torch.where(torch.isnan(scores), torch.full_like(scores, float("inf")), scores)
    return torch.sort(scores, stable=True).indices


def _krum_condition(name: str, neighbours: str, strict: bool):
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"aggregator '{name}' option neighbours must be one of {NEIGHBOURS}: "
                         f"got {neighbours!r}")
    if neighbours == "n-f-1":
        return (lambda n, f: n >= 2 * f + 1), "n >= 2f + 1 (neighbours n-f-1)"
    if strict:
        return (lambda n, f: n >= 2 * f + 3), "n > 2f + 2 (strict, as in the paper)"
    return (lambda n, f: n >= 2 * f + 2), "n >= 2f + 2"


@register("krum", requires=(lambda n, f: n >= 2 * f + 2, "n >= 2f + 2"),
          doc="Krum, Blanchard et al. NeurIPS 2017, score over n - f - 2 neighbours (ALGORITHMS.md §3.2)",
          robustness="(alpha, f)-Byzantine resilient for n > 2f + 2 (Blanchard et al. 2017, Prop. 1); "
                     "n >= 2f + 2 is Karimireddy et al.'s check; strict=True asks for the paper's")
class Krum(Rule):
    """Returns the row x_{i*} with the smallest score s(i) = sum of its k closest squared distances.

    `neighbours`: "n-f-2" (paper) or "n-f-1" (ByzFL). `strict`: require the paper's n > 2f + 2.
    """

    passes = "1 Gram"

    def __init__(self, n: int, f: int, neighbours: str = "n-f-2", strict: bool = False):
        super().__init__(n, f)
        self.neighbours, self.strict = neighbours, bool(strict)
        self._condition = _krum_condition(self.spec.name, neighbours, self.strict)

    def precondition(self):
        return self._condition

    def select(self, x: Tensor, f: int) -> Tensor:
        """Row indices by ascending score."""
        return krum_order(pairwise_sq_distances(x), f, self.neighbours)

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        return x[int(self.select(x, f)[0])].clone()


@register("multikrum", requires=(lambda n, f: n >= 2 * f + 2, "n >= 2f + 2"),
          doc="Multi-Krum(m): mean of the m best-scored rows, Blanchard et al. 2017 (ALGORITHMS.md §3.2)",
          robustness="as Krum (same selection score); m = n - f is the ByzFL/Allouah default")
class MultiKrum(Krum):
    """Average of the m rows with the smallest Krum scores; m defaults to n - f (ALGORITHMS.md §8)."""

    passes = "1 Gram + 1"

    def __init__(self, n: int, f: int, m: int | None = None, neighbours: str = "n-f-2", strict: bool = False):
        super().__init__(n, f, neighbours=neighbours, strict=strict)
        if m is not None and not 1 <= int(m) <= n:
            raise ValueError(f"aggregator 'multikrum' needs 1 <= m <= n: got m={m}, n={n}, f={f}")
        self.m = None if m is None else int(m)

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        r = x.shape[0]
        m = r - f if self.m is None else self.m
        return mean_of_rows(x, self.select(x, f)[:max(1, min(m, r))])
