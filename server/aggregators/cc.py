"""Centered clipping (Karimireddy, He & Jaggi, ICML 2021, "Learning from History..."; ALGORITHMS.md §3.8).

    v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, tau / ||x_i - v_l||),   l = 0..L-1,   output v_L

v_0 is the previous round's aggregate (zero before the first round), kept in the rule's state and
saved with the server's checkpoints. Each iteration is one pass for the distances ||x_i - v_l||
(float64, direct) and one weighted sum: v + (sum_i c_i x_i - (sum_i c_i) v) / n with c_i the factors.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import sq_distances_to, weighted_rows
from .registry import Rule, register

CENTERS = ("previous", "zero")
MAX_L = 1000  # clipping iterations per call at most (two passes over the rows each, every round)


@register("cc", requires=(lambda n, f: n >= 2 * f + 1, "n >= 2f + 1"),
          doc="Centered clipping, Karimireddy et al. ICML 2021 (ALGORITHMS.md §3.8)",
          robustness="with worker momentum, converges under a delta = f/n < 1/2 fraction of Byzantine "
                     "workers for a suitable tau (Karimireddy et al. 2021, Thm. III)")
class CenteredClipping(Rule):
    """Radius `tau` (0.1 for EMA momenta, ByzSGDnm paper), `L` iterations, `center` "previous" | "zero".

    The centre v is the last value returned; a call on a matrix of another width (an HGO segment) starts
    from zero. `state_dict()` holds v, so a resumed run continues from the same centre.
    """

    def __init__(self, n: int, f: int, tau: float = 0.1, L: int = 1, center: str = "previous"):
        super().__init__(n, f)
        if float(tau) <= 0 or not 1 <= int(L) <= MAX_L or center not in CENTERS:
            raise ValueError(f"aggregator 'cc' needs tau > 0, 1 <= L <= {MAX_L}, center in {CENTERS}: "
                             f"got tau={tau}, L={L}, center={center!r}")
        self.tau, self.L, self.center = float(tau), int(L), center
        self.v: Tensor | None = None

    @property
    def passes(self) -> str:
        return str(2 * self.L)

    def _centre(self, x: Tensor) -> Tensor:
        d = x.shape[1]
        if self.center == "previous" and self.v is not None and self.v.shape == (d,):
            return self.v.to(device=x.device, dtype=x.dtype)
        return torch.zeros(d, dtype=x.dtype, device=x.device)

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        v = self._centre(x)
        for _ in range(self.L):
            norm = sq_distances_to(x, v).sqrt()
            c = torch.where(norm > self.tau, self.tau / norm, torch.ones_like(norm))  # ||c_i|| = 0 -> 1
            v = v * (1.0 - float(c.sum()) / n) + weighted_rows(x, c / n)
        return v

    def commit(self, out: Tensor) -> None:
        self.v = out.detach().clone()

    def state_dict(self) -> dict:
        return {"v": None if self.v is None else self.v.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        v = state.get("v")
        self.v = None if v is None else torch.as_tensor(v).clone()
