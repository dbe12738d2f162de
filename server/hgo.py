"""The parameter server's round loop for HGO and its SGD baseline (paper B, Algorithm 1; DESIGN.md
"Round protocol: HGO").

A round reads like the algorithm: draw the seed (selection + permutation C_k), send the header and w_k,
receive each selected worker's b_i and its b_i values, clamp the lengths, drop non-finite blocks, take
the quorum b_v, aggregate segment by segment, update w_{k+1} = w_k - gamma AG, advance the clock, log.
The server never learns which workers are Byzantine; v comes from the declared f (aggregator.f).

Transports (`hgo.transport`):
- `collective` (default, fast): the round's two exchanges of common.dist.Channel (point-to-point
  messages or broadcast + gather, `comm.pattern`): the header and w_k go out to every worker; the server
  learns every worker's reply header (b_i, logical time, loss, seconds) as REPLY floats per worker, then
  receives from each selected worker exactly b_i floats with point-to-point `irecv` straight into row r
  of a preallocated (q, d) matrix, rows ordered by decreasing b_i, so that each segment is a slice of
  it. The bytes saved by partial blocks are real (summary.json: bytes_values = 4 * sum b_i). A
  collective cannot miss a deadline: a worker that never answers stalls the round until the group
  timeout (DESIGN.md "Failure model"), so here tau is enforced by the workers themselves.
- `store` (real deadline): the c10d TCPStore of the group. The server `set`s the header and w_k under
  the round's key; each selected worker `set`s its reply header + values under its own key; the server
  `wait`s for them until the deadline tau * time_unit_s + grace_s and skips the workers that are not
  there (counted as `absent`). A store wait that times out leaves the store usable, unlike a Gloo
  receive that times out (which poisons the group). Slow workers skip to the latest round.

Clocks (`hgo.clock`): the logical clock adds each round's duration min(tau, max_i t_i), t_i = s_i b_i /
lambda_i as reported by the selected workers (clamped to [0, tau]); with `emulated` the workers also
really take t_i * time_unit_s seconds, so the wall clock is real. Both are logged.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from common import checkpoint
from common.config import dataset_kwargs, model_kwargs
from common.data import load_dataset
from common.dist import Channel, Topology
from common.fault import maybe_inject
from common.flat import H_ROUND, flatten_model, write_header
from common.hgo import (
    R_COMPUTE,
    R_LEN,
    R_LOSS,
    R_TIME,
    REPLY,
    SEED_MAX,
    clamp_length,
    clamp_lengths,
    parse_tau,
    permutation,
    selection,
    store_of_group,
    task_labels,
)
from common.metrics import TB_NAMES, write_summary
from common.models import build_model, is_binary
from common.schedule import learning_rate
from common.timing import PhaseTimer

from .aggregators import get_aggregator
from .quorum import aggregate_blocks, quorum_length
from .trainer import _progress, aggregator_params, begin_run, evaluate, rounds_per_epoch

log = logging.getLogger("byz")
PHASES = ("compute", "communication", "aggregation", "update")

HGO_TB = {**TB_NAMES, "b_mean": "hgo/b_mean", "b_v": "hgo/b_v", "answered": "hgo/answered",
          "absent": "hgo/absent", "lengths_clamped": "inputs/lengths_clamped", "logical_time": "time/logical",
          "round_logical": "time/round_logical", "excluded_nonfinite_blocks": "inputs/excluded_nonfinite"}


@dataclass
class Answers:
    """What reached the server in one round.

    reply:   (q, REPLY) reply headers of the selected workers in selection order (NaN when absent)
    senders: worker index of each value row, rows in decreasing length order
    lengths: clamped b_i of each value row (same order)
    values:  (>= len(senders), >= max length) matrix; row r holds senders[r]'s values in its first lengths[r]
    """

    reply: Tensor
    senders: list[int]
    lengths: list[int]
    values: Tensor
    clamped: int = 0  # reply headers whose b_i was out of range
    absent: int = 0  # selected workers that did not answer before the deadline (store transport)
    malformed: int = 0  # answers whose value count disagreed with their header (store transport)
    header_bytes: int = 0
    value_bytes: int = 0


class CollectiveTransport:
    """Header + w_k to every worker and the reply headers back (common.dist.Channel), then a point-to-point
    receive of each selected worker's block."""

    def __init__(self, srv: HGOServer):
        self.srv, self.topo = srv, srv.topo
        self.chan = Channel(srv.topo, srv.fm.buf, REPLY)
        comm = torch.device("cpu") if self.chan.stage else srv.device
        self.values = torch.zeros(srv.q, srv.d, device=comm)

    def exchange(self, t: int, sel: list[int]) -> Answers:
        self.chan.broadcast()
        rows = self.chan.gather()  # (m, REPLY): every worker sends a row, unselected ones zeros
        reply = rows[[k - 1 for k in sel]].cpu()
        b, bad = clamp_lengths(reply[:, R_LEN], self.srv.d)
        order = torch.argsort(b, descending=True, stable=True).tolist()
        reqs = []
        for r, i in enumerate(order):
            n = int(b[i])
            if n > 0:
                src = self.topo.workers[sel[i] - 1]
                reqs.append(dist.irecv(self.values[r, :n], src=src, group=self.topo.data_group))
        for req in reqs:
            req.wait()
        lengths = [int(b[i]) for i in order]
        return Answers(reply, [sel[i] for i in order], lengths, self.values, clamped=int(bad.sum()),
                       header_bytes=rows.numel() * rows.element_size(), value_bytes=4 * sum(lengths))

    def stop(self) -> None:
        self.chan.broadcast()


