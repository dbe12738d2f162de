"""Faults with real processes: SIGKILL of a worker or the server, a hung worker, garbage rows, user errors."""
import json
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, launch, metrics, summary

SHORT = ["aggregator=cm", "attack=bitflip", "max_rounds=40", "checkpoint.every=10", "log.every=5"]


def _final_params(run_dir):
    from common import checkpoint

    rnd = checkpoint.latest_round(str(run_dir))
    return rnd, checkpoint.load_rank(str(run_dir), rnd, "server")["buf"]


def _rounds_unique_and_complete(run_dir, last):
    rounds = [r["round"] for r in metrics(run_dir)]
    assert rounds == list(range(5, last + 1, 5)), rounds


@pytest.mark.e2e
def test_sigkill_of_a_worker_or_the_server_or_a_damaged_checkpoint_resumes_bitwise_exactly(tmp_path):
    launch(tmp_path / "clean", *SHORT)
    rnd, clean = _final_params(tmp_path / "clean")
    assert rnd == 40
    for who in (3, 0):  # worker 3, then the server
        run = tmp_path / f"kill{who}"
        launch(run, *SHORT, "fault.kind=kill", f"fault.rank={who}", "fault.round=25")
        s = summary(run)
        assert s["restarts"] == 1 and s["rounds_completed"] == 40
        _rounds_unique_and_complete(run, 40)
        rnd, params = _final_params(run)
        assert rnd == 40 and torch.equal(params, clean), f"resume after killing rank {who} is not exact"
    # a damaged file of the newest round: every rank falls back to the older kept round (30) together
    (run / "checkpoints" / "round_00000040" / "worker_3.pt").write_bytes(b"torn")
    proc = launch(run, *SHORT)
    assert "round 40: worker_3.pt" in proc.stderr and summary(run)["rounds_completed"] == 40
    _rounds_unique_and_complete(run, 40)
    rnd, params = _final_params(run)
    assert rnd == 40 and torch.equal(params, clean), "resume from the older kept round is not exact"


@pytest.mark.e2e
def test_hung_worker_times_out_restarts_and_completes(tmp_path):
    run = tmp_path / "hang"
    proc = launch(run, *SHORT, "max_rounds=20", "fault.kind=stop", "fault.rank=5", "fault.round=12",
                  "comm.timeout_round_s=4")
    s = summary(run)
    assert s["restarts"] == 1 and s["rounds_completed"] == 20
    _rounds_unique_and_complete(run, 20)
    out = proc.stdout + proc.stderr
    assert "no answer from worker(s) [5]" in out
    # the round timeout (4 s) fired, not the start-up timeout (300 s)
    waited = re.search(r"round 12 failed after ([0-9.]+) s", out)
    assert waited and float(waited.group(1)) < 60, out[-2000:]


@pytest.mark.e2e
def test_a_run_out_of_restarts_writes_failed_with_the_ranks_error_and_exits_1(tmp_path):
    from launch.report import load_run

    run = tmp_path / "gives_up"
    base = ["workers=3", "byzantine.count=0", "attack=none", "log.every=1"]
    launch(run, *base, "max_rounds=2")  # a finished run, then a longer resume of it that fails
    assert summary(run)["rounds_completed"] == 2
    proc = launch(run, *base, "max_rounds=10", "fault.kind=raise", "fault.rank=2", "fault.round=4",
                  "run.max_restarts=0", check=False)
    assert proc.returncode == 1
    assert not (run / "summary.json").exists()  # the first run's summary is not this run's result
    assert not load_run(str(run)).ok and load_run(str(run)).reason.startswith("FAILED: ")
    line = (run / "FAILED").read_text()
    assert line.count("\n") == 1 and f"error: run failed after 0 restart(s): {line.strip()}" in proc.stderr
    # the root cause comes first, from the ranks' own records (the launcher may report only the server)
    assert line.startswith("worker 2 (rank 2): RuntimeError: injected fault at round 4 on rank 2"), line
    assert json.loads((run / "errors" / "rank_2.json").read_text())["attempt"] == 0


@pytest.mark.e2e
def test_nan_rows_are_excluded_and_cost_under_two_points(tmp_path):
    accs = {}
    for attack in ("none", "nan"):
        launch(tmp_path / attack, "aggregator=cm", f"attack='{attack}'", "epochs=5")
        s = summary(tmp_path / attack)
        accs[attack] = s["final_test_accuracy"]
        assert s["inputs"]["excluded_nonfinite"] == (3 * s["rounds_completed"] if attack == "nan" else 0)
    from common import checkpoint

    buf = checkpoint.load_rank(str(tmp_path / "nan"), 75, "server")["buf"]
    assert torch.isfinite(buf).all()
    assert accs["nan"] >= accs["none"] - 0.02, accs


