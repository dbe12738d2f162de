"""Distances between the n rows (ALGORITHMS.md §3.2, "Engineering notes").

The inputs are float32. Pairwise distances come from the Gram form `||x_i||^2 + ||x_j||^2 - 2<x_i, x_j>`,
whose products are accumulated in float64, column chunk by column chunk, on rows translated per chunk
(`centred_gram`), so that (a) rows as large as 1e30 (or float32's max) do not overflow: their squares
reach 1e77 at most, and (b) close pairs are not lost to cancellation. A non-finite row yields non-finite
products only in its own row and column; the distances read them as +inf ("infinitely far"), as
AggregaThor does. Distances to one point (`sq_distances_to`) subtract first and need no float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .threads import chunk_threads

#: elements of one float64 chunk on CPU (fits in cache); on GPU chunks are large (few launches)
CPU_CHUNK, GPU_CHUNK = 2**18, 2**26


def column_chunks(x: Tensor, elements: int | None = None):
    """Column slices of x with about `elements` entries each."""
    n, d = x.shape
    elements = elements or (CPU_CHUNK if x.device.type == "cpu" else GPU_CHUNK)
    step = max(1024, elements // max(1, n))
    for j in range(0, d, step):
        yield slice(j, min(d, j + step))


def centred_gram(x: Tensor) -> tuple[Tensor, Tensor]:
    """(G, sq): G the (n, n) float64 Gram matrix of the rows after a per-chunk translation, sq the true
    squared norms ||x_i||^2 as (n,) float64; one pass over x.

    Distances, and anything invariant under translation (||sum_j w_j x_j - x_i|| with sum_j w_j = 1),
    read the same from G as from x x^T. In each column chunk the rows are moved by that chunk of the
    finite row of smallest norm there (the centre c): for rows close to each other this removes their
    common part before the products, so no precision is lost to cancellation; and as c is the shortest
    row, no translated row is more than twice as long as before, whatever an adversary sends. The centre
    rides along as an extra row of the product, which gives the true norms
    ||x_i||^2 = ||y_i||^2 + 2 <y_i, c> + ||c||^2 at no extra pass.
    """
    n = x.shape[0]
    acc = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=x.device)
    buf = None
    with chunk_threads(x.device):
        for cols in column_chunks(x):
            xc = x[:, cols]
            norms = torch.linalg.vector_norm(xc, dim=1)  # float32 is enough to choose the centre
            inf = torch.full_like(norms, float("inf"))
            centre = int(torch.where(torch.isfinite(norms), norms, inf).argmin())
            if buf is None:
                buf = torch.empty(n + 1, xc.shape[1], dtype=torch.float64, device=x.device)
            b = buf[:, :xc.shape[1]]
            b[:n].copy_(xc)
            b[n].copy_(xc[centre])
            b[:n] -= b[n]
            acc.addmm_(b, b.T)
    g = acc[:n, :n].clone()
    sq = torch.diagonal(g) + 2.0 * acc[:n, n] + acc[n, n]
    return g, sq


def sq_distances_from_gram(g: Tensor) -> Tensor:
    """Pairwise squared distances (n, n) float64 from a Gram matrix: >= 0, non-finite -> +inf, diagonal 0."""
    sq = torch.diagonal(g)
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_(min=0.0)
    dist = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, float("inf")))
    dist.fill_diagonal_(0.0)
    return dist


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """||x_i - x_j||^2 for all pairs, (n, n) float64 (non-finite -> +inf, diagonal 0)."""
    return sq_distances_from_gram(centred_gram(x)[0])


def sq_distances_to(x: Tensor, z: Tensor | None = None) -> Tensor:
    """||x_i - z||^2 for every row, (n,) float64; z = None means 0. Non-finite rows give +inf.

    Computed directly (the difference first, then a sum of squares: no cancellation), in float32 on
    cache-sized chunks (relative error ~1e-7, about as fast as `mean`); rows whose float32 sum
    overflows (entries beyond ~1e19) are recomputed in float64.
    """
    n = x.shape[0]
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    buf = None  # one difference buffer per call, reused by every chunk
    with chunk_threads(x.device):
        for cols in column_chunks(x):
            if z is None:
                diff = x[:, cols]
            else:
                w = cols.stop - cols.start
                if buf is None:
                    buf = torch.empty(n * w, dtype=x.dtype, device=x.device)
                diff = torch.sub(x[:, cols], z[cols], out=buf[:n * w].view(n, w))
            out += torch.linalg.vector_norm(diff, dim=1).to(torch.float64).square()
        redo = ~torch.isfinite(out)
        if bool(redo.any()):
            rows = redo.nonzero().squeeze(1)
            out[rows] = 0.0
            for cols in column_chunks(x):
                diff = x[rows, cols].to(torch.float64)
                if z is not None:
                    diff -= z[cols].to(torch.float64)
                out[rows] += torch.linalg.vector_norm(diff, dim=1).square()
    return torch.where(torch.isnan(out), torch.full_like(out, float("inf")), out)


def weighted_rows(x: Tensor, w: Tensor) -> Tensor:
    """sum_i w_i x_i in x's dtype (one pass). Rows with w_i = 0 still touch the sum: 0 * inf = NaN."""
    return w.to(x.dtype) @ x


def mean_of_rows(x: Tensor, idx: Tensor) -> Tensor:
    """Average of the rows `idx` of x (a copy when there is one row)."""
    if idx.numel() == 1:
        return x[int(idx)].clone()
    w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    w[idx] = 1.0 / idx.numel()
    return weighted_rows(x, w)
