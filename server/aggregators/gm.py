"""Geometric median by smoothed Weiszfeld iterations (ALGORITHMS.md §3.3).

RFA: Pillutla, Kakade & Harchaoui, IEEE TSP 2022.

    beta_i = alpha_i / max(nu, ||z^(r) - x_i||),   z^(r+1) = sum_i beta_i x_i / sum_i beta_i,   alpha_i = 1/n

Every iterate after the first is a convex combination z = sum_j w_j x_j of the rows, so with the float64
Gram matrix G the distances need no pass over the data: ||z - x_i||^2 = w^T G w - 2 (G w)_i + G_ii
(translation invariant since sum_j w_j = 1, so G may be taken on translated rows: geometry.centred_gram).
For few rows (n <= 4 T) the rule therefore costs one Gram matrix plus one weighted sum; for more rows
the Gram matrix (O(n^2 d)) costs more than the 2T direct passes (O(T n d)) and those are used instead
(measured on 2 CPU cores: the two are about even at n = 8-24 when the input fits in cache).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .basic import midpoint_median
from .geometry import centred_gram, sq_distances_to, weighted_rows
from .registry import Rule, register

#: parameter presets: Karimireddy et al.'s / ByzFL's RFA(T=3, nu=0.1) from zero, and Pillutla et al.'s code
PRESETS = {
    "byzfl": {"init": "zeros", "nu": 0.1, "T": 3, "ftol": None},
    "rfa": {"init": "mean", "nu": 1e-5, "T": 4, "ftol": 1e-6},
}
INITS = ("zeros", "mean", "median")
#: use the Gram form while n <= GRAM_ROWS_PER_ITERATION * T
GRAM_ROWS_PER_ITERATION = 4
#: Weiszfeld steps per call at most (each one or two passes over the rows, every round)
MAX_T = 1000


@register("gm", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Geometric median, smoothed Weiszfeld (RFA), Pillutla et al. 2022 (ALGORITHMS.md §3.3)",
          robustness="the exact geometric median has breakdown point 1/2 (f < n/2); "
                     "T Weiszfeld steps from zero approximate it")
class GeometricMedian(Rule):
    """Smoothed Weiszfeld from `init` (zeros | mean | median), smoothing `nu`, `T` steps, optional `ftol`.

    `preset` = "byzfl" (zeros, nu = 0.1, T = 3, no ftol: Karimireddy et al. / ByzFL, the default) or
    "rfa" (mean, nu = 1e-5, T = 4, ftol = 1e-6: Pillutla et al.'s code); explicit values override it.
    `method` = "auto" | "gram" | "direct" picks how distances are computed (same result).
    """

    def __init__(self, n: int, f: int, preset: str = "byzfl", init: str | None = None,
                 nu: float | None = None, T: int | None = None, ftol: float | None = None,
                 method: str = "auto"):
        super().__init__(n, f)
        if preset not in PRESETS:
            raise ValueError(f"aggregator 'gm' preset must be one of {sorted(PRESETS)}: got {preset!r}")
        p = PRESETS[preset]
        self.init = p["init"] if init is None else ("median" if init == "cw_median" else init)
        self.nu = float(p["nu"] if nu is None else nu)
        self.T = int(p["T"] if T is None else T)
        self.ftol = p["ftol"] if ftol is None else float(ftol)
        self.method = method
        if self.init not in INITS:
            raise ValueError(f"aggregator 'gm' init must be one of {INITS}: got {init!r}")
        if self.nu <= 0 or not 0 <= self.T <= MAX_T or method not in ("auto", "gram", "direct") \
                or (self.ftol is not None and not self.ftol >= 0):
            raise ValueError(f"aggregator 'gm' needs nu > 0, 0 <= T <= {MAX_T}, ftol >= 0 or null, method in "
                             f"auto|gram|direct: got nu={self.nu}, T={self.T}, ftol={self.ftol}, method={method!r}")

    @property
    def passes(self) -> str:
        return f"1 Gram + 1 (n <= {GRAM_ROWS_PER_ITERATION * self.T}), else {2 * self.T}"

    def _init(self, x: Tensor) -> Tensor | None:
        if self.init == "zeros":
            return None
        return x.mean(dim=0) if self.init == "mean" else midpoint_median(x)

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        use_gram = self.method == "gram" or (self.method == "auto" and n <= GRAM_ROWS_PER_ITERATION * self.T)
        if self.T == 0:
            z = self._init(x)
            return torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if z is None else z
        return self._gram(x) if use_gram else self._direct(x)

    def _step(self, sq: Tensor) -> Tensor:
        """Weights w = beta / sum(beta) of the next iterate from the squared distances (n,) float64."""
        beta = 1.0 / torch.clamp(sq.sqrt(), min=self.nu)  # alpha_i = 1/n cancels in the ratio
        return beta / beta.sum()

    def _converged(self, sq_old: Tensor, sq_new: Tensor) -> bool:
        if self.ftol is None:
            return False
        obj_old, obj_new = float(sq_old.sqrt().mean()), float(sq_new.sqrt().mean())
        return math.isfinite(obj_new) and abs(obj_old - obj_new) <= self.ftol * obj_new

    def _gram(self, x: Tensor) -> Tensor:
        g, norms = centred_gram(x)
        diag = torch.diagonal(g)
        if not bool(torch.isfinite(diag).all() and torch.isfinite(norms).all()):  # the registry drops the row
            return x.new_full((x.shape[1],), float("nan"))
        # distances to the starting point, subtracted first: in the Gram form the distances to the mean
        # cancel catastrophically when large rows offset each other in the mean (+B and -B)
        sq = norms if self.init == "zeros" else sq_distances_to(x, self._init(x))
        for _ in range(self.T):
            w = self._step(sq)
            sq_new = (w @ g @ w - 2.0 * (g @ w) + diag).clamp_(min=0.0)
            done = self._converged(sq, sq_new)
            sq = sq_new
            if done:
                break
        return weighted_rows(x, w)

    def _direct(self, x: Tensor) -> Tensor:
        z = self._init(x)
        sq = sq_distances_to(x, z)
        for t in range(self.T):
            z = weighted_rows(x, self._step(sq))
            if self.ftol is None and t == self.T - 1:
                break  # the distances to the last iterate are not needed
            sq_new = sq_distances_to(x, z)
            done = self._converged(sq, sq_new)
            sq = sq_new
            if done:
                break
        return z
