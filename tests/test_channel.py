"""The round's two exchanges (common.dist.Channel) over a real Gloo group in both patterns, and the
backend and pattern choices."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from common.dist import Channel, Topology, choose_backend, choose_pattern, device_key
from tests.helpers import ROOT, run_ranks

WORLD, D, ROUNDS = 4, 5, 3
PATTERNS = ("collective", "p2p")


def _rank_main(rank: int, store_path: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        for pattern in PATTERNS:
            for server in (0, 1, WORLD - 1):  # the server at the first, a middle and the last global rank
                workers = [r for r in range(WORLD) if r != server]
                topo = Topology(rank, WORLD, server, workers, torch.device("cpu"), "gloo", dist.group.WORLD,
                                pattern=pattern)
                buf = torch.full((D,), -1.0)
                if topo.is_server:
                    buf.copy_(torch.arange(D) * 10.0 + server)
                chan = Channel(topo, buf, row_len=3)
                for t in range(ROUNDS + 1):  # the last broadcast stands for the stop header
                    chan.broadcast()
                    if t == ROUNDS:
                        if not topo.is_server:
                            queue.put((pattern, server, "stop", rank, buf.tolist()))
                        break
                    if not topo.is_server:
                        k = topo.worker_index
                        chan.row.copy_(torch.tensor([k, t, buf.sum()]))
                    rows = chan.gather()
                    if topo.is_server:
                        queue.put((pattern, server, t, None, rows.tolist()))
                        buf.add_(1.0)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_broadcast_reaches_every_worker_and_gather_returns_rows_in_worker_order(tmp_path):
    items = run_ranks(_rank_main, WORLD, str(tmp_path / "store"), messages=len(PATTERNS) * 3 * (ROUNDS + WORLD - 1))
    got = {(pattern, server, t, rank): value for pattern, server, t, rank, value in items}
    for pattern in PATTERNS:
        for server in (0, 1, WORLD - 1):
            for t in range(ROUNDS):
                w_sum = float(sum(i * 10.0 + server + t for i in range(D)))  # what the server broadcast
                assert got[pattern, server, t, None] == [[k, t, w_sum] for k in range(1, WORLD)], (pattern, server, t)
            for rank in range(WORLD):  # the stop broadcast reaches every worker (p2p: its posted receive)
                if rank != server:
                    final = [i * 10.0 + server + ROUNDS for i in range(D)]
                    assert got[pattern, server, "stop", rank] == final, (pattern, server, rank)


def test_backend_choice_needs_one_distinct_gpu_per_rank():
    cpu = [-1, -1, -1]
    assert choose_backend("auto", cpu, nccl_available=True) == "gloo"
    assert choose_backend("auto", [7, 7, 7], nccl_available=True) == "gloo"  # three ranks share one GPU
    assert choose_backend("auto", [7, 8, 9], nccl_available=True) == "nccl"
    assert choose_backend("auto", [7, 8, 9], nccl_available=False) == "gloo"
    assert choose_backend("gloo", [7, 8, 9], nccl_available=True) == "gloo"
    with pytest.raises(RuntimeError, match="comm.backend=nccl needs one distinct GPU per rank"):
        choose_backend("nccl", [7, 7, 9], nccl_available=True)
    # point-to-point round messages need Gloo: auto then keeps Gloo even with one GPU per rank
    assert choose_backend("auto", [7, 8, 9], nccl_available=True, pattern="p2p") == "gloo"
    assert choose_backend("auto", [7, 8, 9], nccl_available=True, pattern="collective") == "nccl"


def test_pattern_p2p_on_one_host_gloo_collectives_otherwise():
    assert choose_pattern("auto", "gloo", [5, 5, 5]) == "p2p"
    assert choose_pattern("auto", "gloo", [5, 6, 5]) == "collective"  # ranks on two hosts: spare the server's link
    assert choose_pattern("auto", "nccl", [5, 5, 5]) == "collective"
    assert choose_pattern("collective", "gloo", [5, 5]) == "collective"
    assert choose_pattern("p2p", "gloo", [5, 6]) == "p2p"
    with pytest.raises(RuntimeError, match="comm.pattern=p2p needs the Gloo backend"):
        choose_pattern("p2p", "nccl", [5, 5])


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
