"""Evaluation-only metric: the aggregation error ||Agg - mean(honest)|| (paper A, Definition 1).

It needs the roster, so it lives in `launch` and is handed to the server loop as an observer;
the aggregation path never calls it and the server package never reads the roster.
"""
from __future__ import annotations

import torch
from torch import Tensor


class OracleError:
    def __init__(self, byzantine: list[int], m: int):
        self.honest = torch.tensor([k - 1 for k in range(1, m + 1) if k not in set(byzantine)])

    def __call__(self, t: int, rows: Tensor, agg: Tensor) -> dict:
        mean = rows[self.honest.to(rows.device)].double().mean(0)
        return {"oracle_error": float(torch.linalg.vector_norm(agg.double() - mean)),
                "honest_mean_norm": float(torch.linalg.vector_norm(mean))}
