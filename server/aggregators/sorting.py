"""Sorting the n rows coordinate by coordinate: the shared kernel of CM, TM, MeaMed, Phocas, Bulyan, AKSEL.

A coordinate-wise rule needs, for every column of an (n, d) matrix, its n values in order. A general
sort along dim 0 (`torch.sort(x, 0)`) pays a per-column overhead that dominates for small n. On CPU we
instead run a *sorting network* on cache-sized column chunks: every comparator is one
`torch.minimum` / `torch.maximum` over whole rows of the chunk, so the work is a fixed sequence of
vectorised elementwise ops and the chunk stays in cache while it is sorted (DESIGN.md, "Measured
pointers for speed"). Two networks are used, whichever needs fewer comparator rows for n:

* odd-even transposition (n rounds of neighbour compare-exchanges, about n(n-1)/2 comparators);
* bitonic (Batcher 1968) on n padded with +inf rows to the next power of two P,
  (P/4) log2 P (log2 P + 1) comparators in log2 P (log2 P + 1)/2 layers of two ops each.

Measured on 2 CPU cores (1M columns, 2^18-element chunks): bitonic 10 / 27 / 72 / 188 ms for
n = 8 / 16 / 32 / 64, transposition 14 / 41 / 152 / 549 ms, torch.sort 130 / 320 / 985 / 2180 ms.

For large n, and on GPU, `torch.sort` is used instead.

NaN does not order: a network spreads it to its neighbours in the column, torch.sort puts it last.
Rows carrying NaN are excluded by the server before any rule runs, and every rule falls back to
dropping non-finite rows when its output is not finite (registry.Rule.__call__), so here NaN only
has to not crash.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .threads import chunk_threads

#: Beyond this many rows torch.sort is used (the networks were measured faster up to n = 64).
NETWORK_MAX_N = 64
#: Elements (rows x columns) of one chunk buffer; two ping-pong buffers of this size stay in cache.
CHUNK_ELEMENTS = {"transposition": 2**17, "bitonic": 2**17, "sort": 2**20}
#: torch.sort on GPU: large chunks (few launches) that bound the values + int64 indices it allocates
GPU_SORT_ELEMENTS = 2**26


def _transposition_cost(n: int) -> int:
    return (n // 2) * ((n + 1) // 2) + ((n - 1) // 2) * (n // 2)  # comparators: even + odd rounds


def _bitonic_cost(n: int) -> int:  # comparators; one costs about what a transposition one does
    p = 1 << max(0, (n - 1).bit_length())
    lg = p.bit_length() - 1
    return (p // 2) * lg * (lg + 1) // 2


def network_kind(n: int) -> str:
    """Which network sorts n rows (or "sort" for torch.sort)."""
    if n > NETWORK_MAX_N:
        return "sort"
    return "bitonic" if _bitonic_cost(n) < _transposition_cost(n) else "transposition"


def _transposition(src: Tensor, dst: Tensor) -> Tensor:
    """Odd-even transposition network on the rows of src (clobbers both buffers, returns the sorted one)."""
    n = src.shape[0]
    for r in range(n):
        s = r % 2
        k = (n - s) // 2
        if k == 0:
            continue
        lo, hi = src[s:s + 2 * k:2], src[s + 1:s + 2 * k:2]
        torch.minimum(lo, hi, out=dst[s:s + 2 * k:2])
        torch.maximum(lo, hi, out=dst[s + 1:s + 2 * k:2])
        if s == 1:
            dst[0].copy_(src[0])
        if s + 2 * k < n:
            dst[s + 2 * k:].copy_(src[s + 2 * k:])
        src, dst = dst, src
    return src


def _bitonic(src: Tensor, dst: Tensor) -> Tensor:
    """Bitonic network on the P = 2^k rows of src (clobbers both buffers, returns the sorted one).

    Layer (k, j) compares rows i and i + j inside blocks of 2j rows; blocks of k rows alternate between
    ascending and descending. Both directions are one `torch.minimum` and one `torch.maximum` over all
    P/2 pairs: the output views place the minimum in the upper row of ascending blocks and in the lower
    row of descending ones, which is a plain strided view (stride k +- j along the direction axis).
    """
    p, c = src.shape
    rs = src.stride(0)
    assert dst.stride(0) == rs and src.stride(1) == 1 and dst.stride(1) == 1

    def view(t: Tensor, k: int, j: int, offset: int, dir_stride: int) -> Tensor:
        blocks = max(1, p // (2 * k))
        dirs = 1 if k == p else 2
        return t.as_strided((blocks, dirs, k // (2 * j), j, c), (2 * k * rs, dir_stride, 2 * j * rs, rs, 1),
                            t.storage_offset() + offset)

    k = 2
    while k <= p:
        j = k // 2
        while j >= 1:
            a, b = view(src, k, j, 0, k * rs), view(src, k, j, j * rs, k * rs)
            torch.minimum(a, b, out=view(dst, k, j, 0, (k + j) * rs))
            torch.maximum(a, b, out=view(dst, k, j, j * rs, (k - j) * rs))
            src, dst = dst, src
            j //= 2
        k *= 2
    return src


def sorted_chunks(x: Tensor, chunk: int | None = None, kind: str | None = None,
                  rows: Tensor | None = None) -> Iterator[tuple[slice, Tensor]]:
    """Yield `(cols, s)` where s is `x[rows][:, cols]` sorted along dim 0 (each column ascending).

    The chunks cover the d columns in order. `s` lives in a buffer that is reused by the next chunk:
    consume it before advancing. `kind` forces "transposition", "bitonic" or "sort"; `rows` (indices)
    restricts the sort to those rows without copying them first.
    """
    d = x.shape[1]
    n = x.shape[0] if rows is None else rows.numel()

    def block(cols: slice) -> Tensor:
        return x[:, cols] if rows is None else x[:, cols].index_select(0, rows)

    kind = kind or ("sort" if x.device.type != "cpu" else network_kind(n))
    with chunk_threads(x.device):
        yield from _sorted_chunks(x, block, n, d, chunk, kind)


def _sorted_chunks(x: Tensor, block, n: int, d: int, chunk: int | None, kind: str):
    if kind == "sort":
        per_chunk = CHUNK_ELEMENTS[kind] if x.device.type == "cpu" else GPU_SORT_ELEMENTS
        step = chunk or max(1, per_chunk // n)
        for j in range(0, d, step):
            cols = slice(j, min(d, j + step))
            yield cols, torch.sort(block(cols), dim=0).values
        return
    p = n if kind == "transposition" else 1 << max(0, (n - 1).bit_length())  # bitonic: padded to 2^k
    step = chunk or max(1024, CHUNK_ELEMENTS[kind] // p)
    buf = torch.empty(2, p, min(step, d), dtype=x.dtype, device=x.device)
    for j in range(0, d, step):
        cols = slice(j, min(d, j + step))
        c = cols.stop - cols.start
        src, dst = buf[0, :, :c], buf[1, :, :c]
        if p > n:  # padding rows sort last (reset: the network may have moved values there)
            src[n:] = float("inf")
        src[:n].copy_(block(cols))
        s = _transposition(src, dst) if kind == "transposition" else _bitonic(src, dst)
        yield cols, s[:n]


def sorted_rows(x: Tensor, kind: str | None = None) -> Tensor:
    """Return x sorted along dim 0 (each column ascending), same shape and dtype (a new tensor)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for cols, s in sorted_chunks(x, kind=kind):
        out[:, cols] = s
    return out


