"""Mimic: every Byzantine rank sends one honest worker's vector (Karimireddy, He & Jaggi, ICLR 2022).

ALGORITHMS.md §5.8. Rows of `honest` come in rank order (ctx.honest_ranks), so a target is a row
index: row 0 is the honest worker with the smallest rank.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, register


@register("mimic")
class Mimic(Attack):
    """Send the vector of one honest worker.

    warmup = 0: the fixed target row `target` (ByzFL `Mimic(epsilon)`, Karimireddy `MimicAttacker`).

    warmup > 0: Karimireddy's `MimicVariantAttacker`. Round t = 0 sets mu = mean(H) and z = one power-
    iteration step from a Gaussian vector drawn with seed `seed`:
        z = sum_i <x_i - mu, z> (x_i - mu),  z <- z / ||z||;
    rounds 0 < t < warmup update the running averages
        mu <- t/(t+1) mu + mean(H)/(t+1),  z <- normalise(t/(t+1) z + step(z)/||step(z)||/(t+1)).
    While t < warmup the target is argmax_i <x_i, z>; afterwards it stays fixed at the last choice.
    Every Byzantine rank runs the same deterministic computation, so all send the same vector.
    """

    needs_honest = True

    def __init__(self, target: int = 0, warmup: int = 0, seed: int = 0, **common):
        super().__init__(**common)
        if target < 0 or warmup < 0:
            raise ValueError(f"attack.target={target} and attack.warmup={warmup} must be >= 0")
        self.target, self.warmup, self.seed = int(target), int(warmup), int(seed)
        self.t = 0
        self.mu: Tensor | None = None
        self.z: Tensor | None = None
        self.target_rank: int | None = None

    @staticmethod
    def _step(honest: Tensor, mu: Tensor, z: Tensor) -> Tensor:
        """One power-iteration step on the centred rows: sum_i <x_i - mu, z> (x_i - mu), normalised."""
        c = honest - mu
        v = (c @ z) @ c
        return v / v.norm()

    def _learn(self, honest: Tensor) -> None:
        avg = honest.mean(dim=0)
        if self.t == 0:
            self.mu = avg.clone()
            g = torch.Generator().manual_seed(self.seed)
            z0 = torch.randn(avg.shape, generator=g, dtype=avg.dtype).to(avg.device)
            self.z = self._step(honest, self.mu, z0)
        else:
            t = self.t
            # a resumed state was loaded on the CPU; the honest vectors live where the worker computes
            self.mu, self.z = self.mu.to(avg.device), self.z.to(avg.device)
            self.mu = self.mu * (t / (t + 1)) + avg / (t + 1)
            z = self.z * (t / (t + 1)) + self._step(honest, self.mu, self.z) / (t + 1)
            self.z = z / z.norm()
        self.target = int(torch.argmax(honest @ self.z))

    def check(self, n: int, f: int, known: int | None = None) -> None:
        rows = n - f if known is None else known
        if self.warmup == 0 and self.target >= rows:
            raise ValueError(f"attack.target={self.target} must be < {rows}: it indexes the {rows} vectors the "
                             f"adversary knows each round (n={n}, f={f})")

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        if self.t < self.warmup:
            self._learn(honest)
        self.t += 1
        if not 0 <= self.target < honest.shape[0]:
            raise ValueError(f"attack.target={self.target} is not a row of the "
                             f"{honest.shape[0]} honest vectors")
        if ctx.honest_ranks:
            self.target_rank = int(ctx.honest_ranks[self.target])
        return honest[self.target].clone()

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        out = {**super().resolved(ctx), "target": self.target, "warmup": self.warmup}
        if self.target_rank is not None:
            out["target_rank"] = self.target_rank
        return out

    def state_dict(self) -> dict:
        return {"t": self.t, "target": self.target, "mu": self.mu, "z": self.z,
                "target_rank": self.target_rank}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.target = int(state["t"]), int(state["target"])
        self.mu, self.z, self.target_rank = state["mu"], state["z"], state["target_rank"]
