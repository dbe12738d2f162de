"""The one place that names aggregation rules.

Each rule registers itself with its (n, f) precondition next to its code::

    @register("krum", requires=(lambda n, f: n >= 2 * f + 2, "n >= 2f + 2"), doc="Blanchard et al. 2017",
              robustness="(alpha, f)-Byzantine resilient for n > 2f + 2")
    class Krum(Rule): ...

`get_aggregator(name, n, f, pre=(...), **params)` builds a rule (optionally behind pre-aggregators),
checks the precondition, and returns a callable mapping an (r, d) tensor to a (d,) tensor.

Calling a rule (ALGORITHMS.md §1): the rows are whatever reached the server, r <= n of them, and the
caller may pass the effective f. Every rule works for the actual r with that f (its parameters, such
as Krum's neighbour count, are derived from r and clamped to what r rows allow). A rule never returns
a non-finite vector: when its output is not finite (NaN or inf reached it), the rows that are not
finite are dropped, f is lowered by their number, and the rule is evaluated again on the rest.
"""
from __future__ import annotations

import inspect
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
    robustness: str = ""  # what the source proves or claims, and under which condition


AGGREGATORS: dict[str, Spec] = {}
PRE_AGGREGATORS: dict[str, Spec] = {}


def register(name: str, requires: tuple[Callable[[int, int], bool], str] = (lambda n, f: n >= 1, "n >= 1"),
             doc: str = "", pre: bool = False, robustness: str = ""):
    """Class decorator: put a rule (or a pre-aggregator) in the registry with its precondition."""

    def wrap(cls):
        spec = Spec(name, cls, requires[0], requires[1], doc, pre, robustness)
        (PRE_AGGREGATORS if pre else AGGREGATORS)[name] = spec
        cls.spec = spec
        return cls

    return wrap


def check_precondition(spec: Spec, n: int, f: int, requires: Callable[[int, int], bool] | None = None,
                       condition: str | None = None) -> None:
    requires, condition = requires or spec.requires, condition or spec.condition
    kind = "pre-aggregator" if spec.pre else "aggregator"
    if n < 1 or f < 0:
        raise ValueError(f"{kind} '{spec.name}' needs n >= 1 and f >= 0: got n={n}, f={f}")
    if not requires(n, f):
        raise ValueError(f"{kind} '{spec.name}' needs {condition}: got n={n}, f={f}")


class Rule:
    """Base of every aggregation rule.

    `__call__(x, f=None)` takes the (r, d) rows that reached the server (r <= n when non-finite rows were
    excluded; the caller then passes the effective f) and returns the (d,) aggregate in x's dtype.
    Subclasses implement `aggregate(x, f)`; stateful rules also override `commit` (called once per
    round with the final output) and `state_dict` / `load_state_dict`.
    """

    spec: Spec
    #: passes over the (n, d) input one call needs (reported by `python -m launch.bench aggregators`)
    passes: str = "1"

    def __init__(self, n: int, f: int, **params: Any):
        self.n, self.f = n, f
        if params:
            raise ValueError(f"aggregator '{self.spec.name}' got unknown parameter(s) {sorted(params)}")

    def precondition(self) -> tuple[Callable[[int, int], bool], str]:
        """The (n, f) condition of this instance (a parameter may change it, e.g. Krum's neighbours)."""
        return self.spec.requires, self.spec.condition

    def check(self, n: int, f: int) -> None:
        check_precondition(self.spec, n, f, *self.precondition())

    def aggregate(self, x: Tensor, f: int) -> Tensor:  # pragma: no cover - every rule overrides it
        raise TypeError(f"{type(self).__name__} does not define aggregate()")

    def commit(self, out: Tensor) -> None:
        """Called once per call with the returned aggregate (stateful rules keep it)."""

    def __call__(self, x: Tensor, f: int | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"aggregator '{self.spec.name}' expects an (n, d) matrix with n >= 1, "
                             f"got {tuple(x.shape)}")
        f = self.f if f is None else max(0, int(f))
        out = self.aggregate(x, f)
        if not bool(torch.isfinite(out).all()):
            out = self._finite_fallback(x, f, out)
        self.commit(out)
        return out

    def _finite_fallback(self, x: Tensor, f: int, out: Tensor) -> Tensor:
        """Drop non-finite rows (f lowered by their number) and aggregate again; clamp as a last resort."""
        keep = finite_rows(x)
        dropped = int((~keep).sum())
        if dropped == x.shape[0]:
            return torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        if dropped:
            out = self.aggregate(x[keep], max(0, f - dropped))
        if not bool(torch.isfinite(out).all()):  # finite rows whose combination overflows (e.g. 3e38 + 3e38)
            big = torch.finfo(out.dtype).max
            out = torch.nan_to_num(out, nan=0.0, posinf=big, neginf=-big)
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.spec.name}(n={self.n}, f={self.f})"


