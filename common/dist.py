"""Process-group setup and the two collectives of a round (DESIGN.md "Processes and launch").

Roles: with c10d rendezvous the global rank order is not fixed, so the node whose environment says
BYZ_ROLE=server runs the parameter server on its local rank 0 (its other local ranks are workers);
without it, global rank 0 is the server.
Workers are the other ranks in global-rank order and get worker indices 1..m.

Groups: the default group is always Gloo on the CPU (control: roles, barriers) with the generous
start-up timeout. Round traffic runs on a data group with the shorter round timeout: NCCL when every
rank owns a distinct GPU, Gloo otherwise (CPU, or ranks sharing a GPU, staged through pinned host memory).
On Gloo with every rank on one host, a round's two exchanges (`Channel`) are point-to-point messages;
otherwise broadcast + gather collectives.
"""
from __future__ import annotations

import logging
import os
import socket
import zlib
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger("byz")


@dataclass
class Topology:
    rank: int
    world: int
    server: int  # global rank of the server
    workers: list[int]  # global ranks of workers; worker index k (1..m) is workers[k-1]
    device: torch.device
    backend: str  # of the data group
    data_group: object
    worker_group: object | None = None  # all workers: the knowledge channel of omniscient attacks
    colluder_group: object | None = None  # Byzantine workers only (attack.knowledge=colluders)
    pattern: str = "collective"  # how Channel moves a round: "p2p" or "collective" (choose_pattern)
    hosts: list[int] = field(default_factory=list)  # host_key() of every global rank (empty: unknown)

    @property
    def is_server(self) -> bool:
        return self.rank == self.server

    @property
    def worker_index(self) -> int:
        """1..m for workers, 0 for the server."""
        return 0 if self.is_server else self.workers.index(self.rank) + 1

    @property
    def m(self) -> int:
        return len(self.workers)


def _attempt_store(timeout: timedelta) -> dict:
    """Under torchrun, join the agent's store under a prefix of this restart attempt.

    The agent keeps one store across restarts; without a per-attempt prefix a restarted group reads the
    previous attempt's Gloo addresses (dead peers) and fails with "connection refused".
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), False, timeout)
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"byz/attempt_{attempt}", store), "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"])}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is visible to this process")
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def device_key(device: torch.device) -> int:
    """The same number in every process that uses this physical GPU, -1 on the CPU: a checksum of the
    GPU's UUID (of host name and index where the UUID is not available). Deterministic across
    interpreters, unlike hash(), which Python salts per process."""
    if device.type != "cuda":
        return -1
    try:
        ident = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError):
        ident = f"{socket.gethostname()}/{device.index}"
    return zlib.crc32(ident.encode())


def choose_backend(requested: str, keys: list[int], nccl_available: bool, pattern: str = "auto") -> str:
    """The data group's backend from every rank's `device_key`: NCCL needs one distinct GPU per rank;
    `auto` takes it then, and Gloo (with host staging for GPU tensors) otherwise, or when the round's
    messages are asked to be point-to-point (`comm.pattern=p2p`, which needs Gloo)."""
    distinct_gpus = all(k >= 0 for k in keys) and len(set(keys)) == len(keys)
    if requested == "auto":
        return "nccl" if distinct_gpus and nccl_available and pattern != "p2p" else "gloo"
    if requested == "nccl" and not distinct_gpus:
        raise RuntimeError("comm.backend=nccl needs one distinct GPU per rank; use gloo (host staging)")
    return requested


def host_key() -> int:
    """The same number in every process of this host: a checksum of its host name (containers have
    names of their own, so ranks in separate containers count as separate hosts)."""
    return zlib.crc32(socket.gethostname().encode())


P2P_NEEDS_GLOO = "comm.pattern=p2p needs the Gloo backend; use comm.pattern=collective or auto with comm.backend=nccl"


def choose_pattern(requested: str, backend: str, hosts: list[int]) -> str:
    """How a round's messages travel (`Channel`). `auto`: point-to-point on Gloo when every rank runs on
    one host, where a message is a copy between processes and the server's m sends cost less than the
    tree's relays; collectives otherwise (the broadcast tree spares the server's network link, which
    would carry m copies of w_t). NCCL always uses collectives."""
    if requested == "auto":
        return "p2p" if backend == "gloo" and len(set(hosts)) == 1 else "collective"
    if requested == "p2p" and backend != "gloo":
        raise RuntimeError(P2P_NEEDS_GLOO)
    return requested


def init(cfg) -> Topology:
    """Join the group started by torchrun and work out roles, device and the data group."""
    timeout = timedelta(seconds=float(cfg.comm.timeout_start_s))
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timeout, **_attempt_store(timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        raise RuntimeError("a run needs at least 2 processes (1 server + 1 worker)")
    role = os.environ.get("BYZ_ROLE", "auto")
    if role == "server" and int(os.environ.get("LOCAL_RANK", 0)) != 0:
        role = "worker"  # BYZ_ROLE=server marks the node: its local rank 0 serves, the others work
    device = pick_device(str(cfg.device))
    if device.type == "cuda":  # the current device: bare synchronize/autocast calls and NCCL use it
        torch.cuda.set_device(device)
    me = torch.tensor([{"server": 1, "worker": 0}.get(role, -1), device_key(device), host_key()], dtype=torch.int64)
    table = [torch.zeros(3, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(table, me)
    claims = [r for r in range(world) if int(table[r][0]) == 1]
    if len(claims) > 1:
        raise RuntimeError(f"ranks {claims} all claim BYZ_ROLE=server; exactly one may")
    server = claims[0] if claims else 0
    workers = [r for r in range(world) if r != server]
    backend = choose_backend(str(cfg.comm.backend), [int(t[1]) for t in table], dist.is_nccl_available(),
                             str(cfg.comm.pattern))
    round_timeout = timedelta(seconds=float(cfg.comm.timeout_round_s))
    if backend == "nccl":  # wait() blocks and raises on timeout, so the server can name silent workers
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    data_group = dist.new_group(list(range(world)), timeout=round_timeout, backend=backend)
    worker_group = dist.new_group(workers, timeout=round_timeout, backend=backend)
    hosts = [int(t[2]) for t in table]
    pattern = choose_pattern(str(cfg.comm.pattern), backend, hosts)
    return Topology(rank, world, server, workers, device, backend, data_group, worker_group, pattern=pattern,
                    hosts=hosts)


class Agreement:
    """How the ranks of a run decide together which checkpoint round to resume from
    (`common.checkpoint.resume`): collectives on the default Gloo group, which every rank joins, on the
    CPU whatever the data group's backend."""

    def __init__(self, topo: Topology):
        self.topo = topo

    def rounds(self, read) -> list[int]:
        """The server's list of consistent rounds (`read()` runs on the server only), on every rank."""
        box = [read() if self.topo.is_server else None]
        dist.broadcast_object_list(box, src=self.topo.server)
        return box[0]

    def unreadable(self, ok: bool) -> list[int]:
        """The global ranks whose `ok` is false (the same list on every rank)."""
        table = [torch.zeros(1, dtype=torch.int32) for _ in range(self.topo.world)]
        dist.all_gather(table, torch.tensor([int(bool(ok))], dtype=torch.int32))
        return [r for r, t in enumerate(table) if not int(t)]