def _cli(*overrides, tmp):
    return subprocess.run([sys.executable, "-m", "launch.run", *overrides, f"run.dir={tmp}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides,expect", [
    (["aggregator=nope"], "aggregator='nope' is unknown"),
    (["nosuchfield=1"], "nosuchfield is not a configuration field"),
    (["aggregator=krum", "byzantine.count=4"], "aggregator 'krum' needs n >= 2f + 2: got n=8, f=4"),
    (["batch_size=600"], "batch_size=600 exceeds the shard size 500"),
    (["workers=0"], "workers=0 must be >= 1"),
    (["epochs=0"], "epochs=0 must be >= 1"),
    (["dataset=cifar10", "dataset.root=/nonexistent"], "dataset.download=true"),
])
def test_user_errors_print_one_line_and_exit_nonzero_before_any_process_starts(tmp_path, overrides, expect):
    proc = _cli(*overrides, tmp=tmp_path / "run")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # rejected before the run was prepared


def test_port_in_use_and_unwritable_run_dir_are_user_errors(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _cli(f"comm.master_port={port}", tmp=tmp_path / "run")
    assert proc.returncode == 2 and f"comm.master_port={port} is already in use" in proc.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _cli(tmp=blocker / "run")
    assert proc.returncode == 2 and "is not writable" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.e2e
def test_huge_rows_never_reach_the_parameters_even_with_mean_and_zero_rows_are_counted(tmp_path):
    launch(tmp_path / "large", "aggregator=mean", "attack=large", "epochs=3")
    s = summary(tmp_path / "large")
    assert s["inputs"]["excluded_huge"] == 3 * s["rounds_completed"] and s["inputs"]["excluded_nonfinite"] == 0
    assert s["final_test_accuracy"] > 0.75  # the mean of the 5 honest rows trains (84% after 3 epochs here)
    launch(tmp_path / "zero", "aggregator=cm", "attack=zero", "max_rounds=10")
    s = summary(tmp_path / "zero")
    assert s["inputs"]["rows_zero"] == 30 and s["inputs"]["excluded_huge"] == 0


def test_resuming_a_checkpointed_run_with_another_configuration_is_refused(tmp_path):

    from common.config import ConfigError
    from launch.node import compose
    from launch.run import prepare

    run = tmp_path / "run"
    first = prepare(compose(["aggregator=cm", "max_rounds=20", f"run.dir={run}"]))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "manifest.json").write_text(json.dumps({"complete": [10]}))
    saved = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"checkpointed at round 10 with aggregator.name='cm', not 'krum'"):
        prepare(compose(["aggregator=krum", "max_rounds=20", f"run.dir={run}"]))
    with pytest.raises(ConfigError, match=r"seed=0, not 3"):
        prepare(compose(["aggregator=cm", "seed=3", f"run.dir={run}"]))
    with pytest.raises(ConfigError, match=r"^max_rounds=5 is below round 10, where run.dir=.* is checkpointed"):
        prepare(compose(["aggregator=cm", "max_rounds=5", f"run.dir={run}"]))
    assert (run / "config.yaml").read_text() == saved  # a refused resume writes nothing
    # a longer run, other logging or checkpoint cadence: the same training, resumed
    again = prepare(compose(["aggregator=cm", "max_rounds=40", "checkpoint.every=5", "log.every=2", f"run.dir={run}"]))
    assert again == first


def test_console_script_finds_the_config_tree_from_any_directory(tmp_path):
    import os

    script = os.path.join(os.path.dirname(sys.executable), "byz-run")
    ok = subprocess.run([script, "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "aggregator:" in ok.stdout, ok.stderr[-500:]
    bad = subprocess.run([script, "aggregator=nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "aggregator='nope' is unknown" in bad.stderr


def test_a_run_directory_without_checkpoint_keeps_its_configuration_too(tmp_path):
    from common.config import ConfigError
    from launch.node import compose
    from launch.run import prepare

    run = tmp_path / "run"
    prepare(compose(["aggregator=cm", f"run.dir={run}"]))
    (run / "metrics.jsonl").write_text('{"round": 10}\n')  # a run that crashed before its first checkpoint
    with pytest.raises(ConfigError, match=r"holds a run \(not checkpointed\) with aggregator.name='cm', not 'mean'"):
        prepare(compose(["aggregator=mean", "lr=0.7", f"run.dir={run}"]))
    assert (run / "metrics.jsonl").read_text() == '{"round": 10}\n'
    prepare(compose(["aggregator=cm", f"run.dir={run}"]))  # the same job again: a fresh start is allowed


def test_the_guard_needs_a_run_and_names_a_damaged_config(tmp_path):
    from common.config import ConfigError
    from launch.node import compose
    from launch.run import prepare

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("aggregator: {f: null}\n")  # e.g. hydra's own copy: no run happened
    prepare(compose(["aggregator=cm", f"run.dir={run}"]))
    (run / "metrics.jsonl").write_text('{"round": 10}\n')
    (run / "config.yaml").write_text("aggregator: [unclosed\n")
    with pytest.raises(ConfigError, match="holds a run whose config.yaml is unreadable"):
        prepare(compose(["aggregator=cm", f"run.dir={run}"]))
    hgo = tmp_path / "hgo"
    prepare(compose(["experiment=hgo_cpu", "hgo.rounds=10", f"run.dir={hgo}"]))
    (hgo / "metrics.jsonl").write_text('{"round": 10}\n')
    prepare(compose(["experiment=hgo_cpu", "hgo.rounds=20", "dataset.download=true", f"run.dir={hgo}"]))
