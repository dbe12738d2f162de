"""A worker's round loop for HGO and its SGD baseline (paper B, Algorithm 1, "Honest Worker i").

    receive (w_k, seed)  ->  selected?  ->  mini-batch of s_i samples  ->  g  ->  b_i from (tau, lambda_i, s_i)
    ->  block = C_k[:b_i] (C_k rebuilt from the seed)  ->  (attack on the block, length lie)  ->  send b_i, g[block]

lambda_i comes from the worker's profile (worker.profiles: drawn once from (seed, worker), clipped at 0)
or is measured from the worker's own gradient timing (`hgo.rate=measured`). The autograd pass computes
the whole gradient; the cost of the b_i partial derivatives is what the logical clock charges
(s_i b_i / lambda_i time units), and what the emulated clock makes the worker really wait.

A Byzantine worker runs the same pipeline, then `attack.claim_length(b_i, d)` decides the length it
claims (b_i, or d with `lie_length`) and `attack(...)` the values on its block. Omniscient attacks get
the selected honest workers' gradients restricted to that block (a worker-group all-gather, run only when
the attack needs it). HGO workers keep no state across rounds.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from common.config import dataset_kwargs, model_kwargs
from common.data import load_dataset, make_partition
from common.dist import Channel, Topology
from common.fault import maybe_inject
from common.flat import H_ROUND, H_SEED, H_STOP, flatten_model
from common.hgo import (
    R_COMPUTE,
    R_LEN,
    R_LOSS,
    R_TIME,
    REPLY,
    clamp_length,
    parse_tau,
    permutation,
    selection,
    store_of_group,
    task_labels,
)
from common.models import build_model, is_binary

from .attacks import AttackContext, get_attack
from .data import ShardSampler
from .profiles import assign_profiles, block_length, compute_time, draw_rate, rate_table, sgd_length
from .trainer import attack_params

log = logging.getLogger("byz")


def resize_shards(shards: list[Tensor], alpha: float, seed: int, min_size: int) -> list[Tensor]:
    """Unequal shard sizes: the shards, concatenated in worker order, re-cut at sizes
    min_size + Dirichlet(alpha) * (N - m min_size). Non-i.i.d. shards keep their few classes, since each
    new shard is a contiguous run of the old class-structured ones; no sample is lost or duplicated."""
    m = len(shards)
    flat = torch.cat(shards)
    spare = len(flat) - m * min_size
    if spare < 0:
        raise ValueError(f"{len(flat)} samples cannot give {m} shards of at least {min_size}")
    p = np.random.default_rng([int(seed), 0x5A5A]).dirichlet([alpha] * m)
    extra = np.floor(p * spare).astype(np.int64)
    for j in np.argsort(-(p * spare - extra), kind="stable")[:spare - int(extra.sum())]:
        extra[j] += 1
    sizes = (min_size + extra).tolist()
    return list(torch.split(flat, sizes))


def batch_size_of(cfg, index: int) -> int:
    sizes = cfg.hgo.get("batch_sizes")
    return int(sizes[index - 1]) if sizes else int(cfg.batch_size)


class HGOWorker:
    def __init__(self, cfg, topo: Topology, run_dir: str, byzantine: list[int]):
        self.cfg, self.topo, self.run_dir = cfg, topo, run_dir
        hg = cfg.hgo
        self.index = topo.worker_index  # 1..m
        self.m, self.q = topo.m, int(hg.q)
        self.byzantine = sorted(byzantine)
        self.is_byzantine = self.index in self.byzantine
        self.device = topo.device
        self.sgd = cfg.algorithm.name == "sgd"
        name, self.knowledge_mode, params = attack_params(cfg)
        self.attack = get_attack(name, **params)
        self.exchange = bool(self.byzantine) and self.attack.needs_honest
        ds = load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download), int(cfg.seed),
                          **dataset_kwargs(cfg))
        binary = cfg.model.get("binary")
        num_classes = 2 if is_binary(binary) else ds.num_classes
        shards = make_partition(cfg.dataset.partition, ds.y_train, self.m, int(cfg.seed),
                                float(cfg.dataset.alpha), int(cfg.dataset.classes_per_worker))
        if hg.shard_sizes == "dirichlet":
            s_max = max(batch_size_of(cfg, k) for k in range(1, self.m + 1))
            shards = resize_shards(shards, float(hg.size_alpha), int(cfg.seed), s_max)
        idx = shards[self.index - 1]
        x, y = ds.x_train[idx].to(self.device), task_labels(ds.y_train[idx], binary).to(self.device)
        if self.is_byzantine and self.attack.flips_labels:
            y = (num_classes - 1) - y
        self.s = batch_size_of(cfg, self.index)
        self.sampler = ShardSampler(x, y, self.s, int(cfg.seed), self.index)
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model.name, ds.input_shape, num_classes, **model_kwargs(cfg))
        self.fm = flatten_model(model, self.device)
        self.d = self.fm.d
        self.wd = float(cfg.weight_decay) if cfg.weight_decay_placement == "worker" else 0.0
        self.tau = parse_tau(hg.tau)
        self.unit = float(hg.time_unit_s)
        self.emulated = hg.clock == "emulated"
        self.straggle = float(hg.straggle_s) if self.index in list(hg.get("stragglers") or []) else 0.0
        self.profile = assign_profiles(self.m, str(hg.scenario), int(cfg.seed))[self.index - 1]
        if hg.rate == "measured":
            self.lam = self.measure_rate()
        else:
            self.lam = draw_rate(self.profile, rate_table(str(hg.profiles), dict(cfg.model)), int(cfg.seed),
                                 self.index)
        self.chan = Channel(topo, self.fm.buf, REPLY) if hg.transport == "collective" else None
        if self.exchange:
            group_size = self.m if self.knowledge_mode == "omniscient" else len(self.byzantine)
            self._known = torch.zeros(group_size, self.d, device=self.device)
            self._known_list = list(self._known.unbind(0))

    # ------------------------------------------------------------------------------------ pieces
    def gradient(self, t: int) -> float:
        """The mini-batch gradient G_i(w_k) (paper B eq. 2) into the flat gradient buffer; the batch loss."""
        x, y = self.sampler.batch(t)
        self.fm.grad.zero_()
        loss = F.cross_entropy(self.fm.model(x), y)
        loss.backward()
        if self.wd:
            self.fm.grad.add_(self.fm.params, alpha=self.wd)
        return loss.item()

    def measure_rate(self, reps: int = 5) -> float:
        """lambda_i from this process's own timing: partial derivatives per sample per time unit."""
        times = []
        for r in range(reps):
            t0 = time.perf_counter()
            self.gradient(r)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times[1:] or times)
        return self.s * self.d / max(seconds, 1e-9) * self.unit

    def honest_length(self) -> int:
        """b_i of paper B §II.B (HGO), or d / 0 (SGD with a time limit)."""
        f = sgd_length if self.sgd else block_length
        return f(self.tau, self.lam, self.s, self.d)

    def logical_time(self, b: int) -> float:
        """Time units this round costs the device: s_i b / lambda_i (SGD attempts all d coordinates).

        A device with lambda_i = 0 never answers: it costs the whole budget when tau is finite, and
        nothing when tau = inf (it counts as absent, or the round would never end)."""
        if self.lam <= 0:
            return self.tau if math.isfinite(self.tau) else 0.0
        return compute_time(self.d if self.sgd else b, self.s, self.lam)

    def knowledge(self, sel: list[int], selected: bool) -> Tensor | None:
        """The selected honest workers' gradients of this round (omniscient), or the selected colluders'
        own honest gradients, as rows in worker order; None for honest workers."""
        if not self.exchange:
            return None
        mine = self.fm.grad if selected else torch.zeros_like(self.fm.grad)
        if self.knowledge_mode == "omniscient":
            dist.all_gather(self._known_list, mine, group=self.topo.worker_group)
            rows = [k - 1 for k in sel if k not in self.byzantine]
        else:
            if not self.is_byzantine:
                return None
            dist.all_gather(self._known_list, mine, group=self.topo.colluder_group)
            rows = [j for j, k in enumerate(self.byzantine) if k in sel]
        return self._known[rows] if self.is_byzantine and rows else None

    def block(self, t: int, seed: int, sel: list[int], honest: Tensor | None, b_honest: int) -> Tensor:
        """The values this worker sends: g[C_k[:b]] (honest), or the attack's values on its claimed block."""
        b = b_honest
        if self.is_byzantine:
            b, _ = clamp_length(self.attack.claim_length(b_honest, self.d), self.d)
        if b == 0:
            return self.fm.grad.new_zeros(0)
        block = permutation(seed, self.d, self.device)[:b]
        u = self.fm.grad[block]
        if not self.is_byzantine or (self.attack.needs_honest and honest is None):
            return u
        byz_sel = [k for k in sel if k in self.byzantine]
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed) * 1_000_003 + t)
        ctx = AttackContext(round=t, n=len(sel), f=len(byz_sel), rank=self.index, generator=gen,
                            aggregator=dict(self.cfg.aggregator), declared_f=int(self.cfg.aggregator.f),
                            honest_ranks=tuple(k for k in sel if k not in self.byzantine),
                            knowledge=self.knowledge_mode)
        return self.attack(u, None if honest is None else honest[:, block], ctx).contiguous()

    def answer(self, t: int, seed: int, sel: list[int], selected: bool) -> tuple[Tensor, Tensor] | None:
        """Run round t: (reply header, values) when selected, else None (after the knowledge exchange)."""
        t0 = time.perf_counter()
        loss = self.gradient(t) if selected else float("nan")
        honest = self.knowledge(sel, selected)
        if not selected:
            return None
        b_honest = self.honest_length()
        values = self.block(t, seed, sel, honest, b_honest)
        cost = self.logical_time(b_honest)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        compute = time.perf_counter() - t0
        if self.emulated:  # really take the device's time (at most the budget tau)
            time.sleep(max(0.0, min(cost, self.tau) * self.unit - compute))
        if self.straggle:
            time.sleep(self.straggle)
        reply = torch.zeros(REPLY)
        reply[R_LEN], reply[R_TIME], reply[R_LOSS], reply[R_COMPUTE] = values.numel(), cost, loss, compute
        return reply, values

    # ------------------------------------------------------------------------------------ loops
    def run(self) -> None:
        dist.barrier()  # every rank is set up (start-up timeout); rounds use the round timeout
        if self.chan is not None:
            self._run_collective()
        else:
            self._run_store()
        dist.barrier()

    def _answer_header(self) -> tuple[int, tuple[Tensor, Tensor] | None] | None:
        """Read the round's header from the parameter buffer and answer it: (t, reply and values, or
        None when this worker is not selected); None when the header says stop."""
        h = self.fm.header.tolist()
        if h[H_STOP] > 0:
            return None
        t, seed = int(h[H_ROUND]), int(h[H_SEED])
        sel = selection(seed, self.m, self.q)
        maybe_inject(self.cfg, self.index, t)
        return t, self.answer(t, seed, sel, self.index in sel)

    def _run_collective(self) -> None:
        row, chan = self.chan.row, self.chan
        while True:
            chan.broadcast()
            step = self._answer_header()
            if step is None:
                break
            _, out = step
            row.zero_()
            if out is not None:
                row.copy_(out[0])
            chan.gather()
            if out is not None and out[1].numel():
                values = out[1].cpu() if chan.stage else out[1]
                dist.send(values, dst=self.topo.server, group=self.topo.data_group)

    def _run_store(self) -> None:
        """Follow the rounds through the store; a worker that fell behind skips to the latest round."""
        store = store_of_group()
        start_timeout = timedelta(seconds=float(self.cfg.comm.timeout_start_s))
        store.wait(["latest"], start_timeout)
        t = int(store.get("latest"))
        buf = self.fm.buf
        while True:
            store.wait([f"w{t}"], start_timeout)  # the server may be evaluating or checkpointing
            t = max(t, int(store.get("latest")))
            payload = store.get(f"w{t}")
            buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.float32).to(buf.device))
            step = self._answer_header()
            if step is None:
                break
            t, out = step
            if out is not None:
                msg = torch.cat([out[0], out[1].detach().cpu()]).numpy().tobytes()
                store.set(f"b{t}/{self.index}", msg)
            t += 1
