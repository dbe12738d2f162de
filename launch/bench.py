"""Benchmarks: `python -m launch.bench SCENARIO [--quick] [--write]` (and `make bench`).

Scenarios
  round        round time of the real system (1 + 8 processes, CPU/Gloo, MNIST-5k CNN, ByzSGDnm + cc,
               no attack) at B in {32, 256}, its breakdown, and the floor of this machine:
               floor = m * t_grad(B) / min(m, cores) + t_agg
  scaling      rounds/s and breakdown for m in {8, 16, 32, 64} workers (logreg and MLP on MNIST-5k)
  comm         a round with no compute: 1 + m processes that only broadcast and gather (the
               communication floor), through common.dist.Channel and through the generic wrappers
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
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
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

def t_grad(model_name: str, batch: int, reps: int = 30, dataset: str = "mnist5k", clock=time.perf_counter,
           **model_kw) -> float:
    """Median seconds of one forward + backward on `batch` samples, single-threaded, one process
    (wall time; `clock=time.process_time` gives the CPU time the step costs its process)."""
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
            t0 = clock()
            fm.grad.zero_()
            F.cross_entropy(fm.model(x), y).backward()
            if i >= 3:
                times.append(clock() - t0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def _t_grad_child(args):
    model_name, batch = args
    return t_grad(model_name, batch, reps=60, clock=time.process_time)


def t_grad_shared(model_name: str, batch: int, procs: int) -> float:
    """CPU seconds of one step when `procs` single-threaded processes run it at once on this machine's
    cores, as the m workers of a round do: with more processes than cores each step is time-sliced with
    the others on its core and finds its caches filled by them."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(procs) as pool:
        return statistics.mean(pool.map(_t_grad_child, [(model_name, batch)] * procs))


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
        summary, rows = run_system(["model=cnn", "aggregator=cc", "attack=none", "byzantine.count=0",
                                    f"batch_size={B}", "epochs=1000", f"max_rounds={rounds}",
                                    "eval_every=100000", "log.every=10", "checkpoint.every=0"])
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


def _comm_rank(rank: int, world: int, port: int, row_len: int, rounds: int, path: str, out) -> None:
    """One rank of the communication-only loop: broadcast a row_len buffer, gather a row_len row."""
    import torch.distributed as dist

    from common.dist import Channel, Topology

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    topo = Topology(rank, world, 0, list(range(1, world)), torch.device("cpu"), "gloo",
                    dist.new_group(list(range(world))))
    chan = Channel(topo, torch.zeros(row_len), row_len)
    rows = [torch.zeros(row_len) for _ in range(world)] if rank == 0 else None
    for i in range(rounds + 20):
        if i == 20:
            w0, c0 = time.perf_counter(), time.process_time()
        if path == "channel":
            chan.broadcast()
            chan.gather()
        else:  # the generic wrappers, for comparison
            dist.broadcast(chan.buf, 0, group=topo.data_group)
            dist.gather(chan.row, rows, dst=0, group=topo.data_group)
    out.put((rank, (time.perf_counter() - w0) / rounds, (time.process_time() - c0) / rounds))
    dist.barrier()
    dist.destroy_process_group()


def comm_round(m: int, row_len: int, rounds: int, path: str = "channel") -> tuple[float, float, float]:
    """(round seconds, server CPU seconds, mean worker CPU seconds) of a round with no compute:
    1 + m processes that only broadcast and gather, through common.dist.Channel."""
    import multiprocessing as mp

    from common.dist import free_port

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
        for path in ("channel", "wrappers"):
            rt, cs, cw = comm_round(m, row_len, rounds, path)
            name = "Channel (process group, prebuilt options)" if path == "channel" else "dist.broadcast / dist.gather"
            lines.append(f"| {m} | {row_len:,} ({model}) | {name} | {rt * 1e3:.2f} | {cs * 1e3:.2f} | {cw * 1e3:.3f} |")
    return "\n".join(lines)


def scenario_scaling(quick: bool) -> str:
    rounds = 40 if quick else 120
    lines = ["| model | m | rounds/s | round ms | compute | comm + idle | aggregation (cc) | update |",
             "|" + "---|" * 8]
    for model in ("logreg", "mlp"):
        for m in (8, 16, 32, 64):
            B = min(32, 4000 // m)
            _, rows = run_system([f"model={model}", "aggregator=cc", "attack=none", "byzantine.count=0",
                                  f"workers={m}", f"batch_size={B}", "epochs=1000", f"max_rounds={rounds}",
                                  "eval_every=100000", "log.every=10"])
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
                _, rows = run_system(["model=resnet20", "dataset=synthetic", "dataset.shape=[3,32,32]",
                                      f"dataset.n_train={n_train}", "dataset.n_test=1000", "aggregator=cc",
                                      "attack=none", "byzantine.count=0", f"batch_size={B}", "epochs=1000",
                                      f"max_rounds={rounds}", "eval_every=100000", "log.every=2",
                                      f"device={'cuda' if on_gpu else 'cpu'}", *extra], env=env)
            rt = steady_round_time(rows, skip=4 if not on_gpu else 10)
            rpe = (50000 // 8) // B
            proj = rt * rpe * 160
            util, mem = gpu.mean(), gpu.peak_mib()
            lines.append(f"| {B} | {'cuda' if on_gpu else 'cpu'} | {name} | {rt * 1e3:.1f} | {rpe} | {proj:.0f} | "
                         f"{PAPER_A_TABLE6[B]} | {proj / PAPER_A_TABLE6[B]:.2f} | "
                         f"{'n/a' if util is None else f'{util:.0f}'} | {'n/a' if mem is None else f'{mem:.0f}'} |")
    return "\n".join(lines)


SCENARIOS = {"round": scenario_round, "scaling": scenario_scaling, "comm": scenario_comm, "gpu": scenario_gpu,
             "aggregators": None}  # launch.bench_aggregators writes its own section
TITLES = {"round": "Round overhead vs the floor (CPU, Gloo, 1 + 8 processes)",
          "scaling": "Scaling with the number of workers m (CPU)",
          "comm": "Communication alone: broadcast + gather with no compute (CPU, Gloo)",
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
