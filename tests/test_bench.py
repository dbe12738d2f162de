"""The benchmark harness runs (numbers are shown by `make bench`, never asserted as timings here)."""
from __future__ import annotations

import time

import pytest
import torch

from launch import bench


@pytest.mark.e2e  # starts Gloo groups of 3 processes
def test_comm_round_runs_on_every_path_and_refuses_an_unknown_one():
    """Timings only: what the rows carry is checked in test_channel.py."""
    for path in bench.COMM_PATHS:
        rt, server_cpu, worker_cpu = bench.comm_round(2, 64, rounds=5, path=path)
        assert rt > 0 and server_cpu > 0 and worker_cpu > 0
    with pytest.raises(ValueError, match="path='tree' is unknown"):
        bench.comm_round(2, 64, rounds=5, path="tree")


def test_ab_tables_alternate_the_settings_and_compare_their_means(monkeypatch):
    calls = []

    def fake_run(overrides, env=None):
        calls.append(overrides)
        ms = 40.0 if "comm.pattern=collective" in overrides else 30.0
        ms += len(calls) / 10  # each job a little slower: the mean must use each pattern's own jobs
        return {}, [{"round": 20, "time": 0.0}, {"round": 30, "time": 10 * ms / 1e3}]

    monkeypatch.setattr(bench, "run_system", fake_run)
    lines = bench.scenario_pattern(quick=False).splitlines()
    patterns = [o[-1] for o in calls]
    assert patterns == ["comm.pattern=collective", "comm.pattern=p2p"] * 6  # alternate job by job
    assert calls[0] == ["model=logreg", "aggregator=cc", "attack=none", "byzantine.count=0", "workers=8",
                        "batch_size=32", "epochs=1000", "max_rounds=150", "eval_every=100000", "log.every=10",
                        "checkpoint.every=0", "comm.pattern=collective"]
    assert any("model=logreg" in o and "workers=64" in o for o in calls)
    assert lines[0].startswith("| model | m | B | collective: round ms (each job) | p2p: round ms")
    assert lines[2] == "| logreg | 8 | 32 | 40.1, 40.7 | 30.2, 30.8 | 0.75 |"
    calls.clear()
    bench.scenario_sched(quick=True)  # one job per setting, the policy switched by the last override
    assert [o[-1] for o in calls] == ["perf.worker_batch=false", "perf.worker_batch=true"] * 3
    calls.clear()
    lines = bench.scenario_slots(quick=True).splitlines()  # the sched cases and the CNN at B = 256
    assert [o[-1] for o in calls] == ["perf.compute_slots=0", "perf.compute_slots=auto"] * 4
    assert "model=cnn" in calls[-1] and "batch_size=256" in calls[-1]
    assert lines[-1].startswith("| cnn | 8 | 256 |")


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


def test_step_costs_time_each_step_after_the_warm_ups_and_count_preemptions():
    times, switches = bench.step_costs("logreg", 8, reps=4, clock=time.process_time)
    assert len(times) == 4 and all(t > 0 for t in times) and switches >= 0


def test_request_slice_changes_the_calling_thread_alone():
    import platform
    import threading

    if platform.system() != "Linux":
        assert bench.request_slice(bench.SLICE_MS) is not None
        return
    seen = {}

    def slice_ns() -> int | None:
        try:
            with open("/proc/thread-self/sched") as fh:
                return next((int(ln.split(":")[1]) for ln in fh if ln.startswith("se.slice")), None)
        except OSError:
            return None

    def probe():  # in its own thread, so that the test process keeps its slice
        seen["why"] = bench.request_slice(37.0)
        seen["slice"] = slice_ns()

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    if seen["why"] is not None:  # refused here (a seccomp filter, another architecture): said in words
        assert isinstance(seen["why"], str) and seen["why"]
        return
    major, minor = (int(v) for v in platform.release().split(".")[:2])
    if seen["slice"] is not None and (major, minor) >= (6, 12):  # earlier kernels accept and ignore it
        assert seen["slice"] == 37_000_000  # the probe thread got it
        assert slice_ns() != 37_000_000  # the test's own thread did not


@pytest.mark.e2e  # starts 2 spawned processes
def test_step_costs_shared_runs_one_process_per_core_pinned():
    out = bench.step_costs_shared("logreg", 8, 2, reps=3, pin=True)
    assert len(out) == 2 and all(c > 0 and s >= 0 for c, s in out)


