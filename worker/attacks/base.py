"""The attack interface and registry (DESIGN.md, "Library API"; ALGORITHMS.md §5).

An attack runs inside a Byzantine worker process. Each round the worker first computes its honest
momentum u (same data pipeline as an honest worker), then asks the attack for the vector to send::

    v = attack(u, honest, ctx)

`honest` is the knowledge the adversary has this round, an (h, d) tensor, or None when the attack
does not need any (`needs_honest = False`):
  - knowledge = "omniscient": the honest workers' vectors of the current round, delivered by an
    all-gather inside the worker-only process group;
  - knowledge = "colluders": only what the Byzantine ranks computed honestly on their own shards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class AttackContext:
    """What a Byzantine worker knows about the round besides the vectors."""

    round: int = 0
    n: int = 1  # workers that send a vector (m)
    f: int = 0  # Byzantine workers (the true count; the adversary knows its own)
    rank: int = 1  # this worker's rank (1..m)
    generator: torch.Generator | None = None  # seeded per (seed, round) for reproducible randomness
    aggregator: dict[str, Any] = field(default_factory=dict)  # server's rule config, for white-box attacks
    declared_f: int = 0  # f the server's rule is configured for


ATTACKS: dict[str, type] = {}


def register(*names: str):
    def wrap(cls):
        for name in names:
            ATTACKS[name] = cls
        cls.name = names[0]
        return cls

    return wrap


class Attack:
    """Base of every attack. Subclasses set the class flags and override `craft`."""

    name = "attack"
    needs_honest = False  # omniscient: needs the honest vectors of the round
    flips_labels = False  # trains on y -> C-1-y (label flipping)

    def __init__(self, **params: Any):
        if params:
            raise ValueError(f"attack '{self.name}' got unknown parameter(s) {sorted(params)}")

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not define craft()")

    def __call__(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return self.craft(u, honest, ctx)

    def resolved(self) -> dict[str, Any]:
        """The parameters actually used (e.g. ALIE's z), recorded in summary.json."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def get_attack(name: str, **params: Any) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"attack.name '{name}' is unknown; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](**params)
