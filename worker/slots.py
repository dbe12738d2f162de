"""Compute slots: at most N workers of one host run their step at once (a pipe of N tokens, the way
make's jobserver shares its jobs among processes).

When a host runs more single-threaded workers than it has cores, the kernel time-slices their steps: a
step is cut into pieces, and each piece resumes on caches that the other steps have refilled. With
slots, a worker reads one token from the pipe before its step (gradient and momentum) and writes it
back after, so N steps run whole and the other workers wait, asleep, about in the order they asked
(Linux wakes one reader of a pipe at a time, the longest waiting first; a worker that finds a token
free takes it at once). Only the order in which the workers
compute changes, never what they compute. No communication happens while a token is held (the round's
messages and the attacks' knowledge exchange come after the step), so a held token is always returned.

A step takes a token only when the worker's previous step took at least MIN_STEP_S of its CPU time (so
the first step takes none): a time slice does not cut a shorter step, and the token's two system calls
and wake-ups would be pure cost (docs/PERFORMANCE.md, `python -m launch.bench slots`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist

from common.dist import Topology

log = logging.getLogger("byz")
TOKEN = b"s"
MIN_STEP_S = 1e-3  # CPU seconds of the previous step from which the next one takes a token
STORE_KEY = "byz/slots/{host}"
PIPE = "tokens"  # the FIFO's name in its temporary folder


def slot_count(requested: str | int, local_workers: int, usable: int, machine: int) -> int:
    """How many of this host's `local_workers` may compute at once; 0 turns slots off. `auto`: one per
    core when the workers outnumber the cores, counted only when this process may run on every core of
    the machine (`usable == machine`): ranks that a launcher bound to cores are placed already, and one
    bound to a single core would otherwise make the whole host compute one step at a time. A count at or
    above the number of workers would never make one wait, so it is off too."""
    n = (usable if usable == machine else 0) if requested == "auto" else int(requested)
    return n if 0 < n < local_workers else 0


class ComputeSlots:
    """`with slots.step(): ...` runs the block holding a token (when slots are on and the previous step
    took at least MIN_STEP_S of this thread's CPU time)."""

    def __init__(self, fd: int | None = None, count: int = 0):
        self.fd, self.count = fd, count
        self.last_step_s = 0.0  # the first step runs without a token: its cost is not known yet

    @contextmanager
    def step(self):
        held = self.fd is not None and self.last_step_s >= MIN_STEP_S
        if held:
            os.read(self.fd, 1)  # blocks until a token is free
        c0 = time.thread_time()
        try:
            yield
        finally:
            self.last_step_s = time.thread_time() - c0
            if held:
                os.write(self.fd, TOKEN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _make_pipe(count: int) -> tuple[int | None, str | None]:
    """A FIFO PIPE in a fresh temporary folder holding `count` tokens, opened read-write (such an open
    never blocks and its reads never see end-of-file): (fd, folder), or (None, folder) when it cannot be
    made (folder None when not even the folder could)."""
    fd, folder = None, None
    try:
        folder = tempfile.mkdtemp(prefix="byz-slots-")
        path = os.path.join(folder, PIPE)
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR)
        os.write(fd, TOKEN * count)
        return fd, folder
    except OSError as e:
        log.warning("perf.compute_slots: cannot make the token pipe (%s); workers compute without slots", e)
        if fd is not None:
            os.close(fd)
        return None, folder


def _remove(folder: str) -> None:
    for remove, name in ((os.unlink, os.path.join(folder, PIPE)), (os.rmdir, folder)):
        try:
            remove(name)
        except OSError:
            pass


def open_slots(topo: Topology, requested: str | int, timeout: timedelta) -> ComputeSlots:
    """Every ByzSGD worker of the run calls this at start-up with the same `requested` (perf.compute_slots).
    On Gloo the workers meet twice on the worker group, within the start-up `timeout` (slots are for
    workers on CPU cores; with NCCL every rank owns a GPU). The lowest worker rank of each host decides
    for the host: it makes the pipe, fills it with the host's count of tokens and publishes count and path
    in the group's store (count 0 and no path when slots are off there or the pipe cannot be made); the
    host's other workers follow what it published; then it removes the pipe's name (the open pipe lives
    on). A worker that cannot open the pipe computes without tokens, and says so."""
    if requested == 0 or topo.backend != "gloo":  # the same on every worker: all meet, or none
        return ComputeSlots()
    from torch.distributed.distributed_c10d import _get_default_store

    hosts = topo.hosts or [0] * topo.world  # unknown hosts: one host
    local = [r for r in topo.workers if hosts[r] == hosts[topo.rank]]
    maker, store, key = topo.rank == min(local), _get_default_store(), STORE_KEY.format(host=hosts[topo.rank])
    fd, folder, count = None, None, 0
    try:
        if maker:
            if topo.device.type == "cpu" and hasattr(os, "sched_getaffinity"):
                count = slot_count(requested, len(local), len(os.sched_getaffinity(0)), os.cpu_count() or 1)
            if count:
                fd, folder = _make_pipe(count)
                count = count if fd is not None else 0
            store.set(key, f"{count}:{os.path.join(folder, PIPE) if count else ''}")
        dist.monitored_barrier(group=topo.worker_group, timeout=timeout)
        if not maker:
            published, path = store.get(key).decode().split(":", 1)
            if int(published) and topo.device.type == "cpu":
                try:
                    fd, count = os.open(path, os.O_RDWR), int(published)
                except OSError as e:
                    log.warning("perf.compute_slots: cannot open the token pipe %s (%s); this worker computes "
                                "without slots", path, e)
        dist.monitored_barrier(group=topo.worker_group, timeout=timeout)
    finally:
        if folder is not None:
            _remove(folder)
    if fd is not None and maker:
        log.info("perf.compute_slots: %d of this host's %d workers compute at once", count, len(local))
    return ComputeSlots(fd, count)
