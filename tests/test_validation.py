"""Bad input is refused before any process starts, with one line naming the field and its limit
(in-process: compose + validate, as `launch.run` and `launch.node` do)."""
import os
import subprocess
import sys

import pytest
import torch

from common.config import ConfigError
from launch.node import compose
from launch.validate import check_device, validate
from tests.helpers import ROOT

CASES = [
    (["schedule.name=step", "schedule.milestones=5"], "schedule.milestones=5 must be a list of integers"),
    (["schedule.name=step", "schedule.milestones=[5,3]"], "schedule.milestones=[5, 3] must be strictly increasing"),
    (["schedule.name=step", "schedule.milestones=[-1]"], "schedule.milestones=[-1] must hold integers >= 0"),
    (["attack=mimic", "attack.target=99"], "attack.target=99 must be < 5"),
    (["model=resnet20", "model.norm=foo"], "model.norm 'foo' is unknown"),
    (["model=resnet20", "model.shortcut=C"], "model.shortcut 'C' is unknown"),
    (["model=mlp", "model.hidden=[0]"], "model.hidden=[0] must hold integers >= 1"),
    (["model=mlp", "model.hidden=abc"], "model.hidden='abc' must be a list of integers"),
    (["dataset=digits", "model=cnn"], "model=cnn on dataset=digits (inputs (1, 8, 8))"),
    (["dataset=synthetic", "dataset.shape=[0]"], "dataset.shape=[0] must hold integers >= 1"),
    (["lr=nan"], "lr=nan must be a finite number"),
    (["lr=inf"], "lr=inf must be a finite number"),
    (["momentum=nan"], "momentum=nan must be a finite number"),
    (["comm.timeout_round_s=inf"], "comm.timeout_round_s=inf must be a finite number"),
    (["filter.max_abs=nan"], "filter.max_abs=nan must be a finite number"),
    (["fault.kind=bogus"], "fault.kind='bogus' is unknown"),
    (["fault.kind=raise", "fault.round=abc"], "fault.round='abc' must be an integer"),
    (["fault.kind=kill", "fault.rank=99"], "fault.rank=99 must be <= 8"),
    (["byzantine.ranks=3"], "byzantine.ranks=3 must be a list of worker indices in [1, 8]"),
    (["log.level=FOO"], "log.level='FOO' is unknown"),
    (["log.oracle=maybe"], "log.oracle='maybe' must be true or false"),
    (["dataset.augment=maybe"], "dataset.augment='maybe' must be true or false"),
    (["attack=alie", "attack.lie_length=maybe"], "attack.lie_length='maybe' must be true or false"),
    (["attack=mimic", "attack.knowledge=colluders", "attack.target=3"], "attack.target=3 must be < 3"),
    (["aggregator=cc", "aggregator.tau=abc"], "aggregator.tau='abc' must be a finite number"),
    (["attack=foe", "attack.epsilon=abc"], "attack.epsilon='abc' must be a finite number"),
    (["aggregator=gm", "aggregator.T=abc"], "aggregator.T='abc' must be an integer"),
    (["aggregator.pre=[{name:bucketing,s:abc}]"], "aggregator.pre[0].s='abc' must be an integer"),
    (["aggregator.pre=foo"], "aggregator.pre='foo' must be a list"),
    (["comm.master_addr="], "comm.master_addr='' must be a host name or an IP address"),
    (["experiment=hgo_cpu", "hgo.stragglers=5"], "hgo.stragglers=5 must be a list of worker indices"),
    (["experiment=hgo_cpu", "hgo.batch_sizes=abc"], "hgo.batch_sizes='abc' must be a list"),
    (["experiment=hgo_cpu", "model=binlogreg", "model.binary=12"], "model.binary=12 must be even_odd or a class"),
    (["experiment=hgo_cpu", "model=binlogreg", "model.binary=1.5"], "model.binary=1.5 must be even_odd or a class"),
    (["algorithm.eps=abc"], "algorithm.eps='abc' must be a number"),
    (["algorithm.eps=0"], "algorithm.eps=0 must be > 0"),
    (["algorithm.normalize=maybe"], "algorithm.normalize='maybe' must be true or false"),
    (["seed=18446744073709551616"], "seed=18446744073709551616 must be <= 9223372036854775807"),
    (["attack=mimic", "attack.warmup=1", "attack.seed=99999999999999999999999"],
     "attack.seed=99999999999999999999999 must"),
    (["aggregator.pre=[{name:bucketing,seed:-1}]"], "aggregator.pre[0].seed=-1 must be in [0, "),
    (["comm.timeout_round_s=1e300"], "comm.timeout_round_s=1e+300 must be <= 1000000"),
    (["perf.worker_batch=maybe"], "perf.worker_batch='maybe' must be true or false"),
    (["perf.compute_slots=many"], "perf.compute_slots='many' must be auto or an integer >= 0 (0: off)"),
    (["perf.compute_slots=-1"], "perf.compute_slots=-1 must be auto or an integer >= 0"),
    (["comm.pattern=tree"], "comm.pattern='tree' is unknown; choose one of ['auto', 'p2p', 'collective']"),
    (["comm.backend=nccl", "comm.pattern=p2p"], "comm.pattern=p2p needs the Gloo backend"),
    (["run.dir=[a,b]"], "run.dir=['a', 'b'] must be a path"),
    (["dataset.root=123"], "dataset.root=123 must be a path"),
    (["dataset.partition=shards", "dataset.classes_per_worker=100000000000"],
     "dataset.classes_per_worker=100000000000 must be <= 500"),
    (["fault.kind=raise", "fault.round=50", "max_rounds=2"], "fault.round=50 is never reached"),
    (["aggregator.pre=[{name:[nnm]}]"], "aggregator.pre[0]={'name': ['nnm']} must be a pre-aggregator name"),
    (["aggregator.pre=[1]"], "aggregator.pre[0]=1 must be a pre-aggregator name"),
    (["aggregator.pre=[[nnm]]"], "aggregator.pre[0]=['nnm'] must be a pre-aggregator name"),
    (["aggregator.pre=[{name:nnm,foo:1}]"], "aggregator.pre[0] (pre-aggregator 'nnm') has no parameter(s) ['foo']"),
    (["aggregator=gm", "aggregator.T=1000000000"], "0 <= T <= 1000"),
    (["aggregator=gm", "aggregator.ftol=-1"], "ftol >= 0 or null"),
    (["aggregator=cc", "aggregator.L=100000000000"], "1 <= L <= 1000"),
    (["attack=alie_opt", "attack.evals=1000000000"], "attack.evals=1000000000 must be an integer in [1, 10000]"),
    (["attack.z=nan"], "attack.z=nan must be a finite number"),
    (["experiment=hgo_cpu", "hgo.straggle_s=inf"], "hgo.straggle_s=inf must be a finite number >= 0"),
    (["experiment=hgo_cpu", "hgo.q=4", "hgo.transport=store", "attack=alie", "byzantine.ranks=[1]", "aggregator=cm",
      "aggregator.f=1", "attack.z=1.0"], "attack 'alie' needs the honest vectors"),  # the roster, not count
    (["experiment=hgo_cpu", "workers=30", "dataset.partition=shards", "dataset.classes_per_worker=2", "batch_size=133"],
     "batch size 133 exceeds the shard size 132"),  # shards pieces differ: 4000 // 30 = 133 is not the smallest
    (["+model.widht=32"], "model 'cnn' has no option(s) ['widht']; it takes ['width']"),  # a typo, not ignored
    (["model=mlp", "+model.width=32"], "model 'mlp' has no option(s) ['width']; it takes ['hidden']"),
    (["experiment=hgo_cpu", "hgo.stragglers=[2,2]"], "hgo.stragglers=[2, 2] names a worker twice"),
    (["experiment=hgo_cpu", "log.oracle=true"], "log.oracle=true compares whole-vector aggregates"),
    (["experiment=hgo_cpu", "algorithm.normalize=true"], "algorithm.normalize=true is ByzSGDnm's"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_value_is_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides), check_data=False)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [
    ["workers=2", "byzantine.count=0"],  # ALIE's z is undefined at f = 0, but no Byzantine worker runs it
    ["log.level=debug", "aggregator=gm", "aggregator.T=5"],
    ["schedule.name=step", "schedule.milestones=[3,6]"],
    ["model=mlp", "model.hidden=[30,20]"],
    ["filter.max_abs=inf"],
    ["log.level=CRITICAL", "schedule.name=step", "schedule.milestones=[0,5]"],
    ["dataset.partition=shards", "dataset.classes_per_worker=12"],
    ["attack=mimic", "attack.knowledge=colluders", "attack.target=2"],
    ["+model.width=8"],  # the CNN's own option
    ["experiment=hgo_cpu", "hgo.stragglers=[2,5]"],
])
def test_good_values_pass(overrides):
    validate(compose(overrides), check_data=False)


