"""Shared helpers of the end-to-end tests: launch a real process group and read its outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
