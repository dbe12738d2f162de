"""Benchmarks: `python -m launch.bench SCENARIO [--quick] [--write]` (and `make bench`).

Scenarios
  round        round time of the real system (1 + 8 processes, CPU/Gloo, MNIST-5k CNN, ByzSGDnm + cc,
               no attack) at B in {32, 256}, its breakdown, and the floor of this machine:
               floor = m * t_grad(B) / min(m, cores) + t_agg
  steps        CPU per step of the CNN when 1, `cores` (pinned) and 8 processes run it at once, with the
               kernel's default time slice and with a 50 ms one: what sharing a core costs a step
  threads      CPU and preemptions per round of every thread of every rank (server, mean worker), read
               from /proc while the `round` scenario's job runs at B = 32 (Linux)
  scaling      rounds/s and breakdown for m in {8, 16, 32, 64} workers (logreg and MLP on MNIST-5k)
  comm         a round with no compute: 1 + m processes that only exchange w_t and the rows (the
               communication floor), through common.dist.Channel in either pattern (p2p, collective)
               and through the generic dist.broadcast / dist.gather wrappers
  pattern      the whole system with comm.pattern=collective and p2p, runs interleaved (logreg at
               m = 8 and 64, the CNN at B = 32)
  sched        the same cases with perf.worker_batch=false and true (workers under SCHED_BATCH)
  slots        the same cases and the CNN at B = 256 with perf.compute_slots=0 and auto (at most one
               worker per core computes at once)
  gpu          ResNet-20 on CIFAR-10-shaped synthetic data, 1 + 8 ranks on one device, rounds per
               batch size projected to paper A's 160 epochs (Table 6), with GPU utilisation from
               nvidia-smi; on a GPU also with bf16 autocast + channels_last, and NCCL given 9 GPUs
  aggregators  milliseconds per call of every rule (launch.bench_aggregators)
  all          every scenario above

`--write` replaces the scenario's section of docs/PERFORMANCE.md with the table, the command, the
machine and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "docs", "PERFORMANCE.md")
PAPER_A_TABLE6 = {32: 2007, 64: 985, 128: 522, 256: 367, 512: 315, 1024: 309}  # seconds, 9 TITAN Xp GPUs


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


# ------------------------------------------------------------------------------------- running the system

def timing_job(model: str, batch: int, rounds: int, workers: int = 8, log_every: int = 10) -> list[str]:
    """The overrides every timing job shares: ByzSGDnm + cc, no attack and no Byzantine worker, no
    evaluation and no checkpoint inside the timed rounds."""
    return [f"model={model}", "aggregator=cc", "attack=none", "byzantine.count=0", f"workers={workers}",
            f"batch_size={batch}", "epochs=1000", f"max_rounds={rounds}", "eval_every=100000",
            f"log.every={log_every}", "checkpoint.every=0"]


def read_rows(run_dir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_system(overrides: list[str], env: dict[str, str] | None = None) -> tuple[dict, list[dict]]:
    """Run one job of the real system in a temporary directory; return summary.json and metrics rows.
    With `env`, the job runs as `python -m launch.run` in a child process with those variables added
    (e.g. CUDA_VISIBLE_DEVICES: the ranks inherit it; this process's own launcher would not pass it)."""
    import subprocess
    import sys

    from launch.node import compose
    from launch.run import launch_group, prepare

    with tempfile.TemporaryDirectory() as tmp:
        args = [*overrides, f"run.dir={tmp}/run", "log.progress=false", "log.tensorboard=false"]
        if env:
            proc = subprocess.run([sys.executable, "-m", "launch.run", *args], cwd=ROOT, env={**os.environ, **env},
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"benchmark job failed: {proc.stderr.strip()[-2000:]}")
            run_dir = f"{tmp}/run"
        else:
            cfg = compose(args)
            run_dir = prepare(cfg)
            launch_group(cfg, run_dir)
        with open(os.path.join(run_dir, "summary.json")) as fh:
            summary = json.load(fh)
        rows = read_rows(run_dir)
    return summary, rows


def steady_round_time(rows: list[dict], skip: int) -> float:
    """Seconds per round between the first logged round >= skip and the last row before evaluation."""
    timed = [r for r in rows if r["round"] >= skip and "test_accuracy" not in r]
    if len(timed) < 2:
        timed = [r for r in rows if r["round"] >= skip]
    a, b = timed[0], timed[-1]
    return (b["time"] - a["time"]) / max(1, b["round"] - a["round"])


def per_round_breakdown(rows: list[dict], skip: int) -> dict[str, float]:
    keep = [r for r in rows if r["round"] >= skip and "test_accuracy" not in r]
    return {p: statistics.mean(r[f"t_{p}"] for r in keep) for p in ("compute", "communication", "aggregation",
                                                                      "update")} if keep else {}


# ------------------------------------------------------------------------------------- floors

def step_costs(model_name: str, batch: int, reps: int = 30, dataset: str = "mnist5k", clock=time.perf_counter,
               **model_kw) -> tuple[list[float], float]:
    """Seconds of each of `reps` forward + backward steps on `batch` samples after 3 untimed warm-ups,
    single-threaded, in this process (wall time; `clock=time.process_time` gives the CPU time the step
    costs its process), and the involuntary context switches per timed step (preemptions)."""
    import resource

    from common.data import load_dataset
    from common.flat import flatten_model
    from common.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = load_dataset(dataset)
        fm = flatten_model(build_model(model_name, ds.input_shape, ds.num_classes, **model_kw))
        x, y = ds.x_train[:batch], ds.y_train[:batch]
        times = []
        for i in range(reps + 3):
            if i == 3:
                switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
            t0 = clock()
            fm.grad.zero_()
            F.cross_entropy(fm.model(x), y).backward()
            if i >= 3:
                times.append(clock() - t0)
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches
        return times, switches / max(1, reps)
    finally:
        torch.set_num_threads(threads)


def t_grad(model_name: str, batch: int, reps: int = 30, dataset: str = "mnist5k", clock=time.perf_counter,
           **model_kw) -> float:
    """Median seconds of one forward + backward on `batch` samples, single-threaded, one process
    (wall time; `clock=time.process_time` gives the CPU time the step costs its process)."""
    return statistics.median(step_costs(model_name, batch, reps, dataset, clock, **model_kw)[0])


SLICE_MS = 50.0  # the long time slice of the `steps` scenario


def request_slice(ms: float) -> str | None:
    """Ask Linux (6.12+, EEVDF) for a CPU time slice of `ms` for the calling thread: `sched_setattr(2)`
    with `sched_runtime` on its fair policy (no privilege needed). None when done, else why not."""
    import ctypes
    import platform

    calls = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(platform.machine())  # set, get
    if platform.system() != "Linux" or calls is None:
        return f"sched_setattr is not available on {platform.system()} {platform.machine()}"

    class SchedAttr(ctypes.Structure):  # struct sched_attr, SCHED_ATTR_SIZE_VER1
        _fields_ = [(n, ctypes.c_uint32) for n in ("size", "policy")] + [("flags", ctypes.c_uint64)] + \
                   [("nice", ctypes.c_int32), ("priority", ctypes.c_uint32)] + \
                   [(n, ctypes.c_uint64) for n in ("runtime", "deadline", "period")] + \
                   [(n, ctypes.c_uint32) for n in ("util_min", "util_max")]

    libc, attr = ctypes.CDLL(None, use_errno=True), SchedAttr()
    if libc.syscall(calls[1], 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return f"sched_getattr failed: {os.strerror(ctypes.get_errno())}"
    if attr.policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        return f"the thread's scheduling policy {attr.policy} is not a fair one"
    attr.size, attr.flags, attr.runtime = ctypes.sizeof(attr), 0, int(ms * 1e6)
    if libc.syscall(calls[0], 0, ctypes.byref(attr), 0) != 0:
        return f"sched_setattr failed: {os.strerror(ctypes.get_errno())}"
    return None


def _step_child(args) -> tuple[float, float] | str:
    model_name, batch, reps, cpu, slice_ms = args
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    why = request_slice(slice_ms) if slice_ms else None
    if why:
        return why
    times, switches = step_costs(model_name, batch, reps, clock=time.process_time)
    return statistics.median(times), switches


def step_costs_shared(model_name: str, batch: int, procs: int, reps: int = 60, pin: bool = False,
                      slice_ms: float = 0.0) -> list[tuple[float, float]] | str:
    """(median CPU seconds per step, involuntary switches per step) of each of `procs` single-threaded
    processes that run the step at once on this machine's cores, as the m workers of a round do (with
    more processes than cores each step is time-sliced with the others on its core); `pin` puts process
    i on core i mod cores, `slice_ms` asks for that time slice. A string says why it could not run."""
    import multiprocessing as mp

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    args = [(model_name, batch, reps, cores[i % len(cores)] if pin and cores else None, slice_ms)
            for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        out = pool.map(_step_child, args)
    return next((o for o in out if isinstance(o, str)), out)


def t_grad_shared(model_name: str, batch: int, procs: int) -> float:
    """CPU seconds of one step when `procs` single-threaded processes run it at once on this machine's
    cores, as the m workers of a round do: with more processes than cores each step is time-sliced with
    the others on its core and finds its caches filled by them."""
    return statistics.mean(c for c, _ in step_costs_shared(model_name, batch, procs))


def t_agg(rule: str, m: int, d: int, f: int = 0, reps: int = 20, **params) -> float:
    from server.aggregators import get_aggregator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(m, d)
        agg = get_aggregator(rule, m, f, **params)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            agg(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- scenarios

def scenario_round(quick: bool) -> str:
    m, cores = 8, os.cpu_count() or 1
    rounds = 60 if quick else 200
    lines = ["| B | rounds/s | round ms | compute | comm + idle | aggregation | update | t_grad ms | t_agg ms |"
             f" floor ms | round / floor | CPU per step, {m} processes | shared floor ms | round / shared floor |",
             "|" + "---|" * 14]
    for B in (32, 256):
        summary, rows = run_system(timing_job("cnn", B, rounds))
        rt = steady_round_time(rows, skip=20)
        bd = per_round_breakdown(rows, skip=20)
        tg = t_grad("cnn", B)
        ta = t_agg("cc", m, summary["d"], tau=0.1)
        floor = m * tg / min(m, cores) + ta
        tgc = t_grad_shared("cnn", B, m)
        floor_c = m * tgc / min(m, cores) + ta
        lines.append(f"| {B} | {1 / rt:.1f} | {rt * 1e3:.1f} | {bd['compute'] * 1e3:.1f} | "
                     f"{bd['communication'] * 1e3:.1f} | {bd['aggregation'] * 1e3:.2f} | {bd['update'] * 1e3:.2f} | "
                     f"{tg * 1e3:.1f} | {ta * 1e3:.2f} | {floor * 1e3:.1f} | **{rt / floor:.2f}** | "
                     f"{tgc * 1e3:.1f} | {floor_c * 1e3:.1f} | {rt / floor_c:.2f} |")
    return "\n".join(lines)


def scenario_steps(quick: bool) -> str:
    """What sharing a core costs a step: CPU per step of the MNIST-5k CNN when 1, `cores` (pinned) and
    m = 8 processes run it at once, with the kernel's default time slice and with a long one."""
    m, cores = 8, os.cpu_count() or 1
    lines = ["| B | processes | time slice | CPU ms per step (mean of the medians) | range over the processes |"
             " involuntary switches per step |", "|" + "---|" * 6]
    for B in (32, 256):
        reps = (20 if quick else 200) if B <= 64 else (5 if quick else 40)
        for procs, pin, slice_ms in ((1, False, 0.0), (cores, True, 0.0), (m, False, 0.0), (m, False, SLICE_MS)):
            label = f"{procs}" + (", one per core" if pin else "")
            kind = f"{slice_ms:g} ms asked" if slice_ms else "default"
            res = step_costs_shared("cnn", B, procs, reps=reps, pin=pin, slice_ms=slice_ms)
            if isinstance(res, str):
                lines.append(f"| {B} | {label} | {kind} | n/a ({res}) | | |")
                continue
            cpu = [c * 1e3 for c, _ in res]
            lines.append(f"| {B} | {label} | {kind} | {statistics.mean(cpu):.2f} | {min(cpu):.2f}-{max(cpu):.2f} | "
                         f"{statistics.mean(s for _, s in res):.2f} |")
    return "\n".join(lines)


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    return children


def thread_snapshot(root: int) -> dict[tuple[int, int], tuple[str, float, int]]:
    """(pid, tid) -> (thread name, CPU seconds, involuntary switches) of every thread of the ranks below
    process `root` (the processes that run Gloo threads)."""
    children, todo, pids = _proc_children(), [root], []
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            threads = {}
            for tid in tids:
                base = f"/proc/{pid}/task/{tid}"
                with open(f"{base}/stat") as fh:
                    rest = fh.read().rsplit(")", 1)[1].split()
                with open(f"{base}/comm") as fh:
                    name = fh.read().strip()
                with open(f"{base}/status") as fh:
                    invol = next(int(ln.split()[1]) for ln in fh if ln.startswith("nonvoluntary_ctxt_switches"))
                threads[(pid, tid)] = (name, (int(rest[11]) + int(rest[12])) / tick, invol)
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # a process or thread that ended meanwhile
        if any(name.startswith("gloo") for name, _, _ in threads.values()):
            out.update(threads)
    return out


def thread_accounting(overrides: list[str], warmup_s: float, window_s: float) -> dict:
    """Run the real system in a child `python -m launch.run` and read every rank's thread clocks over a
    window of steady rounds: CPU ms and involuntary switches per round, per kind of thread, for the
    server (the rank with the lowest process id: `launch.run` starts local rank 0 first) and the mean
    worker. Linux only (/proc)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        args = [*overrides, f"run.dir={tmp}/run", "log.progress=false", "log.tensorboard=false"]
        proc = subprocess.Popen([sys.executable, "-m", "launch.run", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(warmup_s)
            a, t0 = thread_snapshot(proc.pid), time.perf_counter()
            time.sleep(window_s)
            b, t1 = thread_snapshot(proc.pid), time.perf_counter()
        finally:
            err = proc.communicate()[1]
        if proc.returncode:
            raise RuntimeError(f"benchmark job failed: {err.strip()[-2000:]}")
        rows = read_rows(os.path.join(tmp, "run"))
    rt = steady_round_time(rows, skip=20)
    rounds = (t1 - t0) / rt
    workers, table = per_round_by_thread(a, b, rounds)
    return {"round_ms": rt * 1e3, "rounds": rounds, "workers": workers, "table": table}


def per_round_by_thread(a: dict, b: dict, rounds: float) -> tuple[int, dict[str, dict[str, list[float]]]]:
    """From two `thread_snapshot`s taken `rounds` rounds apart: the number of workers, and per role
    ("server": the rank with the lowest process id; "worker": the mean over the others) and kind of thread
    ("main", else the thread's name) [CPU ms, involuntary switches] per round. Threads absent from `a`
    (started in between) are left out."""
    ranks = sorted({pid for pid, _ in b})
    if len(ranks) < 2:
        raise RuntimeError("the job's ranks were not found under /proc")
    workers, table = len(ranks) - 1, {}
    for (pid, tid), (name, cpu, invol) in b.items():
        if (pid, tid) not in a:
            continue
        role, share = ("server", 1) if pid == ranks[0] else ("worker", workers)
        cell = table.setdefault(role, {}).setdefault("main" if pid == tid else name, [0.0, 0.0])
        cell[0] += (cpu - a[(pid, tid)][1]) * 1e3 / rounds / share
        cell[1] += (invol - a[(pid, tid)][2]) / rounds / share
    return workers, table


def scenario_threads(quick: bool) -> str:
    """Where a round's CPU goes, thread by thread (CNN, B = 32, the `round` scenario's job)."""
    if not os.path.isdir("/proc/self/task"):
        return "n/a: the thread clocks are read from Linux's /proc"
    res = thread_accounting(timing_job("cnn", 32, 400 if quick else 900), warmup_s=12.0,
                            window_s=3.0 if quick else 6.0)
    lines = [f"Round {res['round_ms']:.1f} ms over a window of {res['rounds']:.0f} rounds.", "",
             "| rank | thread | CPU ms per round | involuntary switches per round |", "|---|---|---|---|"]
    total = 0.0
    for role, n in (("server", 1), ("worker", res["workers"])):
        for kind, (cpu, invol) in sorted(res["table"].get(role, {}).items(), key=lambda kv: -kv[1][0]):
            total += cpu * n
            if cpu >= 0.01 or invol >= 0.1:
                lines.append(f"| {role if role == 'server' else 'each worker (mean)'} | {kind} | {cpu:.2f} | "
                             f"{invol:.1f} |")
    cores = os.cpu_count() or 1
    lines.append(f"| all | all | {total:.1f} ({total / cores:.1f} ms on each of {cores} cores) | |")
    return "\n".join(lines)


COMM_PATHS = {"p2p": "Channel, p2p (process group, prebuilt lists)",
              "collective": "Channel, collective (process group, prebuilt options)",
              "wrappers": "dist.broadcast / dist.gather"}


def _comm_rank(rank: int, world: int, port: int, row_len: int, rounds: int, path: str, out) -> None:
    """One rank of the communication-only loop: w_t (row_len floats) to every worker, a row_len row
    back from each; `path` is a key of COMM_PATHS."""
    import torch.distributed as dist

    from common.dist import Channel, Topology

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    topo = Topology(rank, world, 0, list(range(1, world)), torch.device("cpu"), "gloo",
                    dist.new_group(list(range(world))), pattern="p2p" if path == "p2p" else "collective")
    chan = Channel(topo, torch.zeros(row_len), row_len)
    rows = [torch.zeros(row_len) for _ in range(world)] if rank == 0 else None
    for i in range(rounds + 20):
        if i == 20:
            w0, c0 = time.perf_counter(), time.process_time()
        if path == "wrappers":  # the generic wrappers, for comparison
            dist.broadcast(chan.buf, 0, group=topo.data_group)
            dist.gather(chan.row, rows, dst=0, group=topo.data_group)
        else:
            chan.broadcast()
            chan.gather()
    w1, c1 = time.perf_counter(), time.process_time()
    if path != "wrappers":
        chan.broadcast()  # the stop header of a run: takes each worker's last posted receive (p2p)
    out.put((rank, (w1 - w0) / rounds, (c1 - c0) / rounds))
    dist.barrier()
    dist.destroy_process_group()


def comm_round(m: int, row_len: int, rounds: int, path: str = "p2p") -> tuple[float, float, float]:
    """(round seconds, server CPU seconds, mean worker CPU seconds) of a round with no compute:
    1 + m processes that only exchange w_t and the rows along `path` (a key of COMM_PATHS)."""
    import multiprocessing as mp

    from common.dist import free_port

    if path not in COMM_PATHS:
        raise ValueError(f"path={path!r} is unknown; choose one of {list(COMM_PATHS)}")
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_comm_rank, args=(r, m + 1, port, row_len, rounds, path, out)) for r in range(m + 1)]
    for p in procs:
        p.start()
    res = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return res[0][1], res[0][2], statistics.mean(r[2] for r in res[1:])


def scenario_comm(quick: bool) -> str:
    rounds = 100 if quick else 300
    lines = ["| m | floats per row | path | round ms | server CPU ms | CPU ms per worker |", "|" + "---|" * 6]
    for m, row_len, model in ((8, 46_732, "cnn"), (64, 7_852, "logreg")):
        for path, name in COMM_PATHS.items():
            rt, cs, cw = comm_round(m, row_len, rounds, path)
            lines.append(f"| {m} | {row_len:,} ({model}) | {name} | {rt * 1e3:.2f} | {cs * 1e3:.2f} | {cw * 1e3:.3f} |")
    return "\n".join(lines)


AB_CASES = (("logreg", 8, 32), ("logreg", 64, 32), ("cnn", 8, 32))


def ab_table(before: tuple[str, str], after: tuple[str, str], quick: bool, cases=AB_CASES) -> str:
    """The whole system with one override changed, `before` and `after` as (label, override), in the
    `cases` (model, m, B); the two settings alternate job by job (the machine's speed drifts), `reps`
    jobs each."""
    rounds, reps = (40, 1) if quick else (150, 2)
    times: dict[tuple, list[float]] = {}
    for _ in range(reps):
        for model, m, B in cases:
            for label, override in (before, after):
                _, rows = run_system([*timing_job(model, B, rounds, workers=m), override])
                times.setdefault((model, m, B, label), []).append(steady_round_time(rows, skip=20))
    (a, _), (b, _) = before, after
    lines = [f"| model | m | B | {a}: round ms (each job) | {b}: round ms (each job) | {b} / {a} |",
             "|" + "---|" * 6]
    for model, m, B in cases:
        ta, tb = times[model, m, B, a], times[model, m, B, b]
        each = [", ".join(f"{t * 1e3:.1f}" for t in ts) for ts in (ta, tb)]
        ratio = statistics.mean(tb) / statistics.mean(ta)
        lines.append(f"| {model} | {m} | {B} | {each[0]} | {each[1]} | {ratio:.2f} |")
    return "\n".join(lines)


def scenario_pattern(quick: bool) -> str:
    return ab_table(("collective", "comm.pattern=collective"), ("p2p", "comm.pattern=p2p"), quick)


def scenario_sched(quick: bool) -> str:
    return ab_table(("default policy", "perf.worker_batch=false"), ("SCHED_BATCH", "perf.worker_batch=true"), quick)


def scenario_slots(quick: bool) -> str:
    return ab_table(("no slots", "perf.compute_slots=0"), ("slots", "perf.compute_slots=auto"), quick,
                    cases=(*AB_CASES, ("cnn", 8, 256)))


def scenario_scaling(quick: bool) -> str:
    rounds = 40 if quick else 120
    lines = ["| model | m | rounds/s | round ms | compute | comm + idle | aggregation (cc) | update |",
             "|" + "---|" * 8]
    for model in ("logreg", "mlp"):
        for m in (8, 16, 32, 64):
            B = min(32, 4000 // m)
            _, rows = run_system(timing_job(model, B, rounds, workers=m))
            rt = steady_round_time(rows, skip=20)
            bd = per_round_breakdown(rows, skip=20)
            lines.append(f"| {model} | {m} | {1 / rt:.1f} | {rt * 1e3:.1f} | {bd['compute'] * 1e3:.1f} | "
                         f"{bd['communication'] * 1e3:.1f} | {bd['aggregation'] * 1e3:.2f} | "
                         f"{bd['update'] * 1e3:.2f} |")
    return "\n".join(lines)


class GpuUtilisation:
    """Samples `nvidia-smi` (GPU busy %, memory used) in a thread while a job runs; `mean()` and
    `peak_mib()` are None where no NVIDIA GPU or tool is present."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, period_s: float = 0.25):
        import shutil

        self.period, self.samples, self.enabled = period_s, [], shutil.which("nvidia-smi") is not None
        self._stop = None

    def _loop(self) -> None:
        import subprocess

        while not self._stop.wait(self.period):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout
                gpus = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
            if gpus:
                self.samples.append(gpus)  # one (busy %, MiB) pair per GPU

    def _used(self) -> list[int]:
        """GPUs the job used: those whose memory grew during the samples (all of them if none did)."""
        n = min(len(s) for s in self.samples)
        grew = [i for i in range(n) if max(s[i][1] for s in self.samples) > min(s[i][1] for s in self.samples)]
        return grew or list(range(n))

    def __enter__(self) -> GpuUtilisation:
        import threading

        if self.enabled:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def mean(self) -> float | None:
        """Busy %, averaged over the samples and the GPUs the job used."""
        if not self.samples:
            return None
        used = self._used()
        return statistics.mean(s[i][0] for s in self.samples for i in used)

    def peak_mib(self) -> float | None:
        """The largest memory in use at one sample, summed over the GPUs the job used."""
        if not self.samples:
            return None
        used = self._used()
        return max(sum(s[i][1] for i in used) for s in self.samples)


def scenario_gpu(quick: bool) -> str:
    """ResNet-20, 1 + 8 ranks on one device (Gloo with host staging; NCCL as well where 9 GPUs give
    every rank its own), without and with the GPU speed options; projected to 160 epochs."""
    on_gpu = torch.cuda.is_available()
    sizes = (32, 64, 128, 256, 512, 1024) if on_gpu and not quick else (32, 64)
    rounds = 40 if on_gpu else 6
    n_train = 50000 if on_gpu else 8 * 64 * 4
    one_gpu = {"CUDA_VISIBLE_DEVICES": "0"} if on_gpu else None  # all 9 ranks on GPU 0, however many exist
    variants = [("gloo, shared device", ["comm.backend=gloo"], one_gpu)]
    if on_gpu and not quick:
        variants.append(("gloo, bf16 + channels_last", ["comm.backend=gloo", "perf.autocast=bf16",
                                                        "perf.channels_last=true"], one_gpu))
        if torch.cuda.device_count() >= 9:
            variants.append(("nccl, one GPU per rank", ["comm.backend=nccl"], None))
    lines = ["| B x 8 | device | setup | round ms | rounds/epoch | projected 160 epochs (s) | paper A Table 6 (s) |"
             " ratio | GPU busy % | GPU memory MiB |", "|" + "---|" * 10]
    for B in sizes:
        for name, extra, env in variants:
            with GpuUtilisation() as gpu:
                _, rows = run_system([*timing_job("resnet20", B, rounds, log_every=2), "dataset=synthetic",
                                      "dataset.shape=[3,32,32]", f"dataset.n_train={n_train}", "dataset.n_test=1000",
                                      f"device={'cuda' if on_gpu else 'cpu'}", *extra], env=env)
            rt = steady_round_time(rows, skip=4 if not on_gpu else 10)
            rpe = (50000 // 8) // B
            proj = rt * rpe * 160
            util, mem = gpu.mean(), gpu.peak_mib()
            lines.append(f"| {B} | {'cuda' if on_gpu else 'cpu'} | {name} | {rt * 1e3:.1f} | {rpe} | {proj:.0f} | "
                         f"{PAPER_A_TABLE6[B]} | {proj / PAPER_A_TABLE6[B]:.2f} | "
                         f"{'n/a' if util is None else f'{util:.0f}'} | {'n/a' if mem is None else f'{mem:.0f}'} |")
    return "\n".join(lines)


SCENARIOS = {"round": scenario_round, "steps": scenario_steps, "threads": scenario_threads,
             "scaling": scenario_scaling, "comm": scenario_comm, "pattern": scenario_pattern, "sched": scenario_sched,
             "slots": scenario_slots, "gpu": scenario_gpu,
             "aggregators": None}  # launch.bench_aggregators writes its own section
TITLES = {"round": "Round overhead vs the floor (CPU, Gloo, 1 + 8 processes)",
          "steps": "What sharing a core costs a step (CPU)",
          "threads": "Where a round's CPU goes, thread by thread (CPU, Gloo, 1 + 8 processes, B = 32)",
          "scaling": "Scaling with the number of workers m (CPU)",
          "comm": "Communication alone: w_t out and the rows back with no compute (CPU, Gloo)",
          "pattern": "Point-to-point against collectives in the whole system (CPU, Gloo)",
          "sched": "Workers under SCHED_BATCH against the default policy in the whole system (CPU, Gloo)",
          "slots": "Compute slots against none in the whole system (CPU, Gloo)",
          "gpu": "ResNet-20, 1 + 8 ranks on one device, projected to 160 epochs",
          "aggregators": "Aggregation rules"}


def write_section(name: str, table: str, command: str) -> None:
    os.makedirs(os.path.dirname(PERF), exist_ok=True)
    text = open(PERF).read() if os.path.exists(PERF) else "# Performance\n"
    title = f"## {TITLES[name]}"
    body = (f"{title}\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
            f"Date: {datetime.date.today().isoformat()}\n\n{table}\n")
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    with open(PERF, "w") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m launch.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=[*SCENARIOS, "all"])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and sizes (smoke run)")
    ap.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        if name == "aggregators":  # one thread's CPU time, as the documented table (other jobs stay out)
            rest = ["--threads", "1", "--clock", "cpu"] + (["--quick"] if args.quick else [])
            if args.write:
                rest.append("--write")
            from launch import bench_aggregators

            bench_aggregators.main(rest)
            continue
        table = SCENARIOS[name](args.quick)
        print(f"\n## {TITLES[name]}\n\n{table}\n", flush=True)
        if args.write:
            cmd = f"python -m launch.bench {name}" + (" --quick" if args.quick else "")
            write_section(name, table, cmd)


if __name__ == "__main__":
    main()