def test_steps_table_averages_the_processes_and_says_why_a_row_could_not_run(monkeypatch):
    calls = []

    def fake(model, batch, procs, reps=60, pin=False, slice_ms=0.0):
        calls.append((batch, procs, pin, slice_ms, reps))
        if slice_ms:
            return "sched_setattr failed: Operation not permitted"
        return [(0.004 + 0.001 * i, 1.5) for i in range(procs)]

    monkeypatch.setattr(bench, "step_costs_shared", fake)
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    rows = bench.scenario_steps(quick=True).splitlines()[2:]
    assert len(rows) == 8  # 4 settings x B in (32, 256)
    assert rows[0] == "| 32 | 1 | default | 4.00 | 4.00-4.00 | 1.50 |"
    assert rows[1] == "| 32 | 2, one per core | default | 4.50 | 4.00-5.00 | 1.50 |"
    assert rows[2] == "| 32 | 8 | default | 7.50 | 4.00-11.00 | 1.50 |"
    assert rows[3] == "| 32 | 8 | 50 ms asked | n/a (sched_setattr failed: Operation not permitted) | | |"
    assert calls[:4] == [(32, 1, False, 0.0, 20), (32, 2, True, 0.0, 20), (32, 8, False, 0.0, 20),
                         (32, 8, False, bench.SLICE_MS, 20)]  # the one-per-core row is the pinned run
    assert calls[4][:2] == (256, 1) and calls[4][4] == 5


def test_per_round_by_thread_divides_by_rounds_and_averages_the_workers():
    # two snapshots 100 rounds apart: server pid 10 (main + a loop thread), workers 20 and 30;
    # thread 31 started in between and is left out
    a = {(10, 10): ("python", 1.0, 5), (10, 11): ("gloo_tcp_loop", 0.5, 0),
         (20, 20): ("python", 2.0, 10), (30, 30): ("python", 3.0, 20)}
    b = {(10, 10): ("python", 1.2, 105), (10, 11): ("gloo_tcp_loop", 0.55, 50),
         (20, 20): ("python", 2.6, 610), (30, 30): ("python", 3.8, 820), (30, 31): ("python", 9.0, 9)}
    workers, table = bench.per_round_by_thread(a, b, rounds=100.0)
    assert workers == 2
    assert table["server"]["main"] == pytest.approx([2.0, 1.0])  # 0.2 s / 100 rounds; 100 switches / 100
    assert table["server"]["gloo_tcp_loop"] == pytest.approx([0.5, 0.5])
    assert table["worker"]["main"] == pytest.approx([7.0, 7.0])  # (6 + 8) ms / 2 workers; (6 + 8) / 2
    assert "python" not in table["worker"]  # the thread absent from the first snapshot
    with pytest.raises(RuntimeError, match="ranks were not found"):
        bench.per_round_by_thread({}, {(10, 10): ("python", 1.0, 0)}, rounds=1.0)


@pytest.mark.e2e  # a child process with a Gloo group of one rank
def test_thread_snapshot_reads_the_threads_of_processes_that_run_gloo():
    import os
    import subprocess
    import sys

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc")
    code = ("import sys, torch.distributed as dist; dist.init_process_group('gloo', store=dist.HashStore(), rank=0,"
            " world_size=1); print('up', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        snap = bench.thread_snapshot(child.pid)
    finally:
        child.communicate("")
    assert {pid for pid, _ in snap} == {child.pid}  # the group's rank, found through its Gloo threads
    assert (child.pid, child.pid) in snap and any(name.startswith("gloo") for name, _, _ in snap.values())
    assert all(cpu >= 0 and invol >= 0 for _, cpu, invol in snap.values())


def test_threads_table_lists_server_and_mean_worker_threads_and_the_total(monkeypatch):
    res = {"round_ms": 30.0, "rounds": 200.0, "workers": 2,
           "table": {"server": {"main": [2.0, 1.0], "gloo_tcp_loop": [0.5, 2.0]},
                     "worker": {"main": [6.0, 6.5], "pt_gloo_runloop": [0.001, 0.0]}}}
    monkeypatch.setattr(bench, "thread_accounting", lambda *a, **k: res)
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    lines = bench.scenario_threads(quick=True).splitlines()
    assert lines[0] == "Round 30.0 ms over a window of 200 rounds."
    assert lines[4:] == ["| server | main | 2.00 | 1.0 |", "| server | gloo_tcp_loop | 0.50 | 2.0 |",
                         "| each worker (mean) | main | 6.00 | 6.5 |",  # the idle run loop is left out
                         "| all | all | 14.5 (7.3 ms on each of 2 cores) | |"]
