"""The round's two collectives (common.dist.Channel) over a real Gloo group, and the backend choice."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.dist import Channel, Topology, choose_backend, device_key
from tests.helpers import ROOT

WORLD, D = 4, 5


def _rank_main(rank: int, store_path: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        for server in (0, 1, WORLD - 1):  # the server at the first, a middle and the last global rank
            workers = [r for r in range(WORLD) if r != server]
            topo = Topology(rank, WORLD, server, workers, torch.device("cpu"), "gloo", dist.group.WORLD)
            buf = torch.full((D,), -1.0)
            if topo.is_server:
                buf.copy_(torch.arange(D) * 10.0 + server)
            chan = Channel(topo, buf, row_len=3)
            for t in range(2):
                chan.broadcast()
                if not topo.is_server:
                    k = topo.worker_index
                    chan.row.copy_(torch.tensor([k, t, buf.sum()]))
                rows = chan.gather()
                if topo.is_server:
                    queue.put((server, t, rows.tolist()))
                    buf.add_(1.0)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_broadcast_reaches_every_worker_and_gather_returns_rows_in_worker_order(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "store"), queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    got = {}
    for _ in range(6):
        server, t, rows = queue.get(timeout=120)
        got[server, t] = rows
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for server in (0, 1, WORLD - 1):
        for t in range(2):
            w_sum = float(sum(i * 10.0 + server + t for i in range(D)))  # what the server broadcast
            assert got[server, t] == [[k, t, w_sum] for k in range(1, WORLD)], (server, t)


def test_backend_choice_needs_one_distinct_gpu_per_rank():
    cpu = [-1, -1, -1]
    assert choose_backend("auto", cpu, nccl_available=True) == "gloo"
    assert choose_backend("auto", [7, 7, 7], nccl_available=True) == "gloo"  # three ranks share one GPU
    assert choose_backend("auto", [7, 8, 9], nccl_available=True) == "nccl"
    assert choose_backend("auto", [7, 8, 9], nccl_available=False) == "gloo"
    assert choose_backend("gloo", [7, 8, 9], nccl_available=True) == "gloo"
    with pytest.raises(RuntimeError, match="comm.backend=nccl needs one distinct GPU per rank"):
        choose_backend("nccl", [7, 7, 9], nccl_available=True)


def test_device_key_is_the_same_in_every_interpreter():
    """Python salts str hashes per process; a key built from hash() would make ranks sharing one GPU
    look like distinct GPUs under torchrun (fresh interpreters) and pick NCCL. Without a GPU the
    host-name fallback is checked (the UUID lookup made to fail)."""
    code = ("import torch\nfrom common.dist import device_key\n"
            "if not torch.cuda.is_available():\n"
            "    def no_uuid(device):\n"
            "        raise AttributeError('no uuid')\n"
            "    torch.cuda.get_device_properties = no_uuid\n"
            "print(device_key(torch.device('cuda', 0)), device_key(torch.device('cuda', 1)))\n")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2)}
    assert len(keys) == 1
    k0, k1 = keys.pop().split()
    assert int(k0) >= 0 and int(k1) >= 0 and k0 != k1  # two GPUs of one host differ
    assert device_key(torch.device("cpu")) == -1
