"""Server update rules (paper A): ByzSGDm eq. (2) and ByzSGDnm Algorithm 1."""
from __future__ import annotations

import torch
from torch import Tensor


def apply_update(w: Tensor, a: Tensor, lr: float, normalize: bool, eps: float = 1e-12) -> float:
    """In place: ByzSGDm  w <- w - lr * a;  ByzSGDnm  w <- w - lr * a / max(||a||, eps).

    The norm is over the whole flattened vector (ALGORITHMS.md §2.2). Returns ||a||.
    """
    norm = float(torch.linalg.vector_norm(a, dtype=torch.float64))
    if normalize:
        w.add_(a, alpha=-lr / max(norm, eps))
    else:
        w.add_(a, alpha=-lr)
    return norm
