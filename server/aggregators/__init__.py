"""Robust aggregation rules and pre-aggregators behind one registry (DESIGN.md, "Library API")."""
from . import basic  # noqa: F401  (registers the rules)
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

__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "Pipeline", "PreAggregator", "Rule", "finite_rows", "get_aggregator", "register"]