class StoreTransport:
    """Real deadline through the group's c10d store (keys w{t}, latest, b{t}/{k})."""

    KEEP = 3  # rounds of keys kept for slow workers

    def __init__(self, srv: HGOServer):
        self.srv = srv
        self.store = store_of_group()
        hg = srv.cfg.hgo
        tau = srv.tau
        self.wait_s = (tau * float(hg.time_unit_s) + float(hg.grace_s) if math.isfinite(tau)
                       else float(srv.cfg.comm.timeout_round_s))
        self.values = torch.zeros(srv.q, srv.d)

    def _publish(self, t: int) -> None:
        self.store.set(f"w{t}", self.srv.fm.buf.detach().cpu().numpy().tobytes())
        self.store.set("latest", str(t))

    def exchange(self, t: int, sel: list[int]) -> Answers:
        d, q = self.srv.d, len(sel)
        self._publish(t)
        deadline = time.monotonic() + self.wait_s
        got: dict[int, bytes] = {}
        for k in sel:
            key = f"b{t}/{k}"
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    self.store.wait([key], timedelta(seconds=remaining))
                elif not self.store.check([key]):
                    continue
                got[k] = self.store.get(key)
            except dist.DistStoreError:  # not there by the deadline: skipped this round
                continue
        reply = torch.full((q, REPLY), float("nan"))
        blocks: dict[int, np.ndarray] = {}
        clamped = malformed = header_bytes = 0
        for i, k in enumerate(sel):
            if k not in got:
                continue
            arr = np.frombuffer(got[k], dtype=np.float32)
            header_bytes += min(arr.size, REPLY) * 4
            if arr.size < REPLY:
                malformed += 1
                continue
            b, bad = clamp_length(float(arr[R_LEN]), d)
            clamped += int(bad)
            if arr.size - REPLY != b:
                malformed += 1
                continue
            reply[i] = torch.from_numpy(arr[:REPLY].copy())
            blocks[i] = arr[REPLY:]
        order = sorted(blocks, key=lambda i: (-blocks[i].size, i))
        for r, i in enumerate(order):
            if blocks[i].size:
                self.values[r, :blocks[i].size] = torch.from_numpy(blocks[i])
        lengths = [int(blocks[i].size) for i in order]
        self._cleanup(t, sel, got)
        return Answers(reply, [sel[i] for i in order], lengths, self.values, clamped=clamped,
                       absent=q - len(got), malformed=malformed, header_bytes=header_bytes,
                       value_bytes=4 * sum(lengths))

    def _cleanup(self, t: int, sel: list[int], got: dict[int, bytes]) -> None:
        for k in got:
            self.store.delete_key(f"b{t}/{k}")
        old = t - self.KEEP
        if old >= 0:
            self.store.delete_key(f"w{old}")
            for k in range(1, self.srv.m + 1):  # late answers of an old round
                self.store.delete_key(f"b{old}/{k}")

    def stop(self) -> None:
        self._publish(int(self.srv.fm.header[H_ROUND]))


