"""The parameter server's round loop for ByzSGDm / ByzSGDnm (DESIGN.md, "Round protocol").

A round reads like the protocol: broadcast, gather, filter, aggregate, update, evaluate, log.
The server never learns which workers are Byzantine: it only sees m rows.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from common import checkpoint
from common.config import dataset_kwargs, model_kwargs
from common.data import load_dataset
from common.dist import Agreement, Channel, Heartbeat, Topology
from common.fault import fault_round, maybe_inject
from common.flat import flatten_model, write_header
from common.metrics import TB_NAMES, MetricsLogger, write_summary
from common.models import build_model
from common.schedule import learning_rate
from common.timing import PhaseTimer

from .aggregators import get_aggregator
from .aggregators.basic import midpoint_median
from .update import apply_update

log = logging.getLogger("byz")
META = 2  # trailing floats of every worker row: compute seconds, train loss


def rounds_per_epoch(cfg, train_size: int) -> int:
    return (train_size // int(cfg.workers)) // int(cfg.batch_size)


def aggregator_params(cfg) -> tuple[str, int, list, dict]:
    """(name, declared f, pre list, params) of the configured rule."""
    a = dict(cfg.aggregator)
    name, f, pre = a.pop("name"), a.pop("f"), list(a.pop("pre", []) or [])
    if f is None:
        raise ValueError("aggregator.f must be resolved before the server starts (launch resolves it)")
    return name, int(f), pre, a


@torch.no_grad()
def evaluate(model, x: Tensor, y: Tensor, batch: int = 1000) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        out = model(x[i:i + batch])
        loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(y), loss / len(y)


class Server:
    def __init__(self, cfg, topo: Topology, run_dir: str,
                 observers: list[Callable[[int, Tensor, Tensor], dict]] | None = None):
        self.cfg, self.topo, self.run_dir = cfg, topo, run_dir
        self.observers = observers or []
        self.device = topo.device
        ds = load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download), int(cfg.seed),
                          **dataset_kwargs(cfg))
        self.x_test, self.y_test = ds.x_test.to(self.device), ds.y_test.to(self.device)
        torch.manual_seed(int(cfg.seed))
        self.fm = flatten_model(build_model(cfg.model.name, ds.input_shape, ds.num_classes, **model_kwargs(cfg)),
                                self.device)
        self.d, self.k = self.fm.d, self.fm.k
        self.m = topo.m
        self.chan = Channel(topo, self.fm.buf, self.d + self.k + META)
        name, f, pre, params = aggregator_params(cfg)
        self.f = f
        self.agg = get_aggregator(name, self.m, f, pre=pre, **params)
        self.rpe = rounds_per_epoch(cfg, len(ds.y_train))
        self.total_rounds = int(cfg.epochs) * self.rpe
        if cfg.max_rounds is not None:
            self.total_rounds = min(self.total_rounds, int(cfg.max_rounds))
        self.timer = PhaseTimer(cuda_sync=self.device.type == "cuda")
        self.round = 0
        self.restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        self.best_acc, self.last_eval = 0.0, (float("nan"), float("nan"))
        self.bytes_received = 0
        self.counts = {"excluded_nonfinite": 0, "excluded_huge": 0, "rows_zero": 0}
        self.max_abs = float(cfg.filter.max_abs) if cfg.filter.max_abs is not None else math.inf
        # plain Python values for the round loop (a config lookup costs microseconds, every round)
        sch = cfg.schedule
        self.lr_of_epoch = functools.partial(learning_rate, str(sch.name), float(cfg.lr), epochs=int(cfg.epochs),
                                             milestones=list(sch.milestones), gamma=float(sch.gamma))
        self.ckpt_every, self.log_every = int(cfg.checkpoint.every), int(cfg.log.every)
        self.eval_every = int(cfg.eval_every)
        self.wd_server = float(cfg.weight_decay) if cfg.weight_decay_placement == "server" else 0.0
        self.normalize, self.eps = bool(cfg.algorithm.normalize), float(cfg.algorithm.eps)
        self.fault_round = fault_round(cfg, 0)
        self.wall_before = 0.0  # wall seconds of earlier attempts (restored from a checkpoint)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"round": self.round, "buf": self.fm.buf.cpu().clone(), "agg": self.agg.state_dict(),
                "best_acc": self.best_acc, "last_eval": self.last_eval, "bytes": self.bytes_received,
                "counts": dict(self.counts), "timer": dict(self.timer.total),
                "wall": self.wall_before + time.perf_counter() - self.t_start,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, s: dict) -> None:
        self.round = int(s["round"])
        self.fm.buf.copy_(s["buf"])
        self.agg.load_state_dict(s["agg"])
        self.best_acc, self.last_eval = s["best_acc"], tuple(s["last_eval"])
        self.bytes_received, self.counts = s["bytes"], dict(s["counts"])
        self.timer.total.update(s["timer"])
        self.wall_before = float(s["wall"])
        torch.set_rng_state(s["rng"])

    def _ckpt_names(self) -> list[str]:
        return ["server"] + [f"worker_{k}" for k in range(1, self.m + 1)]

    # ------------------------------------------------------------------------------------ round
    def _header(self, t: int, stop: bool, ckpt: bool) -> float:
        epoch = t // self.rpe
        lr = self.lr_of_epoch(epoch)
        write_header(self.fm.header, t, epoch, lr, float(stop), float(ckpt))  # H_ROUND .. H_CKPT
        return lr

    def _want_ckpt(self, t: int) -> bool:
        return self.ckpt_every > 0 and t > 0 and t % self.ckpt_every == 0

    def run(self, summary_extra: dict | None = None) -> dict:
        """Train to the end (resuming from the latest consistent checkpoint) and write summary.json."""
        cfg = self.cfg
        metrics = begin_run(self, Agreement(self.topo))  # every worker resumes from the same round
        self.heartbeat = Heartbeat(self.topo)
        torch.distributed.barrier()  # every rank is set up (start-up timeout); rounds use the round timeout
        bar = _progress(cfg, self.total_rounds, self.round)
        while self.round < self.total_rounds:
            row = self.step()
            if row is not None:
                metrics.log(row, TB_NAMES)
            if bar is not None:
                bar.update(1)
                if row and "test_accuracy" in row:
                    bar.set_postfix(acc=f"{row['test_accuracy']:.3f}", epoch=self.round // self.rpe)
        self._stop()
        if bar is not None:
            bar.close()
        metrics.close()
        return write_summary(self.run_dir, self.summary(), summary_extra)

    def step(self) -> dict | None:
        """One round: broadcast, gather, filter, aggregate, update, (evaluate); returns the metrics row."""
        cfg, timer, t = self.cfg, self.timer, self.round
        if t == self.fault_round:
            maybe_inject(cfg, 0, t)
        ckpt = self._want_ckpt(t)
        if ckpt:
            checkpoint.save_rank(self.run_dir, t, "server", self.state_dict())
        lr = self._header(t, stop=False, ckpt=ckpt)
        t0 = time.perf_counter()
        rows = self._exchange(t)
        if ckpt:  # every worker wrote its round-t state before sending its row
            checkpoint.mark_complete(self.run_dir, t, self._ckpt_names(), int(cfg.checkpoint.keep))
        d, k = self.d, self.k
        compute = float(rows[:, d + k].clamp(0, 1e6).nan_to_num(0).max())  # the slowest worker's compute
        timer.add("compute", compute)
        net = max(0.0, timer.last["communication"] - compute)
        timer.total["communication"] += net - timer.last["communication"]
        timer.last["communication"] = net
        with timer("aggregation"):
            a, counts = self._aggregate(rows)
        with timer("update"):  # server-side weight decay joins the step, not the rule's output `a`
            step = a + self.wd_server * self.fm.params if self.wd_server else a
            a_norm = apply_update(self.fm.params, step, lr, self.normalize, self.eps)  # ||step||
            if self.wd_server:  # the logged agg_norm is the rule's output ||a||, as without decay
                a_norm = float(torch.linalg.vector_norm(a, dtype=torch.float64))
        self.round = t + 1
        row = self._evaluate_if_due()
        if row is None and self.round % self.log_every:
            return None
        losses = rows[:, d + k + 1][torch.isfinite(rows[:, d + k + 1])]
        row = {"round": self.round, "epoch": self.round / self.rpe,
               "time": self.wall_before + time.perf_counter() - self.t_start,  # over every attempt
               "lr": lr, "agg_norm": a_norm, "train_loss": float(losses.median()) if len(losses) else None,
               "round_time": time.perf_counter() - t0,
               **{f"t_{p}": timer.last.get(p, 0.0) for p in ("compute", "communication", "aggregation", "update")},
               **counts, **(row or {})}
        for obs in self.observers:  # every worker's row in worker order (excluded rows included), Agg
            row.update(obs(t, rows[:, :d], a))
        return row

    def _exchange(self, t: int) -> Tensor:
        """Broadcast header + w_t, gather the m worker rows; on a timeout name the silent workers."""
        t0 = time.perf_counter()
        try:
            with self.timer("communication"):
                self.chan.broadcast()
                rows = self.chan.gather()
        except RuntimeError as e:
            late = self.heartbeat.missing(t)
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            line = (f"round {t} failed after {time.perf_counter() - t0:.1f} s: no answer from worker(s) "
                    f"{late or '?'} ({cause})")
            log.error("%s", line)
            raise RuntimeError(line) from e  # the launcher's FAILED file quotes this line
        self.bytes_received += rows.numel() * rows.element_size()
        return rows

    def _aggregate(self, rows: Tensor) -> tuple[Tensor, dict]:
        """Exclude non-finite and absurd rows (|entry| > filter.max_abs; they count against the declared
        f), aggregate the momenta with the rule and the BatchNorm statistics with the coordinate-wise median."""
        d, k = self.d, self.k
        u_rows, bn_rows = rows[:, :d], rows[:, d:d + k]
        head = rows[:, :d + k]
        # max |entry| per row, NaN propagating; classified in Python (m floats, one device sync)
        absmax = torch.maximum(head.amax(dim=1), -head.amin(dim=1)).tolist()
        nonfinite = [not math.isfinite(a) for a in absmax]
        huge = [math.isfinite(a) and a > self.max_abs for a in absmax]
        counts = {"excluded_nonfinite": sum(nonfinite), "excluded_huge": sum(huge),
                  "rows_zero": sum(a == 0 for a in absmax)}
        excluded = counts["excluded_nonfinite"] + counts["excluded_huge"]
        if excluded:
            ok = torch.tensor([not (a or b) for a, b in zip(nonfinite, huge)], device=rows.device)
            u_rows, bn_rows = u_rows[ok], bn_rows[ok]
        if u_rows.shape[0] == 0:
            raise RuntimeError(f"round {self.round}: every worker row was non-finite or beyond filter.max_abs")
        a = self.agg(u_rows, max(0, self.f - excluded))
        if k:
            self.fm.bn.copy_(midpoint_median(bn_rows))
        for key, v in counts.items():
            self.counts[key] += v
        return a, counts

    def _evaluate_if_due(self) -> dict | None:
        epochs_done, epoch_end = divmod(self.round, self.rpe)
        due = (epoch_end == 0 and epochs_done % self.eval_every == 0) or self.round == self.total_rounds
        if not due:
            return None
        with self.timer("evaluation"):
            acc, loss = evaluate(self.fm.model, self.x_test, self.y_test)
        self.best_acc, self.last_eval = max(self.best_acc, acc), (acc, loss)
        return {"test_accuracy": acc, "test_loss": loss, "t_evaluation": self.timer.last["evaluation"]}

    def _stop(self) -> None:
        """Stop header: workers write their final state, everyone meets at the barrier, then the final
        checkpoint is marked consistent."""
        self._header(self.round, stop=True, ckpt=True)
        checkpoint.save_rank(self.run_dir, self.round, "server", self.state_dict())
        self.chan.broadcast()
        torch.distributed.barrier()
        checkpoint.mark_complete(self.run_dir, self.round, self._ckpt_names(), int(self.cfg.checkpoint.keep))

    def summary(self) -> dict:
        cfg = self.cfg
        wall = self.wall_before + time.perf_counter() - self.t_start
        acc, loss = self.last_eval
        name, f, pre, params = aggregator_params(cfg)
        tb = {p: round(self.timer.total.get(p, 0.0), 4)
              for p in ("compute", "communication", "aggregation", "update", "evaluation")}
        return {
            "final_test_accuracy": acc, "best_test_accuracy": self.best_acc,
            "final_test_loss": loss if math.isfinite(loss) else None,
            "rounds_completed": self.round, "epochs_completed": self.round / self.rpe,
            "wall_seconds": wall, "rounds_per_second": self.round / wall if wall > 0 else 0.0,
            "restarts": self.restarts, "time_breakdown": tb, "bytes_received": self.bytes_received,
            "inputs": dict(self.counts), "d": self.d, "bn_floats": self.k,
            "config": {"algorithm": cfg.algorithm.name, "aggregator": name, "f": f, "pre": pre,
                       "aggregator_params": params, "device": str(self.device), "backend": self.topo.backend,
                       "pattern": self.topo.pattern},
        }


def begin_run(server, agree=None) -> MetricsLogger:
    """Start the clock, resume from the latest consistent checkpoint that every rank can read if there is
    one (torchtitan-style: a restarted job continues by itself; `agree` as in `checkpoint.resume`), and
    open the metrics log at the resumed round."""
    server.t_start = time.perf_counter()
    start = checkpoint.resume(server.run_dir, "server", server.load_state_dict, agree)
    if start is not None:
        dropped = checkpoint.forget_after(server.run_dir, start)
        if dropped:
            log.warning("checkpoint round(s) %s did not load on every rank: set aside as *.unreadable", dropped)
        log.info("resuming from the checkpoint of round %d (restart %d)", start, server.restarts)
    return MetricsLogger(server.run_dir, server.round, bool(server.cfg.log.tensorboard))


def _progress(cfg, total: int, initial: int):
    if not cfg.log.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="rounds", unit="rd", dynamic_ncols=True, mininterval=0.5)
