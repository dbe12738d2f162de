"""Robust aggregation rules and pre-aggregators behind one registry (DESIGN.md, "Library API").

Rules: mean, krum, multikrum, gm, cm, tm, meamed, phocas, cc, bulyan, aksel (ALGORITHMS.md §3).
Pre-aggregators: nnm, bucketing, clip, arc (§4).
Build one with `get_aggregator(name, n, f, pre=[...], **params)`.
"""
from . import aksel, basic, bulyan, cc, gm, krum, pre, trimmed  # noqa: F401  (registers the rules)
from .registry import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    Pipeline,
    PreAggregator,
    Rule,
    finite_rows,
    get_aggregator,
    register,
)

__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "Pipeline", "PreAggregator", "Rule", "finite_rows",
           "get_aggregator", "register"]
