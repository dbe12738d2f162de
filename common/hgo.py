"""The HGO wire protocol: what both roles derive from a round's header (DESIGN.md "Round protocol: HGO").

The server draws one permutation seed per round and sends it in the header (slot H_SEED). From it both
roles rebuild, without sending any index:
  - the q selected workers (`selection`), and
  - the coordinate permutation C_k of paper B, Algorithm 1 line 3 (`permutation`).
A selected worker answers with a small fixed-size reply header (REPLY floats: claimed length b_i,
logical compute time, batch loss, compute seconds) followed by exactly `clamp_length(b_i)` values, the
partial derivatives g[C_k[:b_i]] in permutation order.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

HGO_ALGORITHMS = ("hgo", "sgd")
SEED_MAX = 1 << 24  # seeds travel in a float32 header slot, exact below 2^24

# reply header slots (worker -> server)
R_LEN, R_TIME, R_LOSS, R_COMPUTE = range(4)
REPLY = 4


def is_hgo(cfg) -> bool:
    return str(cfg["algorithm"]["name"]) in HGO_ALGORITHMS


def selection(seed: int, m: int, q: int) -> list[int]:
    """The q workers (indices 1..m, ascending) sampled in the round with this seed (Algorithm 1 line 4)."""
    g = torch.Generator().manual_seed(2 * int(seed))
    return sorted(int(k) + 1 for k in torch.randperm(m, generator=g)[:q])


def permutation(seed: int, d: int, device: torch.device | str = "cpu") -> Tensor:
    """C_k: a uniformly random permutation of the d coordinates (Algorithm 1 line 3)."""
    g = torch.Generator().manual_seed(2 * int(seed) + 1)
    return torch.randperm(d, generator=g).to(device)


def clamp_length(b: float, d: int) -> tuple[int, bool]:
    """The length that goes on the wire for a claimed b, and whether the claim was out of range.

    Lengths are integers in [0, d]; anything else (negative, above d, fractional, non-finite) is clamped
    (non-finite to 0) and flagged. Worker and server apply the same rule, so the framing always agrees.
    """
    b = float(b)
    if not math.isfinite(b):
        return 0, True
    out = min(max(math.floor(b), 0), d)
    return int(out), out != b


def clamp_lengths(raw: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Vectorised `clamp_length` over claimed lengths: (int64 lengths, bool out-of-range flags)."""
    raw = raw.to(torch.float64)
    finite = torch.isfinite(raw)
    b = torch.where(finite, raw, torch.zeros_like(raw)).floor().clamp(0, d)
    return b.to(torch.int64), ~finite | (b != raw)


def store_of_group():
    """The process group's c10d store under an `hgo` prefix (per restart attempt, like the group).

    Keys of the store transport: `latest` (the newest round), `w{t}` (header + w_t, set by the server),
    `b{t}/{k}` (worker k's reply header + values for round t)."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    return dist.PrefixStore("hgo", _get_default_store())


def parse_tau(tau) -> float:
    """tau as a float: a positive number, or inf (also spelled 'inf' / 'infinity' / '.inf')."""
    if isinstance(tau, str):
        s = tau.strip().lower().lstrip("+")
        if s in ("inf", "infinity", ".inf"):
            return math.inf
        tau = float(s)
    if isinstance(tau, bool):
        raise ValueError(f"hgo.tau={tau!r} must be a number or inf")
    return float(tau)


def task_labels(y: Tensor, binary) -> Tensor:
    """Labels of the task: the dataset's classes, or a binary task for `model.binary`.

    `even_odd`: 1 for odd digits; an integer k (or "k"): 1 for class k, 0 for the rest.
    """
    if binary is None or binary is False:
        return y
    if binary is True:
        raise ValueError("model.binary=true is ambiguous; use even_odd or a class index")
    if str(binary) == "even_odd":
        return (y % 2).to(torch.int64)
    try:
        k = int(binary)
    except (TypeError, ValueError):
        raise ValueError(f"model.binary={binary!r} must be even_odd or a class index") from None
    return (y == k).to(torch.int64)
