"""A worker's round loop for ByzSGDm / ByzSGDnm (paper A, Algorithm 2; DESIGN.md round protocol).

    receive w_t  ->  sample a batch  ->  g_t  ->  u_t = g_0 | beta u_{t-1} + (1 - beta) g_t  ->  (attack)  ->  send

A Byzantine worker runs the same honest pipeline, then replaces u_t by its attack's vector.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from common import checkpoint
from common.config import dataset_kwargs, model_kwargs
from common.data import black_pixel, load_dataset, make_partition
from common.dist import Agreement, Channel, Heartbeat, Topology
from common.fault import fault_round, maybe_inject
from common.flat import H_CKPT, H_ROUND, H_STOP, flatten_model
from common.models import build_model

from .attacks import AttackContext, get_attack
from .data import ShardSampler
from .sched import run_as_batch
from .slots import open_slots

log = logging.getLogger("byz")
META = 2  # trailing floats of the row: compute seconds, train loss


def attack_params(cfg) -> tuple[str, str, dict]:
    a = dict(cfg.attack)
    return a.pop("name"), a.pop("knowledge", "omniscient"), a


def momentum_step(u: Tensor, g: Tensor, beta: float, first: bool) -> None:
    """Paper A eq. (3), in place: u_0 = g_0; u_t = beta u_{t-1} + (1 - beta) g_t."""
    if first:
        u.copy_(g)
    else:
        u.mul_(beta).add_(g, alpha=1.0 - beta)


class Worker:
    def __init__(self, cfg, topo: Topology, run_dir: str, byzantine: list[int]):
        self.cfg, self.topo, self.run_dir = cfg, topo, run_dir
        self.index = topo.worker_index  # 1..m
        self.byzantine = sorted(byzantine)
        self.is_byzantine = self.index in self.byzantine
        self.honest = [k for k in range(1, topo.m + 1) if k not in self.byzantine]
        self.device = topo.device
        name, self.knowledge_mode, params = attack_params(cfg)
        self.attack = get_attack(name, **params)
        # the knowledge channel runs only when the configured attack needs it
        self.exchange = bool(self.byzantine) and self.attack.needs_honest
        ds = load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download), int(cfg.seed),
                          **dataset_kwargs(cfg))
        shards = make_partition(cfg.dataset.partition, ds.y_train, topo.m, int(cfg.seed),
                                float(cfg.dataset.alpha), int(cfg.dataset.classes_per_worker))
        idx = shards[self.index - 1]
        x, y = ds.x_train[idx].to(self.device), ds.y_train[idx].to(self.device)
        if self.is_byzantine and self.attack.flips_labels:
            y = (ds.num_classes - 1) - y  # label flipping: y -> C - 1 - y (ALGORITHMS.md §5.7)
        self.sampler = ShardSampler(x, y, int(cfg.batch_size), int(cfg.seed), self.index, bool(cfg.dataset.augment),
                                    fill=black_pixel(ds.name, ds.input_shape[0]))
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model.name, ds.input_shape, ds.num_classes, **model_kwargs(cfg))
        self.fm = flatten_model(model, self.device)
        self.d, self.k = self.fm.d, self.fm.k
        self.chan = Channel(topo, self.fm.buf, self.d + self.k + META)
        if self.chan.row.device == self.device and not self.is_byzantine:
            self.u = self.chan.row[:self.d]  # an honest worker's momentum lives in the row it sends: no copy
        else:  # a Byzantine worker sends its attack's vector and keeps u apart
            self.u = torch.zeros(self.d, device=self.device)
        self.t_done = -1  # last round whose momentum is in u
        self.wd = float(cfg.weight_decay) if cfg.weight_decay_placement == "worker" else 0.0
        self.beta = float(cfg.momentum)
        # accuracy-neutral speed options, off by default (parameters stay float32 in the flat buffer)
        perf = cfg.get("perf") or {}
        self.autocast = perf.get("autocast", "none") == "bf16"
        self.channels_last = bool(perf.get("channels_last", False)) and x.dim() == 4
        self.batch_sched = bool(perf.get("worker_batch", True))
        self.compute_slots = perf.get("compute_slots", "auto")
        if self.exchange:
            group_size = topo.m if self.knowledge_mode == "omniscient" else len(self.byzantine)
            self._known = torch.zeros(group_size, self.d, device=self.device)
            self._known_list = list(self._known.unbind(0))

    def state_dict(self) -> dict:
        return {"u": self.u.cpu().clone(), "t_done": self.t_done, "attack": self.attack.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.u.copy_(s["u"])
        self.t_done = int(s["t_done"])
        self.attack.load_state_dict(s["attack"])

    # ------------------------------------------------------------------------------------ round
    def gradient(self, t: int) -> float:
        """g_t on this round's batch, into the flat gradient buffer; returns the batch loss."""
        x, y = self.sampler.batch(t)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.fm.grad.zero_()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = F.cross_entropy(self.fm.model(x), y)
        loss.backward()
        if self.wd:
            self.fm.grad.add_(self.fm.params, alpha=self.wd)  # worker-side L2 before the EMA (§2.3)
        return loss.item()

    def knowledge(self) -> Tensor | None:
        """The honest vectors of this round (omniscient) or the colluders' own honest momenta."""
        if not self.exchange:
            return None
        if self.knowledge_mode == "omniscient":
            dist.all_gather(self._known_list, self.u, group=self.topo.worker_group)
            rows = [k - 1 for k in self.honest]
        else:
            if not self.is_byzantine:
                return None
            dist.all_gather(self._known_list, self.u, group=self.topo.colluder_group)
            rows = list(range(len(self.byzantine)))
        return self._known[rows] if self.is_byzantine else None

    def run(self) -> None:
        cfg = self.cfg
        checkpoint.resume(self.run_dir, f"worker_{self.index}", self.load_state_dict,
                          Agreement(self.topo))
        known = self.honest if self.knowledge_mode == "omniscient" else self.byzantine
        ctx = AttackContext(n=self.topo.m, f=len(self.byzantine), rank=self.index,
                            aggregator=dict(cfg.aggregator), declared_f=int(cfg.aggregator.f),
                            honest_ranks=tuple(known), knowledge=self.knowledge_mode)
        row, d, k = self.chan.row, self.d, self.k
        # compute seconds and loss: through a NumPy view on the CPU (no tensor op), in one copy on a GPU
        meta = row[d + k:].numpy() if row.device.type == "cpu" else None
        heartbeat = Heartbeat(self.topo)
        fault_at = fault_round(cfg, self.index)
        slots = open_slots(self.topo, self.compute_slots, timedelta(seconds=float(cfg.comm.timeout_start_s)))
        dist.barrier()  # every rank is set up (start-up timeout); rounds use the round timeout
        if self.batch_sched:  # after the barrier: Gloo's threads exist by now
            run_as_batch()
        while True:
            self.chan.broadcast()
            h = self.fm.header.tolist()
            t = int(h[H_ROUND])
            if h[H_CKPT] > 0:
                checkpoint.save_rank(self.run_dir, t, f"worker_{self.index}", self.state_dict())
            if h[H_STOP] > 0:
                break
            if t == fault_at:
                maybe_inject(cfg, self.index, t)
            t0 = time.perf_counter()
            with slots.step():  # at most `cores` workers of this host compute at once (worker/slots.py)
                loss = self.gradient(t)
                momentum_step(self.u, self.fm.grad, self.beta, first=self.t_done < 0)
            self.t_done = t
            honest = self.knowledge()
            v = self.u
            if self.is_byzantine:
                ctx.round = t
                ctx.generator = torch.Generator(device=self.device).manual_seed(int(cfg.seed) * 1_000_003 + t)
                v = self.attack(self.u, honest, ctx)
            if v.data_ptr() != row.data_ptr():
                row[:d].copy_(v)
            if k:
                row[d:d + k].copy_(self.fm.bn)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if meta is not None:
                meta[0], meta[1] = time.perf_counter() - t0, loss
            else:
                row[d + k:].copy_(torch.tensor([time.perf_counter() - t0, loss]))
            self.chan.gather()
            heartbeat.sent(t)
        slots.close()
        dist.barrier()
