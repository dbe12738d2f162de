"""Malformed values: vectors of u's shape filled with one constant (ByzFL `Inf`; DESIGN.md "Reliability").

They test the server's defences rather than a rule's robustness: non-finite rows (`nan`, `inf`) and
absurd ones (`large`, beyond `filter.max_abs`) must be excluded and counted before aggregation (with
`filter.max_abs=null`, `large` reaches the rule and tests it), and `zero` is the "do nothing" worker
(a silent slot that still answers).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Attack, AttackContext, register


class Fill(Attack):
    """x_byz = value * 1 (u's shape, dtype and device)."""

    value = 0.0

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return torch.full_like(u, self.value)

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        value = self.value if math.isfinite(self.value) else str(self.value)  # summary.json stays strict JSON
        return {**super().resolved(ctx), "value": value}


@register("nan")
class NaN(Fill):
    """Every coordinate NaN."""

    value = float("nan")


@register("inf")
class Inf(Fill):
    """Every coordinate +inf (ByzFL `Inf`)."""

    value = float("inf")


@register("large")
class Large(Fill):
    """Every coordinate a huge finite number, 1e30 by default (finite in float32, inf in float16)."""

    def __init__(self, value: float = 1e30, **common):
        super().__init__(**common)
        self.value = float(value)


@register("zero")
class Zero(Fill):
    """Every coordinate 0."""

    value = 0.0
