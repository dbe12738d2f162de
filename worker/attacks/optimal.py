"""White-box "optimal" ALIE and IPM: a line search against the server's own rule (ALGORITHMS.md §5.5).

ByzFL's `Optimal_ALittleIsEnough` / `Optimal_InnerProductManipulation` (also used by Allouah et al.,
AISTATS 2023) pick the attack factor tau >= 0 each round to maximise

    J(tau) = || F(P(H u {f copies of attack_tau})) - mean(H) ||

with F, P the server's configured rule and pre-aggregators, built fresh for every evaluation (so a
stateful rule such as CC starts from its initial state inside the search, as in ByzFL). This is the
one place where the worker side imports `server.aggregators` (DESIGN.md, "Layout"): the adversary is
white-box, it knows the rule, never the server's state or which ranks the server trusts.

attack_tau = mu + tau * sigma (ALIE, as ByzFL and §5.5 write it; the fixed ALIE of §5.3 is mu - z sigma)
and -tau * mu (IPM). With knowledge = colluders the k given rows stand in for the
honest set: they are repeated cyclically to the h = n - f rows the server would see *(inference:
the reference code is omniscient only)*.

The search is a heuristic, not a maximiser: it never tries tau < start (for ALIE: the other sign,
mu - tau sigma) and, once tau = start + delta fails, only probes a shrinking grid above its best
point, so a narrow optimum between probes can be missed. A fixed attack can then do better on a
given round (seen for foe_opt against gm and nnm+cm, and rarely for alie_opt against nnm+cm).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from server.aggregators import get_aggregator

from .base import Attack, AttackContext, honest_mean, register
from .omniscient import coordinate_std

#: evaluations of the server's rule per round at most (each one aggregation of n rows)
MAX_EVALS = 10_000


def line_maximize(J: Callable[[float], float], evals: int = 20, start: float = 0.0, delta: float = 10.0,
                  ratio: float = 0.8) -> tuple[float, float]:
    """ByzFL's line search, exactly `evals` evaluations of J; returns (best x, J(best x)).

    Expansion: from x = start, try best + delta; if J improves accept it and double delta, otherwise
    multiply delta by `ratio` and stop. Contraction: while evaluations remain, try best + delta,
    accept it if J improves, and multiply delta by `ratio` every time.
    """
    best_x = float(start)
    best_y = J(best_x)
    remaining = evals - 1
    while remaining > 0:
        x = best_x + delta
        y = J(x)
        remaining -= 1
        if y > best_y:
            best_x, best_y, delta = x, y, delta * 2
        else:
            delta *= ratio
            break
    while remaining > 0:
        x = best_x + delta
        y = J(x)
        remaining -= 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x, best_y


def rule_from(ctx: AttackContext):
    """A fresh instance of the server's configured rule (with its pre-aggregators) for n = ctx.n."""
    spec = dict(ctx.aggregator or {})
    if "name" not in spec:
        raise ValueError("white-box attacks need the server's rule in ctx.aggregator ({name, f, pre, ...})")
    name = spec.pop("name")
    spec.pop("f", None)
    pre = spec.pop("pre", None) or ()
    return get_aggregator(name, ctx.n, ctx.rule_f, pre=pre, **spec)


def aggregation_error(honest: Tensor, byz: Tensor, ctx: AttackContext,
                      reference: Tensor | None = None) -> float:
    """J = ||F(P(H u {f copies of byz})) - mean(H)|| with a fresh rule (the search objective)."""
    h = ctx.n - ctx.f
    if honest.shape[0] != h:  # colluders: the k rows given stand in for the h honest ones
        honest = honest[torch.arange(h, device=honest.device) % honest.shape[0]]
    reference = honest_mean(honest) if reference is None else reference
    x = torch.cat([honest, byz.unsqueeze(0).expand(ctx.f, -1)])
    return float((rule_from(ctx)(x) - reference).norm())


class LineSearchAttack(Attack):
    """Base of `alie_opt` / `foe_opt`: maximise J over tau >= start by `line_maximize`."""

    needs_honest = True

    def __init__(self, evals: int = 20, start: float = 0.0, delta: float = 10.0, ratio: float = 0.8,
                 **common):
        super().__init__(**common)
        if int(evals) != evals or not 1 <= evals <= MAX_EVALS:
            raise ValueError(f"attack.evals={evals} must be an integer in [1, {MAX_EVALS}]")
        if not 0.5 < ratio < 1.0:
            raise ValueError(f"attack.ratio={ratio} must lie in (0.5, 1)")
        if delta == 0:
            raise ValueError("attack.delta must be non-zero")
        self.evals, self.start, self.delta, self.ratio = int(evals), float(start), float(delta), float(ratio)
        self.tau: float | None = None
        self.objective: float | None = None
        self.tau_sum, self.rounds = 0.0, 0
        self.rule: str | None = None

    def vector(self, tau: float, mu: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not define vector()")

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        mu, sigma = honest_mean(honest), coordinate_std(honest)
        self.rule = ctx.aggregator.get("name")

        def J(tau: float) -> float:
            return aggregation_error(honest, self.vector(tau, mu, sigma), ctx, reference=mu)

        self.tau, self.objective = line_maximize(J, self.evals, self.start, self.delta, self.ratio)
        self.tau_sum += self.tau
        self.rounds += 1
        return self.vector(self.tau, mu, sigma)

    def resolved(self, ctx: AttackContext | None = None) -> dict[str, Any]:
        rule = self.rule or (ctx.aggregator.get("name") if ctx is not None else None)
        out = {**super().resolved(ctx), "rule": rule, "evals": self.evals, "start": self.start,
               "delta": self.delta, "ratio": self.ratio}
        if self.rounds:
            out.update(tau_last=self.tau, tau_mean=self.tau_sum / self.rounds, objective_last=self.objective)
        return out

    def state_dict(self) -> dict:
        return {"tau": self.tau, "objective": self.objective, "tau_sum": self.tau_sum, "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.tau, self.objective = state["tau"], state["objective"]
        self.tau_sum, self.rounds = float(state["tau_sum"]), int(state["rounds"])


@register("alie_opt")
class OptimalALIE(LineSearchAttack):
    """Optimal ALIE: x_byz = mu + tau* sigma, tau* from the line search (ByzFL; ALGORITHMS.md §5.5)."""

    def vector(self, tau: float, mu: Tensor, sigma: Tensor) -> Tensor:
        return mu + sigma * tau


@register("foe_opt")
class OptimalFoE(LineSearchAttack):
    """Optimal IPM / FoE: x_byz = -tau* mu, tau* from the line search (ByzFL; ALGORITHMS.md §5.5)."""

    def vector(self, tau: float, mu: Tensor, sigma: Tensor) -> Tensor:
        return mu * (-tau)
