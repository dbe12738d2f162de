"""Shared helpers of the end-to-end tests: launch a real process group and read its outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ranks(target, world: int, store_path: str, *args, messages: int, timeout: float = 120) -> list:
    """Start `world` spawned processes `target(rank, store_path, *args, queue)` (each joins a Gloo group
    through the file store at `store_path`), return the first `messages` items they put on the queue, and
    check that every process exits cleanly."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, store_path, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    items = [queue.get(timeout=timeout) for _ in range(messages)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"rank {procs.index(p)} exited with {p.exitcode}"
    return items


def launch(run_dir, *overrides: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m launch.run` with the given overrides and run.dir; returns the finished process."""
    cmd = [sys.executable, "-m", "launch.run", *overrides, "log.progress=false"]
    if run_dir is not None:
        cmd.append(f"run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


SUMMARY_KEYS = {
    "final_test_accuracy": float, "best_test_accuracy": float, "final_test_loss": float, "rounds_completed": int,
    "epochs_completed": float, "wall_seconds": float, "rounds_per_second": float, "restarts": int,
    "time_breakdown": dict, "bytes_received": int,
}
PHASES = ("compute", "communication", "aggregation", "update", "evaluation")


def contract_problems(run_dir) -> list[str]:
    """What a run directory lacks against the outputs contract (README "Outputs"): config.yaml,
    summary.json with its keys, types and accuracies in [0, 1], a non-empty metrics.jsonl, and
    TensorBoard event files under tb/."""
    problems = [f"missing {name}" for name in ("config.yaml", "summary.json", "metrics.jsonl")
                if not os.path.isfile(os.path.join(run_dir, name))]
    events = [f for _, _, files in os.walk(os.path.join(run_dir, "tb")) for f in files
              if f.startswith("events.out.tfevents")]
    if not events:
        problems.append("no TensorBoard event file under tb/")
    if problems:
        return problems
    s = summary(run_dir)
    for key, kind in SUMMARY_KEYS.items():
        ok = (int, float) if kind is float else (kind,)
        if key not in s or isinstance(s[key], bool) or not isinstance(s[key], ok):
            problems.append(f"summary.json '{key}' is missing or not {kind.__name__}")
    for key in ("final_test_accuracy", "best_test_accuracy"):
        if isinstance(s.get(key), (int, float)) and not 0.0 <= s[key] <= 1.0:
            problems.append(f"summary.json '{key}' = {s[key]} is not a fraction in [0, 1]")
    missing = [p for p in PHASES if p not in (s.get("time_breakdown") or {})]
    if missing:
        problems.append(f"time_breakdown lacks {missing}")
    if not metrics(run_dir):
        problems.append("metrics.jsonl is empty")
    return problems
