"""Per-phase wall-clock accounting: `with timer("aggregation"): ...` around each phase of a round."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    def __init__(self, cuda_sync: bool = False):
        self.total: dict[str, float] = defaultdict(float)
        self.last: dict[str, float] = {}
        self.cuda_sync = cuda_sync and torch.cuda.is_available()

    @contextmanager
    def __call__(self, phase: str):
        if self.cuda_sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda_sync:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.total[phase] += dt
            self.last[phase] = dt

    def add(self, phase: str, seconds: float) -> None:
        self.total[phase] += seconds
        self.last[phase] = seconds
