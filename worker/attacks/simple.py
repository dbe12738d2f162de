"""Attacks that need no knowledge of the honest vectors (ALGORITHMS.md §5.1)."""
from __future__ import annotations

from torch import Tensor

from .base import Attack, AttackContext, register


@register("none")
class NoAttack(Attack):
    """The Byzantine slot behaves honestly (delta = 0 runs, baselines)."""

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return u


@register("bitflip")
class BitFlip(Attack):
    """x_byz = -scale * u_t^(k), the worker's own honest momentum (paper A, App. E.1: scale 10)."""

    def __init__(self, scale: float = 10.0):
        super().__init__()
        self.scale = float(scale)

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return u * (-self.scale)

    def resolved(self) -> dict:
        return {"scale": self.scale}