def test_a_misspelled_experiment_is_refused_not_skipped():
    from launch.run import composition_error

    with pytest.raises(ValueError) as e:  # the group is optional: hydra itself would run the default job
        compose(["experiment=paperA_tabel1"])
    line = composition_error(e.value)
    assert line.startswith("experiment='paperA_tabel1' is unknown; choose one of [hgo_cpu, ")
    assert "paperA_table1" in line
    assert compose(["experiment=paperA_table1_cpu"]).dataset.name == "mnist5k"  # a real one composes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_settings_are_refused_where_no_gpu_is_visible():
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA device"):
        check_device(compose(["device=cuda"]))
    with pytest.raises(ConfigError, match="comm.backend=nccl needs device=cuda"):
        check_device(compose(["comm.backend=nccl"]))
    validate(compose(["device=cuda"]), check_data=False)  # a GPU preset validates anywhere
    check_device(compose(["device=auto"]))


def test_hydra_mode_multirun_is_a_sweep_too(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.run", "hydra.mode=MULTIRUN", "lr=0.1,-1",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    # the grid's second value is checked before the first job: nothing ran
    assert proc.returncode == 2 and proc.stderr.strip() == "error: lr=-1 must be > 0"
    assert not (tmp_path / "sweep").exists()


def test_sweep_probes_cover_every_value_once():
    from launch.run import _probe_jobs

    jobs = _probe_jobs(["aggregator=cm,krum", "lr=0.1", "attack=choice(alie,foe)", "seed=range(0,2)",
                        "aggregator.pre=[nnm,bucketing]"])
    first = ["aggregator=cm", "lr=0.1", "attack=alie", "seed=0", "aggregator.pre=[nnm,bucketing]"]
    assert jobs == [first, ["aggregator=krum", *first[1:]], [*first[:2], "attack=foe", *first[3:]],
                    [*first[:3], "seed=1", first[4]]]
    for job in jobs:
        compose(job)  # each probe is a plain (non-sweep) composition


def test_a_sweep_with_refused_jobs_exits_non_zero_and_a_bad_value_anywhere_stops_it(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "launch.run", "--multirun", *args,
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    proc = cli("lr=0.1,-1", "batch_size=16,3000")  # field limits of every value, before the first job
    assert proc.returncode == 2 and proc.stderr.strip() == "error: lr=-1 must be > 0"
    proc = cli("lr=0.1", "batch_size=16,3000")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: batch_size=3000 exceeds the shard size")
    assert not (tmp_path / "sweep").exists()
    if not torch.cuda.is_available():  # refused where the ranks would start: each job, then exit 1
        proc = cli("device=cuda", "seed=0,1")
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 3 and "no CUDA device" in errors[0]
        assert errors[2] == "error: 2 job(s) of the sweep were refused or failed: 0, 1"
    proc = cli("aggregator=cm,foo")
    rules = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "aggregator")) if f.endswith(".yaml"))
    assert {"cm", "cc", "krum", "tm"} <= set(rules) and proc.returncode == 2
    expected = f"error: aggregator='foo' is unknown; choose one of [{', '.join(rules)}]"  # a new rule adds one
    assert proc.stderr.strip().splitlines() == [expected]


