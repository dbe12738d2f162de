"""How a worker process asks the kernel to schedule it (Linux): every thread under SCHED_BATCH.

A waking SCHED_BATCH thread never preempts the thread that is running (the kernel skips wake-up
preemption for it); it waits for the running one's time slice to end. When several ranks share a core,
a worker woken by its message then no longer cuts the server's loop of m sends or another worker's step
into pieces (docs/PERFORMANCE.md, `python -m launch.bench sched`: 0.77 x the round time at m = 8 and
0.87 x at m = 64 on 2 cores, logistic regression). Only the order in which
runnable threads get the CPU changes, never what they compute. SCHED_BATCH needs no privilege.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("byz")


def run_as_batch(task_dir: str = "/proc/self/task") -> int:
    """Put every thread of this process (the main thread, Gloo's threads) under SCHED_BATCH; threads
    started later inherit it from the thread that starts them. Returns how many threads were set; where
    the platform has no SCHED_BATCH it logs why and returns 0."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not os.path.isdir(task_dir):
        log.info("perf.worker_batch: this platform has no SCHED_BATCH; the workers keep the default policy")
        return 0
    done = 0
    for tid in os.listdir(task_dir):
        try:
            os.sched_setscheduler(int(tid), batch, os.sched_param(0))
            done += 1
        except OSError as e:  # a thread that ended meanwhile, or a policy this process may not change
            log.debug("perf.worker_batch: thread %s keeps its policy (%s)", tid, e)
    return done
