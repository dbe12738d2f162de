"""Quorum block and segment-wise aggregation of HGO (paper B, Algorithm 1 lines 8-12; ALGORITHMS.md §10).

Worker i sent the values of the first b_i coordinates of the round's permutation C_k. With the lengths
sorted in decreasing order, L_1 >= L_2 >= ... >= L_q:
  - the quorum length is b_v = L_v, the v-th largest (line 9); the block is C_k[:b_v] (line 10);
  - position j < b_v of the block was sent by exactly the workers with L_i > j (line 11). Because the
    blocks are prefixes of one permutation, positions fall into at most q segments [L_{r+1}, L_r) whose
    sender set is fixed: the r workers with the longest blocks (r >= v inside the block);
  - each segment is aggregated as one (r x segment length) matrix by the rule (line 12): one call per
    segment, vectorised over its coordinates. Coordinate-wise rules (cm, tm, meamed, mean) give exactly
    the per-coordinate result; vector rules (krum, aksel, ...) act on each segment as a vector.

A worker that claims b_i = d (a Byzantine length lie) is one of the lengths: b_v stays at most the
(v - f)-th largest honest length whenever v > f, since at most f of the v largest can be lies.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def quorum_length(lengths: Sequence[int] | Tensor, v: int) -> int:
    """b_v: the v-th largest length (0 when fewer than v workers answered)."""
    ls = sorted((int(b) for b in lengths), reverse=True)
    if v < 1:
        raise ValueError(f"the quorum v={v} must be >= 1")
    return ls[v - 1] if len(ls) >= v else 0


def segments(lengths_desc: Sequence[int], v: int) -> list[tuple[int, int, int]]:
    """(r, lo, hi) for every non-empty segment [lo, hi) of the quorum block, sent by the r longest rows.

    `lengths_desc` must be sorted in decreasing order. Segments come in increasing r (from the end of
    the block towards its start) and tile [0, b_v) exactly.
    """
    ls = [int(b) for b in lengths_desc]
    if any(a < b for a, b in zip(ls, ls[1:])):
        raise ValueError("segments() needs the lengths in decreasing order")
    q = len(ls)
    out = []
    for r in range(max(v, 1), q + 1):
        lo, hi = (ls[r] if r < q else 0), ls[r - 1]
        if hi > lo:
            out.append((r, lo, hi))
    return out


def aggregate_blocks(values: Tensor, lengths: Sequence[int] | Tensor, v: int,
                     rule: Callable[[Tensor, int], Tensor], f: int) -> Tensor:
    """The aggregate over the quorum block: a (b_v,) tensor in permutation order (Algorithm 1 line 12).

    values: (q, >= max length) matrix; row i holds worker i's values in its first lengths[i] entries
            (what lies beyond is ignored). Rows already in decreasing length order are used as they are.
    rule:   called as rule(x, f) on each segment's (r, hi - lo) matrix.
    """
    ls = torch.as_tensor([int(b) for b in lengths], dtype=torch.int64)
    if ls.numel() != values.shape[0]:
        raise ValueError(f"{ls.numel()} lengths for {values.shape[0]} rows")
    order = torch.argsort(ls, descending=True, stable=True)
    if not bool((order == torch.arange(len(ls))).all()):
        values, ls = values[order], ls[order]
    ls_desc = ls.tolist()
    b_v = quorum_length(ls_desc, v)
    out = values.new_zeros(b_v)
    for r, lo, hi in segments(ls_desc, v):
        out[lo:hi] = rule(values[:r, lo:hi], f)
    return out