def columnwise(x: Tensor, fn, rows: Tensor | None = None, group: int | None = None) -> Tensor:
    """`out[cols] = fn(s, cols)` for every sorted chunk s of x (or of its `rows`): one pass over x.

    `group` (elements): collect consecutive sorted chunks into blocks of about that size before calling
    fn, for an fn of many small ops (fewer, larger calls; the block still fits in the last-level cache).
    """
    d = x.shape[1]
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    n = x.shape[0] if rows is None else rows.numel()
    width = min(d, max(1, group // max(1, n))) if group and x.device.type == "cpu" else 0
    if width == 0:
        with chunk_threads(x.device):
            for cols, s in sorted_chunks(x, rows=rows):
                out[cols] = fn(s, cols)
        return out
    block = torch.empty(n, width, dtype=x.dtype, device=x.device)
    start = filled = 0
    with chunk_threads(x.device):
        for cols, s in sorted_chunks(x, rows=rows):
            c = cols.stop - cols.start
            if filled + c > width:
                out[start:start + filled] = fn(block[:, :filled], slice(start, start + filled))
                start, filled = cols.start, 0
            block[:, filled:filled + c] = s
            filled += c
        if filled:
            out[start:start + filled] = fn(block[:, :filled], slice(start, start + filled))
    return out
