"""Milliseconds per call of every aggregation rule and pre-aggregator, next to `mean`.

    python -m launch.bench aggregators [--quick] [--write]
    python -m launch.bench_aggregators [--n 8 16 32 64] [--d 269722 1000000 11000000] [--device cpu cuda]
                                       [--threads 1 --clock cpu] [--rules ...] [--reps R] [--write]

For each device and d, one (64, d) float32 matrix of random rows is drawn and its first n rows are
aggregated, for n in {8, 16, 32, 64} and f = max(1, (n - 3) // 4) (so that Bulyan's n >= 4f + 3
holds and every rule runs with the same f). Each cell is the fastest of a few calls (one call at
d >= 10M, after no warm-up), in milliseconds, with its ratio to `mean` on the same input; `mean` is
timed again after every rule and its fastest call is the baseline. `passes` is
how many times the rule reads the n x d input, as each rule declares it; "Gram" is one float64
Gram matrix (O(n^2 d) multiply-adds, also one read). The two reference kernels are `gram` (the
centred float64 Gram matrix behind Krum, Multi-Krum, Bulyan, NNM and GM) and `sort` (the chunked
coordinate-wise sort behind CM, TM, MeaMed, Phocas, Bulyan and AKSEL).

`--write` replaces the "## Aggregation rules" section of docs/PERFORMANCE.md with the tables, the
command, the machine and the date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import textwrap
import time

import torch

from server.aggregators import AGGREGATORS, PRE_AGGREGATORS, get_aggregator
from server.aggregators.geometry import centred_gram
from server.aggregators.sorting import network_kind, sorted_chunks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "docs", "PERFORMANCE.md")
TITLE = "## Aggregation rules"
RULES = ["mean", "cm", "tm", "meamed", "phocas", "krum", "multikrum", "gm", "cc", "bulyan", "aksel"]
PRES = ["nnm", "bucketing", "clip", "arc"]
KERNELS = ["gram", "sort"]
#: targets (docs/PERFORMANCE.md, "The targets"): time per call as a multiple of mean's
TARGETS = {"cm": 8, "tm": 8, "meamed": 8, "gm": 10, "cc": 10}


NOTES = """How the rules spend their time, and why some miss their targets:

- `mean` reads the input once and is bound by memory bandwidth; below about 10M entries the input
  stays in the last-level cache, so `mean` is very fast there and every ratio is at its worst.
- Coordinate-wise rules (cm, tm, meamed, phocas, and the second stage of bulyan and aksel) sort each
  column with a network of `torch.minimum` / `torch.maximum` on cache-sized column chunks (one read
  of the input). A comparison network needs O(n log^2 n) comparisons per column against mean's n
  additions, so these rules are compute-bound and their ratio to mean grows with n (about log^2 n);
  the 8x target holds for small n only. torch.sort along dim 0 is about 10x slower than the networks
  (n = 8 to 64). meamed and phocas add a window search around the centre (one more pass in cache).
- The chunked loops run single-threaded on CPU (server/aggregators/threads.py): OpenMP teams stall
  when another process holds a core, which cost 20-70x on the shared 2-core machine. The table above was
  taken with one thread for everything and the CPU-time clock, so that it measures the kernels and
  not the other jobs; with two idle cores the single large ops (mean, weighted sums) run about twice
  as fast, which raises every ratio.
- krum, multikrum, bulyan and nnm are one float64 Gram matrix (O(n^2 d) multiply-adds, centred per
  chunk for accuracy) plus at most one pass; their ratio to mean grows with n.
  nnm adds a float32 mixing product (n x n times n x d) of the same order.
- gm uses the Gram matrix while n <= 4T (the Weiszfeld distances then cost no pass) and 2T direct
  passes beyond; cc is 2L passes (distances to the centre, then one weighted sum).
