"""The one place that names aggregation rules.

Each rule registers itself with its (n, f) precondition next to its code::

    @register("krum", requires=(lambda n, f: n >= 2 * f + 2, "n >= 2f + 2"), doc="Blanchard et al. 2017")
    class Krum(Rule): ...

`get_aggregator(name, n, f, pre=(...), **params)` builds a rule (optionally behind pre-aggregators),
checks the precondition, and returns a callable mapping an (r, d) tensor to a (d,) tensor.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type
    requires: Callable[[int, int], bool]
    condition: str
    doc: str
    pre: bool  # a pre-aggregator (maps (n, d) -> (n', d)) rather than a rule


AGGREGATORS: dict[str, Spec] = {}
PRE_AGGREGATORS: dict[str, Spec] = {}


def register(name: str, requires: tuple[Callable[[int, int], bool], str] = (lambda n, f: n >= 1, "n >= 1"),
             doc: str = "", pre: bool = False):
    """Class decorator: put a rule (or a pre-aggregator) in the registry with its precondition."""

    def wrap(cls):
        spec = Spec(name, cls, requires[0], requires[1], doc, pre)
        (PRE_AGGREGATORS if pre else AGGREGATORS)[name] = spec
        cls.spec = spec
        return cls

    return wrap


def check_precondition(spec: Spec, n: int, f: int) -> None:
    if n < 1 or f < 0 or not spec.requires(n, f):
        raise ValueError(f"aggregator '{spec.name}' needs {spec.condition}: got n={n}, f={f}")


class Rule:
    """Base of every aggregation rule.

    `__call__(x, f=None)` takes the (r, d) rows that reached the server (r <= n when non-finite rows were
    excluded; the caller then passes the effective f) and returns the (d,) aggregate in x's dtype.
    Stateful rules override `state_dict` / `load_state_dict`.
    """

    spec: Spec

    def __init__(self, n: int, f: int, **params: Any):
        self.n, self.f = n, f
        if params:
            raise ValueError(f"aggregator '{self.spec.name}' got unknown parameter(s) {sorted(params)}")

    def check(self, n: int, f: int) -> None:
        check_precondition(self.spec, n, f)

    def aggregate(self, x: Tensor, f: int) -> Tensor:  # pragma: no cover - every rule overrides it
        raise TypeError(f"{type(self).__name__} does not define aggregate()")

    def __call__(self, x: Tensor, f: int | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"aggregator '{self.spec.name}' expects an (n, d) matrix with n >= 1, got {tuple(x.shape)}")
        return self.aggregate(x, self.f if f is None else f)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.spec.name}(n={self.n}, f={self.f})"


class Pipeline(Rule):
    """Pre-aggregators applied in order, then the rule; `f` is passed through unchanged."""

    def __init__(self, pres: Sequence[Rule], rule: Rule):
        self.pres, self.rule = list(pres), rule
        self.n, self.f = rule.n, rule.f
        self.spec = rule.spec

    def check(self, n: int, f: int) -> None:
        for p in self.pres:
            p.check(n, f)
        self.rule.check(n, f)

    def __call__(self, x: Tensor, f: int | None = None) -> Tensor:
        f = self.f if f is None else f
        for p in self.pres:
            x = p(x, f)
        return self.rule(x, f)

    def state_dict(self) -> dict:
        return {"rule": self.rule.state_dict(), "pre": [p.state_dict() for p in self.pres]}

    def load_state_dict(self, state: dict) -> None:
        self.rule.load_state_dict(state.get("rule", {}))
        for p, s in zip(self.pres, state.get("pre", [])):
            p.load_state_dict(s)

    def __repr__(self) -> str:
        return " -> ".join([repr(p) for p in self.pres] + [repr(self.rule)])


def _split(item: str | dict) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    item = dict(item)
    if "name" not in item:
        raise ValueError(f"aggregator.pre entries need a 'name': got {item}")
    return item.pop("name"), item


def get_aggregator(name: str, n: int, f: int, pre: Sequence[str | dict] = (), **params: Any) -> Rule:
    """Build rule `name` for n inputs and f declared Byzantine, behind the pre-aggregators `pre`.

    Raises ValueError naming the rule, n, f and the condition when a precondition fails, and naming
    the unknown name otherwise.
    """
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator.name '{name}' is unknown; choose one of {sorted(AGGREGATORS)}")
    pres, n_in = [], n
    for item in pre:
        pname, pparams = _split(item)
        if pname not in PRE_AGGREGATORS:
            raise ValueError(f"aggregator.pre '{pname}' is unknown; choose from {sorted(PRE_AGGREGATORS)}")
        p = PRE_AGGREGATORS[pname].cls(n_in, f, **pparams)
        p.check(n_in, f)
        pres.append(p)
        n_in = p.out_rows(n_in)
    rule = AGGREGATORS[name].cls(n_in, f, **params)
    rule.check(n_in, f)
    return Pipeline(pres, rule) if pres else rule


def finite_rows(x: Tensor) -> Tensor:
    """Boolean mask of the rows whose entries are all finite."""
    return torch.isfinite(x).all(dim=1)


class PreAggregator(Rule):
    """Base of pre-aggregators (NNM, bucketing, clipping, ARC): `__call__(x, f)` returns rows, not a vector."""

    def out_rows(self, n: int) -> int:
        """How many rows come out for n rows in (bucketing shrinks them)."""
        return n

    def transform(self, x: Tensor, f: int) -> Tensor:  # pragma: no cover - every pre-aggregator overrides it
        raise TypeError(f"{type(self).__name__} does not define transform()")

    def __call__(self, x: Tensor, f: int | None = None) -> Tensor:
        return self.transform(x, self.f if f is None else f)
