"""The benchmark harness runs (numbers are shown by `make bench`, never asserted as timings here)."""
from __future__ import annotations

import time

import pytest
import torch

from launch import bench


@pytest.mark.e2e  # starts Gloo groups of 3 processes
def test_comm_round_moves_rows_on_both_paths():
    for path in ("channel", "wrappers"):
        rt, server_cpu, worker_cpu = bench.comm_round(2, 64, rounds=5, path=path)
        assert rt > 0 and server_cpu > 0 and worker_cpu > 0


@pytest.mark.e2e  # 1 + 2 processes, started from a child `python -m launch.run` that inherits `env`
def test_run_system_with_an_environment_runs_the_job_in_a_child_process():
    summary, rows = bench.run_system(["workers=2", "byzantine.count=0", "attack=none", "max_rounds=3",
                                      "log.every=1"], env={"BYZ_BENCH_PROBE": "1"})
    assert summary["rounds_completed"] == 3 and [r["round"] for r in rows] == [1, 2, 3]


def test_t_grad_is_the_median_step_after_three_warm_ups_and_restores_the_threads():
    # readings: a start for each of the 3 warm-ups (not timed), then (start, end) of 5 timed steps
    readings = iter([0.0, 100.0, 200.0, 300.0, 301.0, 400.0, 404.0, 500.0, 502.0, 600.0, 609.0, 700.0, 703.0])

    def clock():
        return next(readings)

    threads = torch.get_num_threads()
    assert bench.t_grad("logreg", 8, reps=5, clock=clock) == 3.0  # median of 1, 4, 2, 9, 3
    assert torch.get_num_threads() == threads
    assert bench.t_grad("logreg", 8, reps=3, clock=time.process_time) > 0  # the real clock runs too


def test_write_section_replaces_only_its_own_section(tmp_path, monkeypatch):
    perf = tmp_path / "PERFORMANCE.md"
    perf.write_text("# Performance\n\n## Scaling with the number of workers m (CPU)\n\nold table\n\n## Other\n\nkept\n")
    monkeypatch.setattr(bench, "PERF", str(perf))
    bench.write_section("scaling", "| new |", "python -m launch.bench scaling")
    text = perf.read_text()
    assert "old table" not in text and "| new |" in text and "## Other\n\nkept" in text
    assert "Command: `python -m launch.bench scaling`" in text


def test_gpu_utilisation_sampler_is_silent_without_a_gpu_tool(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with bench.GpuUtilisation(period_s=0.01) as gpu:
        time.sleep(0.05)
    assert gpu.mean() is None and gpu.peak_mib() is None


def test_gpu_utilisation_sampler_parses_nvidia_smi(monkeypatch):
    import shutil
    import sys

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(bench.GpuUtilisation, "QUERY", [sys.executable, "-c", "print('87, 4096')"])
    with bench.GpuUtilisation(period_s=0.01) as gpu:
        deadline = time.time() + 20
        while not gpu.samples and time.time() < deadline:
            time.sleep(0.01)
    assert gpu.mean() == 87.0 and gpu.peak_mib() == 4096.0


def test_gpu_utilisation_counts_only_the_gpus_the_job_used():
    gpu = bench.GpuUtilisation()
    # GPU 0 and 2 fill up during the job; GPU 1 idles at its resting memory
    gpu.samples = [[[10, 500], [0, 300], [20, 400]], [[90, 4000], [0, 300], [70, 3000]],
                   [[80, 4096], [0, 300], [60, 3500]]]
    assert gpu.mean() == 55.0  # (10 + 90 + 80 + 20 + 70 + 60) / 6
    assert gpu.peak_mib() == 7596.0  # 4096 + 3500 at the third sample