"""


def short(d: int) -> str:
    return f"{d / 1e6:.2g}M"


def declared_f(n: int) -> int:
    return max(1, (n - 3) // 4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _sort_pass(x: torch.Tensor) -> torch.Tensor:
    last = None
    for _, s in sorted_chunks(x):
        last = s
    return last


def build(name: str, n: int, f: int):
    """A callable x -> result for a rule, a pre-aggregator (its transform alone) or a reference kernel."""
    if name == "gram":
        return (lambda x: centred_gram(x)[0]), "Gram"
    if name == "sort":
        return _sort_pass, f"1 ({network_kind(n)})"
    if name in PRE_AGGREGATORS:
        agg = get_aggregator("mean", n, f, pre=[name])
        pre = agg.pres[0]
        return (lambda x: pre.transform(x, f)), pre.passes
    agg = get_aggregator(name, n, f)
    return (lambda x: agg(x, f)), agg.passes


#: the clock: wall time, or the calling thread's CPU time ("cpu": with --threads 1 it is what the call
#: costs on a core of its own, whatever else runs on the machine)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter


def time_call(fn, x: torch.Tensor, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn(x)
    _sync(x.device)
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        fn(x)
        _sync(x.device)
        best = min(best, clock() - t0)
    return best * 1e3


def bench_device(device: torch.device, ns: list[int], ds: list[int], names: list[str],
                 reps: int | None, ratios: dict[str, list[tuple[float, str]]]) -> str:
    """The markdown tables for one device; collects (ratio, cell) per rule with a target into ratios."""
    out = []
    for d in ds:
        big = d >= 10_000_000
        warmup, r = (0, 1) if big else (1, 3)
        if reps is not None:
            r = reps
        g = torch.Generator(device="cpu").manual_seed(d)
        x_all = torch.randn(max(ns), d, generator=g).add_(torch.randn(1, d, generator=g)).to(device)
        cells: dict[tuple[str, int], tuple[float, str]] = {}
        for n in ns:
            x = x_all[:n]
            f = declared_f(n)
            mean_fn, mean_passes = build("mean", n, f)
            mean_ms = time_call(mean_fn, x, 1, r)
            for name in names:
                if name == "mean":
                    continue
                fn, passes = build(name, n, f)
                cells[name, n] = (time_call(fn, x, warmup, r), passes)
                # mean again between rules: its fastest call is the baseline (robust to a busy machine)
                mean_ms = min(mean_ms, time_call(mean_fn, x, 0, 1))
                print(f"  {device.type} d={d} n={n} {name}: {cells[name, n][0]:.1f} ms", flush=True)
            cells["mean", n] = (mean_ms, mean_passes)
        del x_all
        head = f"\n**{device.type}, d = {d:,}** (f = {', '.join(f'{declared_f(n)}' for n in ns)} for n = " \
               f"{', '.join(map(str, ns))}; ms per call, x mean in parentheses)\n"
        lines = [head, "| rule | " + " | ".join(f"n = {n}" for n in ns) + " | passes over n x d |",
                 "|---|" + "---:|" * len(ns) + "---|"]
        for name in names:
            row = []
            for n in ns:
                ms, _ = cells[name, n]
                ratio = ms / cells["mean", n][0] if ("mean", n) in cells else float("nan")
                mark = ""
                if name in TARGETS:
                    ratios.setdefault(name, []).append((ratio, f"{device.type} n={n} d={short(d)}"))
                    mark = " **!**" if ratio > TARGETS[name] else ""
                row.append(f"{ms:.1f} ({ratio:.1f}x){mark}" if name != "mean" else f"{ms:.1f}")
            label = f"{name} (pre)" if name in PRE_AGGREGATORS else name
            lines.append(f"| {label} | " + " | ".join(row) + f" | {cells[name, ns[-1]][1]} |")
        out.append("\n".join(lines))
    return "\n".join(out)


def machine() -> str:
    from launch.bench import machine as system

    return f"{system()}, {torch.get_num_threads()} intra-op threads, " \
           f"{'CPU' if clock is time.thread_time else 'wall'} time"


def write_section(body: str) -> None:
    os.makedirs(os.path.dirname(PERF), exist_ok=True)
    text = open(PERF).read() if os.path.exists(PERF) else "# Performance\n"
    pattern = re.compile(rf"^{re.escape(TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{TITLE}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    with open(PERF, "w") as fh:
        fh.write(text.rstrip() + "\n")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m launch.bench_aggregators", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--d", type=int, nargs="+", default=[269_722, 1_000_000, 11_000_000])
    ap.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    ap.add_argument("--rules", nargs="+", default=None, help="subset of rules / pre-aggregators / kernels")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per cell (default 3, 1 at d >= 10M)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for everything, mean included (default: torch's); 1 is the stable "
                         "choice on a machine shared with other jobs")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or this thread's CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="n in {8, 32}, d in {269722, 1M}")
    ap.add_argument("--write", action="store_true", help="replace the section in docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d = [8, 32], [269_722, 1_000_000]
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (torch.get_num_threads() != 1 or "cuda" in devices):
        ap.error("--clock cpu measures one thread's CPU time: use it with --threads 1 and --device cpu")
    global clock
    clock = CLOCKS[args.clock]
    names = args.rules or [*RULES, *PRES, *KERNELS]
    if "mean" not in names:
        names = ["mean", *names]
    unknown = set(names) - set(AGGREGATORS) - set(PRE_AGGREGATORS) - set(KERNELS)
    if unknown:
        ap.error(f"unknown rules {sorted(unknown)}")
    start, load = time.time(), os.getloadavg()[0]
    ratios: dict[str, list[tuple[float, str]]] = {}
    tables = [bench_device(torch.device(dev), args.n, args.d, names, args.reps, ratios) for dev in devices]
    if argv is None:  # run as python -m launch.bench_aggregators
        cmd = " ".join(["python -m launch.bench_aggregators", *sys.argv[1:]])
    else:  # called by python -m launch.bench aggregators
        cmd = " ".join(["python -m launch.bench aggregators", *(a for a in argv if a != "--write")])
    verdicts = []
    for name, cells in ratios.items():
        missed = [c for c in cells if c[0] > TARGETS[name]]
        worst = max(cells)
        line = (f"- {name} (target {TARGETS[name]}x): {'met' if not missed else 'missed'} in "
                f"{len(cells) - len(missed) if not missed else len(missed)} of {len(cells)} cells"
                f"{'' if not missed else ' (' + ', '.join(c[1] for c in missed) + ')'}, worst {worst[0]:.1f}x")
        verdicts.append(textwrap.fill(line, width=105, subsequent_indent="  ", break_on_hyphens=False))
    body = (f"Command: `{cmd}`  \nMachine: {machine()}  \nDate: {datetime.date.today().isoformat()}, "
            f"{time.time() - start:.0f} s, load average {load:.1f} at the start\n" + "\n".join(tables)
            + "\n\nTargets, as ratios to mean (misses are marked **!** in the tables; krum, multikrum and nnm "
              "are to cost about one Gram matrix: compare them with the `gram` row):\n\n" + "\n".join(verdicts)
            + f"\n\n{NOTES}")
    print("\n" + TITLE + "\n\n" + body, flush=True)
    if args.write:
        write_section(body)
    return body


if __name__ == "__main__":
    main()
