"""Distances between the n rows, in float64 (ALGORITHMS.md §3.2, "Engineering notes").

The inputs are float32; the products are accumulated in float64, column chunk by column chunk, so that
(a) rows as large as 1e30 (or float32's max) do not overflow: their squares reach 1e77 at most, and
(b) the Gram form `||x_i||^2 + ||x_j||^2 - 2<x_i, x_j>` does not lose close pairs to cancellation.
A non-finite row yields non-finite products only in its own row and column of the Gram matrix; the
distances read them as +inf ("infinitely far"), as AggregaThor does.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: elements of one float64 chunk on CPU (fits in cache); on GPU chunks are large (few launches)
CPU_CHUNK, GPU_CHUNK = 2**19, 2**26


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
    for cols in column_chunks(x):
        xc = x[:, cols]
        norms = torch.linalg.vector_norm(xc, dim=1)  # float32 is enough to choose the centre
        centre = int(torch.where(torch.isfinite(norms), norms, torch.full_like(norms, float("inf"))).argmin())
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
    """||x_i - z||^2 for every row, (n,) float64, computed directly (no cancellation); z = None means 0."""
    n = x.shape[0]
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_chunks(x):
        diff = (x[:, cols] if z is None else x[:, cols] - z[cols]).to(torch.float64)
        out += torch.linalg.vector_norm(diff, dim=1).square()
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