class HGOServer:
    def __init__(self, cfg, topo: Topology, run_dir: str):
        self.cfg, self.topo, self.run_dir = cfg, topo, run_dir
        hg = cfg.hgo
        self.device = topo.device
        ds = load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download), int(cfg.seed),
                          **dataset_kwargs(cfg))
        binary = cfg.model.get("binary")
        self.x_test = ds.x_test.to(self.device)
        self.y_test = task_labels(ds.y_test, binary).to(self.device)
        num_classes = 2 if is_binary(binary) else ds.num_classes
        torch.manual_seed(int(cfg.seed))
        self.fm = flatten_model(build_model(cfg.model.name, ds.input_shape, num_classes, **model_kwargs(cfg)),
                                self.device)
        if self.fm.k:
            raise RuntimeError("HGO aggregates parameters only: the model must have no BatchNorm buffers")
        self.d, self.m = self.fm.d, topo.m
        self.q, self.v, self.tau = int(hg.q), int(hg.v), parse_tau(hg.tau)
        self.sgd = cfg.algorithm.name == "sgd"
        max_abs = (cfg.get("filter") or {}).get("max_abs")
        self.max_abs = math.inf if max_abs is None else float(max_abs)
        name, f, pre, params = aggregator_params(cfg)
        self.f = f
        self.rule = get_aggregator(name, self.q, f, pre=pre, **params)
        self.rpe = max(rounds_per_epoch(cfg, len(ds.y_train)), 1)
        self.total_rounds = int(hg.rounds) if hg.get("rounds") is not None else int(cfg.epochs) * self.rpe
        # the schedule spans the whole run: hgo.rounds may be more or fewer than `epochs` epochs
        self.schedule_epochs = max(1, math.ceil(self.total_rounds / self.rpe))
        if cfg.max_rounds is not None:
            self.total_rounds = min(self.total_rounds, int(cfg.max_rounds))
        self.seeds = torch.Generator().manual_seed(int(cfg.seed) * 7919 + 17)
        self.timer = PhaseTimer(cuda_sync=self.device.type == "cuda")
        self.round, self.logical_time = 0, 0.0
        self.restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        self.best_acc, self.last_eval = 0.0, (float("nan"), float("nan"))
        self.bytes = {"values": 0, "headers": 0}
        self.sums = {"b": 0, "b_v": 0, "answered": 0, "selected": 0, "rounds_without_quorum": 0}
        self.counts = {"excluded_nonfinite": 0, "lengths_clamped": 0, "absent": 0, "malformed": 0}
        self.wall_before = 0.0
        self.transport = StoreTransport(self) if hg.transport == "store" else CollectiveTransport(self)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"round": self.round, "buf": self.fm.buf.cpu().clone(), "seeds": self.seeds.get_state(),
                "logical_time": self.logical_time, "best_acc": self.best_acc, "last_eval": self.last_eval,
                "bytes": dict(self.bytes), "sums": dict(self.sums), "counts": dict(self.counts),
                "timer": dict(self.timer.total), "wall": self.wall_before + time.perf_counter() - self.t_start,
                "rule": self.rule.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.round, self.logical_time = int(s["round"]), float(s["logical_time"])
        self.fm.buf.copy_(s["buf"])
        self.seeds.set_state(s["seeds"])
        self.best_acc, self.last_eval = s["best_acc"], tuple(s["last_eval"])
        self.bytes, self.sums, self.counts = dict(s["bytes"]), dict(s["sums"]), dict(s["counts"])
        self.timer.total.update(s["timer"])
        self.wall_before = float(s["wall"])
        self.rule.load_state_dict(s["rule"])

    def _checkpoint(self, t: int) -> None:
        """HGO workers keep no state across rounds (rates from the seed, batches from the round), so a
        consistent checkpoint is the server's file alone."""
        checkpoint.save_rank(self.run_dir, t, "server", self.state_dict())
        checkpoint.mark_complete(self.run_dir, t, ["server"], int(self.cfg.checkpoint.keep))

    # ------------------------------------------------------------------------------------ round
    def _header(self, t: int, seed: int, stop: bool = False) -> float:
        cfg = self.cfg
        epoch = t // self.rpe
        lr = learning_rate(cfg.schedule.name, float(cfg.lr), epoch, self.schedule_epochs,
                           list(cfg.schedule.milestones), float(cfg.schedule.gamma))
        # H_ROUND, H_EPOCH, H_LR, H_STOP, H_CKPT, H_SEED, H_TAU, H_EXTRA
        write_header(self.fm.header, t, epoch, lr, float(stop), 0.0, seed, self.tau, self.q)
        return lr

    def _sane(self, block: Tensor) -> bool:
        """Finite, and no entry beyond filter.max_abs (DESIGN.md "Reliability": bad numbers never reach
        the model; an excluded block counts against the declared f)."""
        top = block.abs().amax()
        return bool(torch.isfinite(top)) and float(top) <= self.max_abs

    def aggregate(self, ans: Answers) -> tuple[Tensor, int, int]:
        """(AG over the quorum block in permutation order, b_v, blocks excluded as non-finite or absurd)."""
        values, lengths = ans.values, list(ans.lengths)
        keep = [r for r, n in enumerate(lengths) if n == 0 or self._sane(values[r, :n])]
        excluded = len(lengths) - len(keep)
        if excluded:
            values, lengths = values[keep], [lengths[r] for r in keep]
        values = values.to(self.device, non_blocking=True)
        b_v = quorum_length(lengths, self.v)
        ag = aggregate_blocks(values[:len(lengths)], lengths, self.v, self.rule, max(0, self.f - excluded))
        return ag, b_v, excluded

    def round_duration(self, reply: Tensor) -> float:
        """min(tau, max_i t_i) over the selected workers' reported times (absent: waited up to tau)."""
        times = reply[:, R_TIME].to(torch.float64)
        absent = torch.isnan(reply[:, R_LEN])
        times = torch.where(absent, torch.full_like(times, self.tau if math.isfinite(self.tau) else 0.0),
                            times.nan_to_num(0.0).clamp(min=0.0))
        longest = float(times.max()) if times.numel() else 0.0
        return min(self.tau, longest)

    def _time_writer(self):
        """TensorBoard events against the logical clock (step = time units), in their own directory so
        that a resumed run purges them by time, not by round."""
        from torch.utils.tensorboard import SummaryWriter

        start = int(round(self.logical_time))
        return SummaryWriter(os.path.join(self.run_dir, "tb", "logical_time"), purge_step=start + 1)

    def run(self, summary_extra: dict | None = None) -> dict:
        """Train for hgo.rounds rounds (resuming from the latest checkpoint); write summary.json."""
        cfg = self.cfg
        if float(cfg.momentum) != 0.0:
            log.warning("algorithm=%s has no momentum (paper B, Alg. 1 line 13): momentum=%s is not used",
                        cfg.algorithm.name, cfg.momentum)
        metrics = begin_run(self)
        by_time = self._time_writer() if cfg.log.tensorboard else None
        dist.barrier()  # every rank is set up (start-up timeout); rounds use the round timeout
        bar = _progress(cfg, self.total_rounds, self.round)
        every, eval_every = int(cfg.checkpoint.every), int(cfg.hgo.eval_every)
        wd_server = float(cfg.weight_decay) if cfg.weight_decay_placement == "server" else 0.0
        params, timer = self.fm.params, self.timer
        while self.round < self.total_rounds:
            t = self.round
            maybe_inject(cfg, 0, t)
            if every > 0 and t > 0 and t % every == 0:
                self._checkpoint(t)
            seed = int(torch.randint(SEED_MAX, (1,), generator=self.seeds))
            sel = selection(seed, self.m, self.q)
            lr = self._header(t, seed)
            t0 = time.perf_counter()
            with timer("communication"):
                ans = self.transport.exchange(t, sel)
            present = ~torch.isnan(ans.reply[:, R_LEN])
            compute = float(ans.reply[present, R_COMPUTE].clamp(0, 1e6).nan_to_num(0).max()) if present.any() else 0.0
            timer.add("compute", compute)
            timer.total["communication"] -= min(compute, timer.last["communication"])
            with timer("aggregation"):
                ag, b_v, excluded = self.aggregate(ans)
            with timer("update"):
                if b_v:
                    block = permutation(seed, self.d, self.device)[:b_v]
                    if wd_server:
                        ag = ag + wd_server * params[block]
                    params.index_add_(0, block, ag, alpha=-lr)
                ag_norm = float(torch.linalg.vector_norm(ag, dtype=torch.float64)) if b_v else 0.0
            duration = self.round_duration(ans.reply)
            self.logical_time += duration
            answered = sum(1 for n in ans.lengths if n > 0)
            self.bytes["values"] += ans.value_bytes
            self.bytes["headers"] += ans.header_bytes
            for key, val in (("b", sum(ans.lengths)), ("b_v", b_v), ("answered", answered),
                             ("selected", len(sel)), ("rounds_without_quorum", int(b_v == 0))):
                self.sums[key] += val
            for key, val in (("excluded_nonfinite", excluded), ("lengths_clamped", ans.clamped),
                             ("absent", ans.absent), ("malformed", ans.malformed)):
                self.counts[key] += val
            self.round = t + 1
            last = self.round == self.total_rounds
            row = None
            if self.round % eval_every == 0 or last:
                with timer("evaluation"):
                    acc, loss = evaluate(self.fm.model, self.x_test, self.y_test)
                self.best_acc, self.last_eval = max(self.best_acc, acc), (acc, loss)
                row = {"test_accuracy": acc, "test_loss": loss}
                if by_time is not None:
                    by_time.add_scalar("test/accuracy_vs_logical_time", acc, int(round(self.logical_time)))
                if bar is not None:
                    bar.set_postfix(acc=f"{acc:.3f}", b_v=b_v)
            if row is not None or self.round % int(cfg.log.every) == 0:
                losses = ans.reply[present, R_LOSS]
                losses = losses[torch.isfinite(losses)]
                row = {"round": self.round, "epoch": self.round / self.rpe,
                       "time": self.wall_before + time.perf_counter() - self.t_start,
                       "logical_time": self.logical_time, "round_logical": duration, "lr": lr, "agg_norm": ag_norm,
                       "train_loss": float(losses.median()) if len(losses) else None,
                       "round_time": time.perf_counter() - t0,
                       **{f"t_{p}": timer.last.get(p, 0.0) for p in PHASES},
                       "b_mean": sum(ans.lengths) / len(sel), "b_v": b_v, "answered": answered, "absent": ans.absent,
                       "lengths_clamped": ans.clamped, "excluded_nonfinite_blocks": excluded, **(row or {})}
                metrics.log(row, HGO_TB)
            if bar is not None:
                bar.update(1)
        self._header(self.round, 0, stop=True)
        self.transport.stop()
        dist.barrier()
        self._checkpoint(self.round)
        if bar is not None:
            bar.close()
        metrics.close()
        if by_time is not None:
            by_time.close()
        return write_summary(self.run_dir, self.summary(), summary_extra)

    def summary(self) -> dict:
        cfg, hg = self.cfg, self.cfg.hgo
        wall = self.wall_before + time.perf_counter() - self.t_start
        acc, loss = self.last_eval
        name, f, pre, params = aggregator_params(cfg)
        rounds = max(self.round, 1)
        tb = {p: round(self.timer.total.get(p, 0.0), 4)
              for p in ("compute", "communication", "aggregation", "update", "evaluation")}
        tau = self.tau if math.isfinite(self.tau) else "inf"
        return {
            "final_test_accuracy": acc, "best_test_accuracy": self.best_acc,
            "final_test_loss": loss if math.isfinite(loss) else None,
            "rounds_completed": self.round, "epochs_completed": self.round / self.rpe,
            "wall_seconds": wall, "rounds_per_second": self.round / wall if wall > 0 else 0.0,
            "restarts": self.restarts, "time_breakdown": tb,
            "bytes_received": self.bytes["values"] + self.bytes["headers"],
            "logical_time": self.logical_time,
            "b_i_mean": self.sums["b"] / max(self.sums["selected"], 1),
            "b_v_mean": self.sums["b_v"] / rounds,
            "inputs": dict(self.counts), "d": self.d, "bn_floats": 0,
            "hgo": {"q": self.q, "v": self.v, "tau": tau, "scenario": hg.scenario, "clock": hg.clock,
                    "transport": hg.transport, "rate": hg.rate, "profiles": hg.profiles,
                    "bytes_values": self.bytes["values"], "bytes_headers": self.bytes["headers"],
                    "sum_b": self.sums["b"], "answered_mean": self.sums["answered"] / rounds,
                    "block_fraction_mean": self.sums["b_v"] / rounds / self.d,
                    "rounds_without_quorum": self.sums["rounds_without_quorum"]},
            "config": {"algorithm": cfg.algorithm.name, "aggregator": name, "f": f, "pre": pre,
                       "aggregator_params": params, "device": str(self.device), "backend": self.topo.backend},
        }
