"""Sorting the n rows coordinate by coordinate: the shared kernel of CM, TM, MeaMed, Phocas, Bulyan.

NaN sorts last here (torch.sort semantics); rows that carry NaN are excluded by the server before
any rule runs, so this is only a last line of defence.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sorted_rows(x: Tensor) -> Tensor:
    """Return x sorted along dim 0 (each column ascending), same shape and dtype."""
    return torch.sort(x, dim=0).values