def test_save_text_is_atomic_and_leaves_no_temporary_when_it_fails(tmp_path):
    from launch.run import save_text

    save_text(str(tmp_path / "FAILED"), "line\n")
    assert (tmp_path / "FAILED").read_text() == "line\n" and os.listdir(tmp_path) == ["FAILED"]
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OSError):
        save_text(str(tmp_path / "a-file" / "FAILED"), "line\n")  # cannot be written there
    assert sorted(os.listdir(tmp_path)) == ["FAILED", "a-file"]


def test_failure_line_quotes_every_failed_ranks_error_not_its_record():
    from types import SimpleNamespace

    from launch.run import failure_line

    record = {"message": "RuntimeError: round 2 failed after 2.0 s: no answer from worker(s) [2] (timeout)",
              "extraInfo": {"py_callstack": "Traceback (most recent call last):\n  File ...", "timestamp": "1"}}
    err = SimpleNamespace(failures={3: SimpleNamespace(local_rank=3, exitcode=-9, message="", timestamp=12),
                                    0: SimpleNamespace(local_rank=0, exitcode=1, message=record, timestamp=10)})
    assert failure_line(err) == ("rank 0 failed (exit 1): RuntimeError: round 2 failed after 2.0 s: no answer "
                                 "from worker(s) [2] (timeout) | then: rank 3 failed (exit -9): no message")
    err.failures[3].timestamp = 9  # the earliest failure first, not the lowest rank
    assert failure_line(err).startswith("rank 3 failed (exit -9): no message | then: rank 0 failed (exit 1): ")
    assert failure_line(RuntimeError("first\nsecond")) == "first"
    # the ranks' own records (microsecond times) put the crashed worker before the server that lost it;
    # a rank without a record (killed by a signal) still comes from the launcher
    records = [{"time": 10.2, "rank": 0, "role": "server", "error": "RuntimeError: round 2 failed"},
               {"time": 10.1, "rank": 2, "role": "worker 2", "error": "ValueError: boom"}]
    assert failure_line(err, records) == ("rank 3 failed (exit -9): no message | then: worker 2 (rank 2), "
                                          "server (rank 0)")
    err.failures[3].timestamp = 11  # noticed within SIGNAL_SLACK_S (whole seconds): killed first
    assert failure_line(err, records).startswith("rank 3 failed (exit -9): no message | then: worker 2 (rank 2)")
    err.failures[3].timestamp = 13  # noticed well after the first recorded error
    assert failure_line(err, records) == ("worker 2 (rank 2): ValueError: boom | then: server (rank 0), "
                                          "rank 3 failed (exit -9): no message")
    err.failures[3].exitcode, err.failures[3].timestamp = 1, 10  # an exit without a record: by time only
    assert failure_line(err, records).startswith("rank 3 failed (exit 1): no message | then: worker 2")
    err.failures[3].timestamp = 11
    assert failure_line(err, records).startswith("worker 2 (rank 2): ValueError: boom | then: server (rank 0), ")


