"""The attack interface and registry (DESIGN.md, "Library API"; ALGORITHMS.md §5).

An attack runs inside a Byzantine worker process. Each round the worker first computes its honest
momentum u (same data pipeline as an honest worker), then asks the attack for the vector to send::

    v = attack(u, honest, ctx)

`honest` is the knowledge the adversary has this round, a (k, d) tensor, or None when the attack
does not need any (`needs_honest = False`). Its rows are in a fixed order, worker rank ascending:
  - knowledge = "omniscient": the h = n - f honest workers' vectors of the current round, delivered
    by an all-gather inside the worker-only process group (`ctx.honest_ranks` names their ranks);
  - knowledge = "colluders": only what the f Byzantine ranks computed honestly on their own shards
    (the original ALIE setting). The formulas are the same, applied to the f rows given.

Conventions (ALGORITHMS.md §1, §5):
  - "the true value" is the worker's own EMA momentum u_t, not the raw gradient;
  - every Byzantine rank sends the identical vector unless the attack says otherwise (`bitflip` and
    `labelflip` use each rank's own momentum; `gaussian` can draw independently per rank);
  - `labelflip` is a data attack: `flips_labels = True` tells the worker loop to train this rank on
    labels y -> C - 1 - y; its `craft` then returns u unchanged.

HGO (partial gradients, DESIGN.md "Round protocol: HGO"): the worker loop first asks
`claim_length(b_honest, d)` how many coordinates to claim, then calls `craft` on vectors restricted
to that block (the first b coordinates of the round's permutation C_k): the same attacks apply to the
partial block. Every attack takes the option `lie_length` (default False); when True the Byzantine
worker claims the whole vector, b = d, whatever its compute budget allows (a Byzantine device is not
bound by its profile, so it can compute the block it claims).
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
    generator: torch.Generator | None = None  # seeded per (seed, round), identical on every Byzantine rank
    aggregator: dict[str, Any] = field(default_factory=dict)  # server's rule {name, f, pre, **params}
    declared_f: int | None = None  # f the server's rule is configured for; None: the same as f
    honest_ranks: tuple[int, ...] = ()  # ranks of the rows of `honest`, ascending (empty if unknown)
    knowledge: str = "omniscient"  # omniscient | colluders: what `honest` holds

    @property
    def rule_f(self) -> int:
        """The f the server's rule is built with: aggregator.f, else declared_f, else f."""
        f = self.aggregator.get("f") if self.aggregator else None
        if f is None:
            f = self.declared_f
        return int(self.f if f is None else f)


ATTACKS: dict[str, type] = {}


def register(*names: str):
    def wrap(cls):
        for name in names:
            ATTACKS[name] = cls
        cls.name = names[0]
        return cls

    return wrap


class Attack:
    """Base of every attack. Subclasses set the class flags and override `craft`.

    Subclasses take their own keyword parameters and pass the rest (`lie_length`) to this
    constructor, which rejects anything it does not know with a message naming the attack.
    """

    name = "attack"
    needs_honest = False  # omniscient: needs the honest vectors of the round
    flips_labels = False  # trains on y -> C-1-y (label flipping)

    def __init__(self, *, lie_length: bool = False, **params: Any):
        if params:
            raise ValueError(f"attack '{self.name}' got unknown parameter(s) {sorted(params)}")
        self.lie_length = bool(lie_length)

    def check(self, n: int, f: int, known: int | None = None) -> None:
        """Raise ValueError when the attack cannot run with n workers of which f are Byzantine; `known` is
        how many vectors the adversary sees each round (n - f omniscient, f colluders)."""

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not define craft()")

    def __call__(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        if self.needs_honest and (honest is None or honest.dim() != 2 or honest.shape[0] < 1):
            raise ValueError(f"attack '{self.name}' needs the honest vectors as a (k, d) tensor with k >= 1")
        return self.craft(u, honest, ctx)

    def claim_length(self, b_honest: int, d: int) -> int:
        """HGO: the block length this worker claims; b_honest unless `lie_length` (then d)."""
        return int(d) if self.lie_length else int(b_honest)

    def resolved(self, ctx: AttackContext | None = None) -> dict[str, Any]:
        """The parameters actually used (e.g. ALIE's z), recorded in summary.json.

        Before any round has run, pass the run's context (n, f, the server's rule) to get the values
        the attack will use; afterwards the values of the last round are reported.
        """
        return {"lie_length": True} if self.lie_length else {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.resolved().items())})"


def get_attack(name: str, **params: Any) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"attack.name '{name}' is unknown; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](**params)


def honest_mean(honest: Tensor) -> Tensor:
    """mean_{i in H} x_i over the rows given (ALGORITHMS.md §5.2, §5.4)."""
    return honest.mean(dim=0)
