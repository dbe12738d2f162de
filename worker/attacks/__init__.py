"""Byzantine attacks, computed inside the Byzantine worker process (ALGORITHMS.md §5)."""
from . import simple  # noqa: F401  (registers the attacks)
from .base import ATTACKS, Attack, AttackContext, get_attack, register

__all__ = ["ATTACKS", "Attack", "AttackContext", "get_attack", "register"]