def join_colluders(topo: Topology, byzantine_workers: list[int], timeout_s: float) -> None:
    """Byzantine workers build their own group among themselves (local synchronisation: no other rank
    takes part, so the server never receives the roster, not even as a list of ranks)."""
    if topo.is_server or topo.worker_index not in byzantine_workers:
        return
    members = [topo.workers[k - 1] for k in sorted(byzantine_workers)]
    topo.colluder_group = dist.new_group(members, timeout=timedelta(seconds=timeout_s), backend=topo.backend,
                                         use_local_synchronization=True)


class Channel:
    """A round's two exchanges: the server's buffer (header + w_t) to every worker, then every worker's
    row to the server, straight into the rows of one preallocated tensor. Staged through pinned host
    memory when the data group is Gloo but tensors live on a GPU.

    `topo.pattern` (`choose_pattern`) says how:
    - `p2p`: the server sends the buffer to each worker and receives each worker's row; a worker posts
      the receive of the next round's buffer before it sends its row (the server sends only once every
      row is in, so the buffer is free by then), so the server's send finds it posted (Gloo sends to a
      posted receive only) and w_{t+1} lands in place as it arrives. Every gather of a worker must be
      followed by a broadcast (the round loops end on the stop header), which takes that receive.
      Gloo runs point-to-point operations from the calling thread, where it hands every collective to a
      work thread first: one thread wake-up fewer per message, in every process.
    - `collective`: Gloo's or NCCL's broadcast (a binomial tree relayed by the workers) and gather.
    """

    TAG_W, TAG_ROW = 101, 102  # p2p message tags, apart from other point-to-point traffic (HGO's blocks)

    def __init__(self, topo: Topology, buf: Tensor, row_len: int):
        self.topo = topo
        self.stage = topo.backend == "gloo" and buf.device.type == "cuda"
        comm_dev = torch.device("cpu") if self.stage else buf.device
        pin = self.stage
        self.buf = buf
        self.host_buf = torch.empty(buf.numel(), dtype=buf.dtype, pin_memory=pin) if self.stage else buf
        self.row = torch.zeros(row_len, dtype=torch.float32, device=comm_dev, pin_memory=pin and comm_dev.type == "cpu")
        self.rows = self.rows_dev = None
        if topo.is_server:
            self.rows = torch.zeros(topo.world, row_len, dtype=torch.float32, device=comm_dev, pin_memory=pin)
            if self.stage:  # the server aggregates where its model lives: rows go back to the device
                self.rows_dev = torch.zeros(topo.world - 1, row_len, dtype=torch.float32, device=buf.device)
        # the hot path calls the process group directly with options built once: the generic
        # dist.* wrappers re-check and re-build these on every call
        group = topo.data_group
        self._root = dist.get_group_rank(group, topo.server)
        self._bcast_in = [self.host_buf]
        self.p2p = topo.pattern == "p2p"
        if self.p2p:
            peers = [dist.get_group_rank(group, r) for r in topo.workers]
            self._sends = peers  # the server's buffer goes to every worker
            self._recvs = [([self.rows[r]], p) for r, p in zip(topo.workers, peers)] if topo.is_server else []
            self._pending = None  # a worker's posted receive of the next buffer
            # staging: the copy out of host_buf, which the next receive into host_buf must not overtake
            self._h2d = torch.cuda.Event() if self.stage and not topo.is_server else None
        else:
            gather_list = list(self.rows.unbind(0)) if topo.is_server else None
            self._bcast_opts = dist.BroadcastOptions()
            self._bcast_opts.rootRank, self._bcast_opts.rootTensor = self._root, 0
            self._gather_opts = dist.GatherOptions()
            self._gather_opts.rootRank = self._root
            self._gather_out = [gather_list] if topo.is_server else []
            self._gather_in = [gather_list[topo.server]] if topo.is_server else [self.row]

    def broadcast(self) -> None:
        group, server = self.topo.data_group, self.topo.is_server
        if self.stage and server:
            self.host_buf.copy_(self.buf)
        if not self.p2p:
            group.broadcast(self._bcast_in, self._bcast_opts).wait()
        elif server:
            for work in [group.send(self._bcast_in, p, self.TAG_W) for p in self._sends]:
                work.wait()
        else:
            if self._pending is None:  # the first round: no gather has posted it yet
                self._pending = group.recv(self._bcast_in, self._root, self.TAG_W)
            pending, self._pending = self._pending, None
            pending.wait()
        if self.stage and not server:
            self.buf.copy_(self.host_buf, non_blocking=True)
            if self._h2d is not None:
                self._h2d.record()

    def gather(self) -> Tensor | None:
        """Workers send `self.row`; the server receives every worker's row into `self.rows` and gets
        back the (m, row_len) matrix of worker rows on its own device (a view of `self.rows` when the
        server is global rank 0 and nothing is staged; a copy in `self.rows_dev` when it is)."""
        group = self.topo.data_group
        if not self.p2p:
            group.gather(self._gather_out, self._gather_in, self._gather_opts).wait()
        elif not self.topo.is_server:
            if self._h2d is not None:
                self._h2d.synchronize()
            self._pending = group.recv(self._bcast_in, self._root, self.TAG_W)
            group.send([self.row], self._root, self.TAG_ROW).wait()
        else:
            for work in [group.recv(rows, p, self.TAG_ROW) for rows, p in self._recvs]:
                work.wait()
        if not self.topo.is_server:
            return None
        s = self.topo.server
        if s == 0:
            rows = self.rows[1:]
        elif s == self.topo.world - 1:
            rows = self.rows[:-1]
        else:
            rows = torch.cat([self.rows[:s], self.rows[s + 1:]])
        if self.rows_dev is None:
            return rows
        # pinned host -> device, ordered on the stream; done before the next receive into self.rows, as the
        # aggregation's row filter syncs the stream (one .tolist()) and the next broadcast's copy blocks
        return self.rows_dev.copy_(rows, non_blocking=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Heartbeat:
    """Which worker answered which round, kept in the group's c10d store (one small `set` per worker per
    round). When a collective times out, the server reads it to name the workers that did not answer."""

    def __init__(self, topo: Topology):
        from torch.distributed.distributed_c10d import _get_default_store

        self.topo, self.store = topo, _get_default_store()

    def sent(self, t: int) -> None:
        self.store.set(f"byz/hb/{self.topo.worker_index}", str(t))

    def missing(self, t: int) -> list[int]:
        """Worker indices whose last answered round is before t."""
        late = []
        for k in range(1, self.topo.m + 1):
            key = f"byz/hb/{k}"
            try:
                last = int(self.store.get(key)) if self.store.check([key]) else -1
            except Exception:  # noqa: BLE001 - the store itself may be gone; report what we can
                last = -1
            if last < t:
                late.append(k)
        return late
