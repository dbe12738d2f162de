"""Byzantine attacks, computed inside the Byzantine worker process (ALGORITHMS.md §5).

Modules: `simple` (none, bitflip, gaussian, labelflip), `omniscient` (signflip, alie, foe/ipm),
`mimic`, `optimal` (alie_opt, foe_opt: white-box line search against the server's rule), and
`malformed` (nan, inf, large, zero). The threat model is written down in docs/THREAT_MODEL.md.
"""
from . import malformed, mimic, omniscient, optimal, simple  # noqa: F401  (register the attacks)
from .base import ATTACKS, Attack, AttackContext, get_attack, register
from .omniscient import alie_z
from .simple import flip_labels

__all__ = ["ATTACKS", "Attack", "AttackContext", "alie_z", "flip_labels", "get_attack", "register"]
