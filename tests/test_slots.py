"""Compute slots (worker/slots.py): how many workers of a host may compute at once, the token pipe's
hold and return, and the set-up over a real Gloo group of 1 server + 3 workers with 2 slots."""
from __future__ import annotations

import fcntl
import os
import struct
import tempfile
import termios
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from common.dist import Topology
from tests.helpers import run_ranks
from worker.slots import MIN_STEP_S, ComputeSlots, open_slots, slot_count


def _tokens(fd: int) -> int:
    """Bytes waiting in the pipe behind `fd`, without taking any."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def test_slot_count_one_per_core_when_workers_outnumber_cores():
    assert slot_count("auto", local_workers=8, usable=2, machine=2) == 2
    assert slot_count("auto", local_workers=2, usable=2, machine=2) == 0  # a core each: nobody would wait
    assert slot_count("auto", local_workers=2, usable=16, machine=16) == 0
    assert slot_count("auto", local_workers=8, usable=1, machine=16) == 0  # bound to a core by a launcher
    assert slot_count(3, local_workers=8, usable=2, machine=2) == 3
    assert slot_count(3, local_workers=8, usable=1, machine=16) == 3  # asked for: taken as given
    assert slot_count(8, local_workers=8, usable=2, machine=2) == 0
    assert slot_count(0, local_workers=8, usable=2, machine=2) == 0


def test_a_step_holds_a_token_only_when_the_last_one_was_long_and_always_returns_it(tmp_path):
    path = str(tmp_path / "tokens")
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b"s")
    slots = ComputeSlots(fd, 1)
    with slots.step():  # the first step's cost is unknown: no token
        assert _tokens(fd) == 1
        busy = time.thread_time() + 2 * MIN_STEP_S
        while time.thread_time() < busy:
            pass
    assert slots.last_step_s >= MIN_STEP_S
    with slots.step():
        assert _tokens(fd) == 0  # held
    assert _tokens(fd) == 1
    slots.last_step_s = 1.0
    with pytest.raises(ValueError):
        with slots.step():
            raise ValueError("a failing step")
    assert _tokens(fd) == 1  # returned all the same
    slots.last_step_s = MIN_STEP_S / 10  # a short step: no token, so no system call
    with slots.step():
        assert _tokens(fd) == 1
    slots.close()
    off = ComputeSlots()  # slots off: the block runs and is measured, no token is asked for
    off.last_step_s = 1.0
    with off.step():
        pass
    assert off.fd is None and off.last_step_s < 1.0


WORLD, STEPS, STEP_S = 4, 4, 0.05


def _rank_main(rank: int, store_path: str, requested, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        workers = list(range(1, WORLD))
        group = dist.new_group(workers)
        if rank == 0:
            return
        topo = Topology(rank, WORLD, 0, workers, torch.device("cpu"), "gloo", dist.group.WORLD, group)
        slots = open_slots(topo, requested, timedelta(seconds=60))
        spans = []
        for _ in range(STEPS):
            with slots.step():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < STEP_S:  # a step: CPU work, longer than MIN_STEP_S
                    pass
                spans.append((t0, time.perf_counter()))
        queue.put((rank, slots.count, spans[1:]))  # the first step took no token
        slots.close()
    finally:
        dist.destroy_process_group()


def _run(tmp_path, requested) -> dict:
    items = run_ranks(_rank_main, WORLD, str(tmp_path / "store"), requested, messages=WORLD - 1)
    return {rank: (count, spans) for rank, count, spans in items}


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.e2e
def test_two_slots_let_at_most_two_of_three_workers_compute_at_once(tmp_path):
    before = set(os.listdir(tempfile.gettempdir()))
    got = _run(tmp_path, 2)
    assert sorted(got) == [1, 2, 3] and all(count == 2 for count, _ in got.values())
    spans = [s for _, ss in got.values() for s in ss]
    assert len(spans) == 3 * (STEPS - 1)
    assert _most_at_once(spans) <= 2
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("byz-slots-")}
    assert not left  # the maker removed the pipe's name once every worker had it open


def _maker_alone(rank: int, store_path: str, queue) -> None:
    """A 1-process group plays the workers of a host with 3 workers and 2 slots in turn (their barriers
    are the group of one): the maker (rank 0), then, after a maker that could not make the pipe, one of
    the others (rank 1)."""
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=0, world_size=1)
    try:
        def as_rank(rank: int) -> Topology:
            return Topology(rank, 4, 3, [0, 1, 2], torch.device("cpu"), "gloo", dist.group.WORLD, dist.group.WORLD)

        start = timedelta(seconds=60)
        slots = open_slots(as_rank(0), 2, start)
        made = (slots.count, _tokens(slots.fd))
        slots.close()

        def no_fifo(path, mode=0o600):
            raise PermissionError(13, "Permission denied", path)

        os.mkfifo = no_fifo
        failed = open_slots(as_rank(0), 2, start)
        store = dist.distributed_c10d._get_default_store()
        published = store.get("byz/slots/0").decode()
        other = open_slots(as_rank(1), 2, start)  # follows what the maker published
        queue.put((made, (failed.fd, failed.count), published, (other.fd, other.count)))
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_the_maker_fills_the_pipe_and_without_a_pipe_every_worker_computes_without_slots(tmp_path):
    [(made, failed, published, other)] = run_ranks(_maker_alone, 1, str(tmp_path / "store"), messages=1)
    assert made == (2, 2)  # two slots, both tokens in the pipe
    assert failed == (None, 0) and published == "0:"  # no pipe: count 0 published, no path
    assert other == (None, 0)  # the host's other workers follow it
