"""Intra-op threads for the chunked loops (sorting networks, float64 distances).

Those loops issue many small ops on cache-sized chunks. Each op with more than one thread opens an
OpenMP parallel region, and a region stalls until every thread of its team has run: when another
process holds a core (workers on the same machine, other jobs) each region waits for a time slice.
Measured on 2 shared CPU cores, bitonic median of 16 x 2M: 8.3-9.1 s with 2 threads, 0.12-0.35 s with
one; float64 Gram of 16 x 4M: 0.6-2.1 s with 2 threads, 0.17-0.5 s with one. On an idle machine two
threads are about 1.9x faster. Single large ops (mean, weighted sums) keep torch's setting.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

#: threads for the chunked loops on CPU; None keeps torch's global setting
CHUNK_THREADS: int | None = 1


@contextmanager
def chunk_threads(device: torch.device):
    """Run the enclosed chunked loop with CHUNK_THREADS intra-op threads (CPU only), then restore."""
    prev = torch.get_num_threads()
    if device.type != "cpu" or CHUNK_THREADS is None or prev <= CHUNK_THREADS:
        yield
        return
    torch.set_num_threads(CHUNK_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
