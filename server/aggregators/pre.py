"""Pre-aggregators composable in front of any rule (ALGORITHMS.md §4): NNM, bucketing, static clipping, ARC.

Each maps the (n, d) rows to new rows; the rule behind it keeps the same f.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import pairwise_sq_distances, sq_distances_to
from .registry import PreAggregator, register


@register("nnm", requires=(lambda n, f: f < n, "f < n"), pre=True,
          doc="Nearest Neighbor Mixing, Allouah et al. AISTATS 2023 (ALGORITHMS.md §4.1)",
          robustness="turns an (f, kappa)-robust rule into an (f, O(kappa f/n))-robust one for n > 2f "
                     "(Allouah et al. 2023)")
class NNM(PreAggregator):
    """y_i = mean of the n - f rows nearest to x_i, x_i included (one Gram matrix + one mixing product)."""

    passes = "1 Gram + 1 (mixing product)"

    def transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        k = max(1, n - min(f, n - 1))
        if k == n:
            return x.mean(dim=0, keepdim=True).expand(n, -1).clone()
        dist = pairwise_sq_distances(x)
        dist.fill_diagonal_(-1.0)  # x_i is always among its own neighbours, even next to duplicates
        idx = torch.topk(dist, k, dim=1, largest=False).indices
        mix = torch.zeros(n, n, dtype=x.dtype, device=x.device).scatter_(1, idx, 1.0 / k)
        return mix @ x


@register("bucketing", requires=(lambda n, f: n >= 1, "n >= 1"), pre=True,
          doc="Bucketing, Karimireddy, He & Jaggi ICLR 2022 (ALGORITHMS.md §4.2)",
          robustness="lowers the heterogeneity the rule sees; the rule keeps f and must hold on ceil(n/s)")
class Bucketing(PreAggregator):
    """Shuffle the rows with a fresh permutation each round, average consecutive buckets of `s` rows.

    The permutation comes from a torch.Generator seeded once with `seed`; its state is in `state_dict()`,
    so a resumed run draws the same permutations as an uninterrupted one.
    """

    def __init__(self, n: int, f: int, s: int = 2, seed: int = 0):
        super().__init__(n, f)
        if int(s) < 1:
            raise ValueError(f"pre-aggregator 'bucketing' needs s >= 1: got s={s}")
        self.s, self.seed = int(s), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def out_rows(self, n: int) -> int:
        return -(-n // self.s)

    def transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        if self.s == 1:
            return x
        perm = torch.randperm(n, generator=self.generator).to(x.device)
        nb = self.out_rows(n)
        bucket = torch.empty(n, dtype=torch.long, device=x.device)
        bucket[perm] = torch.arange(n, device=x.device) // self.s  # row perm[i] goes to bucket i // s
        sums = torch.zeros(nb, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, bucket, x)
        sizes = torch.bincount(bucket, minlength=nb).to(x.dtype)
        return sums / sizes.unsqueeze(1)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def _scale_rows(x: Tensor, factor: Tensor) -> Tensor:
    """x_i * factor_i, without a copy when nothing is scaled."""
    if bool((factor == 1).all()):
        return x
    return x * factor.to(x.dtype).unsqueeze(1)


@register("clip", requires=(lambda n, f: n >= 1, "n >= 1"), pre=True,
          doc="Static clipping x_i * min(1, c/||x_i||), ByzFL's Clipping(c=2) (ALGORITHMS.md §4.3)",
          robustness="bounds every row's norm by c; no robustness on its own")
class Clip(PreAggregator):
    passes = "1 (+1 when a row is clipped)"

    def __init__(self, n: int, f: int, c: float = 2.0):
        super().__init__(n, f)
        if float(c) <= 0:
            raise ValueError(f"pre-aggregator 'clip' needs c > 0: got c={c}")
        self.c = float(c)

    def transform(self, x: Tensor, f: int) -> Tensor:
        norm = sq_distances_to(x).sqrt()
        return _scale_rows(x, torch.where(norm > self.c, self.c / norm, torch.ones_like(norm)))


def arc_count(n: int, f: int) -> int:
    """k = floor(2 (f/n) (n - f)) rows are clipped (Allouah et al. 2024), at most n - 1."""
    return max(0, min((2 * f * (n - f)) // n, n - 1))


@register("arc", requires=(lambda n, f: f < n, "f < n"), pre=True,
          doc="Adaptive Robust Clipping, Allouah et al. arXiv:2405.14432 (ALGORITHMS.md §4.3)",
          robustness="preserves the (f, kappa)-robustness of the rule behind it (Allouah et al. 2024)")
class ARC(PreAggregator):
    """Clip the k = floor(2 (f/n) (n - f)) largest-norm rows to the norm of the largest unclipped one."""

    passes = "1 (+1 when a row is clipped)"

    def transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        k = arc_count(n, f)
        if k == 0:
            return x
        norm = sq_distances_to(x).sqrt()
        radius = torch.sort(norm, descending=True).values[k]
        return _scale_rows(x, torch.where(norm > radius, radius / norm, torch.ones_like(norm)))