class PreAggregator(Rule):
    """Base of pre-aggregators (NNM, bucketing, clip, ARC): `__call__(x, f)` returns rows, not a vector."""

    def out_rows(self, n: int) -> int:
        """How many rows come out for n rows in (bucketing shrinks them)."""
        return n

    def transform(self, x: Tensor, f: int) -> Tensor:  # pragma: no cover - every pre-aggregator overrides it
        raise TypeError(f"{type(self).__name__} does not define transform()")

    def __call__(self, x: Tensor, f: int | None = None) -> Tensor:
        return self.transform(x, self.f if f is None else f)


class Pipeline(Rule):
    """Pre-aggregators applied in order, then the rule; `f` is passed through unchanged (ALGORITHMS.md §4)."""

    def __init__(self, pres: Sequence[PreAggregator], rule: Rule):
        self.pres, self.rule = list(pres), rule
        self.n, self.f = pres[0].n if pres else rule.n, rule.f
        self.spec = rule.spec

    def check(self, n: int, f: int) -> None:
        for p in self.pres:
            p.check(n, f)
            n = p.out_rows(n)
        self.rule.check(n, f)

    def aggregate(self, x: Tensor, f: int) -> Tensor:
        for p in self.pres:
            x = p.transform(x, f)
        return self.rule.aggregate(x, f)

    def commit(self, out: Tensor) -> None:
        self.rule.commit(out)

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


def _build(spec: Spec, n: int, f: int, params: dict) -> Rule:
    """Instantiate spec.cls, turning unknown keyword parameters into one clear ValueError."""
    sig = inspect.signature(spec.cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    known = [k for k in sig.parameters if k not in ("self", "n", "f")]
    unknown = sorted(set(params) - set(known))
    if unknown and not takes_any:
        kind = "pre-aggregator" if spec.pre else "aggregator"
        raise ValueError(f"{kind} '{spec.name}' got unknown parameter(s) {unknown}; it takes {known}")
    return spec.cls(n, f, **params)


def get_aggregator(name: str, n: int, f: int, pre: Sequence[str | dict] = (), **params: Any) -> Rule:
    """Build rule `name` for n inputs and f declared Byzantine, behind the pre-aggregators `pre`.

    Raises ValueError naming the rule, n, f and the condition when a precondition fails, and naming
    the unknown name otherwise. `pre` items are names or mappings `{"name": ..., **params}`.
    """
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator.name '{name}' is unknown; choose one of {sorted(AGGREGATORS)}")
    pres, n_in = [], n
    for item in pre or ():
        pname, pparams = _split(item)
        if pname not in PRE_AGGREGATORS:
            raise ValueError(f"aggregator.pre '{pname}' is unknown; choose from {sorted(PRE_AGGREGATORS)}")
        p = _build(PRE_AGGREGATORS[pname], n_in, f, pparams)
        p.check(n_in, f)
        pres.append(p)
        n_in = p.out_rows(n_in)
    rule = _build(AGGREGATORS[name], n_in, f, params)
    try:
        rule.check(n_in, f)
    except ValueError as e:
        if n_in == n:
            raise
        raise ValueError(f"{e} ({n_in} rows reach it after the pre-aggregators {list(pre)} on n={n})") \
            from None
    return Pipeline(pres, rule) if pres else rule


def finite_rows(x: Tensor) -> Tensor:
    """Boolean mask of the rows whose entries are all finite."""
    return torch.isfinite(x).all(dim=1)