def test_error_records_keep_the_rank_role_and_attempt_and_skip_stale_ones(tmp_path):
    from launch.node import read_errors, record_error

    run = str(tmp_path)
    assert read_errors(run, 0) == []
    try:
        raise ValueError("bad shard\nsecond line")
    except ValueError as e:
        record_error(run, 4, "worker 4", e, env={"TORCHELASTIC_RESTART_COUNT": "1"})
    record_error(run, 0, "server", RuntimeError("lost worker 4"), env={"TORCHELASTIC_RESTART_COUNT": "1"})
    record_error(run, 2, "worker 2", KeyError("old"), env={})  # attempt 0: stale at attempt 1
    (tmp_path / "errors" / "rank_9.json").write_text("{damaged")
    recs = read_errors(run, 1)
    assert [(r["rank"], r["role"], r["error"]) for r in recs] == [
        (4, "worker 4", "ValueError: bad shard"), (0, "server", "RuntimeError: lost worker 4")]
    assert recs[0]["time"] <= recs[1]["time"] and [r["rank"] for r in read_errors(run, 0)] == [2]
    assert read_errors(run) == recs  # no attempt given: the latest one that left records


def test_node_check_validates_without_a_group_and_names_group_problems(tmp_path, capsys):
    from launch.node import group_problem, main

    args = ["--check", "workers=3", "byzantine.count=0", f"run.dir={tmp_path / 'r'}"]
    assert main(args) == 0 and "config ok" in capsys.readouterr().out
    assert main(["--check", "aggregator=nope", f"run.dir={tmp_path / 'r'}"]) == 2
    assert capsys.readouterr().err.startswith("error: aggregator='nope' is unknown")
    cfg = compose(["workers=3", "byzantine.count=0"])
    assert group_problem(cfg, {"WORLD_SIZE": "4", "BYZ_ROLE": "server"}) is None
    assert group_problem(cfg, {}) is None  # outside torchrun: nothing to compare
    assert group_problem(cfg, {"WORLD_SIZE": "5"}).startswith("workers=3 but the group has 5 ranks")
    assert group_problem(cfg, {"BYZ_ROLE": "Server"}).startswith("BYZ_ROLE='Server' is unknown")


def test_a_fault_fires_once_per_run_directory_even_under_a_new_agent(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from common.fault import MARKER, maybe_inject

    cfg = OmegaConf.create({"fault": {"kind": "raise", "rank": 2, "round": 3}, "run": {"dir": str(tmp_path)}})
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    maybe_inject(cfg, 2, 2)  # another round: nothing
    maybe_inject(cfg, 1, 3)  # another rank: nothing
    with pytest.raises(RuntimeError, match="injected fault at round 3 on rank 2"):
        maybe_inject(cfg, 2, 3)
    assert (tmp_path / MARKER).read_text() == f"{os.getpid()}\n"  # the faulty process, for clean-up
    maybe_inject(cfg, 2, 3)  # a new agent (restart count 0 again) resumes at round 3: no second fault
