"""Checkpoints and the metrics log on their own: atomic writes, the manifest of consistent rounds,
pruning, resume, and the metrics log's truncation on resume."""
import json
import math
import os

import pytest
import torch

from common import checkpoint
from common.metrics import MetricsLogger, write_summary


def _save_round(run, rnd, names=("server", "worker_1", "worker_2")):
    for name in names:
        checkpoint.save_rank(str(run), rnd, name, {"round": rnd, "name": name, "t": torch.full((3,), float(rnd))})


def test_a_round_is_consistent_only_when_every_rank_wrote_it(tmp_path):
    names = ["server", "worker_1", "worker_2"]
    _save_round(tmp_path, 10)
    checkpoint.mark_complete(str(tmp_path), 10, names)
    _save_round(tmp_path, 20, names=("server", "worker_1"))  # worker 2 died before writing round 20
    with pytest.raises(RuntimeError, match=r"round 20 is missing \['worker_2'\]"):
        checkpoint.mark_complete(str(tmp_path), 20, names)
    assert checkpoint.latest_round(str(tmp_path)) == 10
    got = []
    assert checkpoint.resume(str(tmp_path), "worker_2", got.append) == 10
    assert got[0]["round"] == 10 and torch.equal(got[0]["t"], torch.full((3,), 10.0))


def test_only_the_latest_keep_rounds_stay_on_disk(tmp_path):
    names = ["server", "worker_1", "worker_2"]
    for rnd in (10, 20, 30, 40):
        _save_round(tmp_path, rnd)
        checkpoint.mark_complete(str(tmp_path), rnd, names, keep=2)
    man = checkpoint.read_manifest(str(tmp_path))
    assert man["complete"] == [30, 40] and man["ranks"] == names
    assert sorted(os.listdir(checkpoint.ckpt_root(str(tmp_path)))) == ["manifest.json", "round_00000030",
                                                                       "round_00000040"]


class FakeAgreement:
    """The collectives of common.dist.Agreement for ranks simulated one after another: `rounds` is the
    server's list, `unreadable` answers from what each rank could read (`readable[name]`, per round)."""

    def __init__(self, server_rounds, readable, me):
        self.server_rounds, self.readable, self.me, self.calls = server_rounds, readable, me, 0

    def rounds(self, read):
        return list(self.server_rounds)

    def unreadable(self, ok):
        assert ok == self.readable[self.me][self.calls], "this rank's own reading"
        i, self.calls = self.calls, self.calls + 1
        return [r for r, name in enumerate(self.readable) if not self.readable[name][i]]


def test_a_round_that_some_rank_cannot_read_falls_back_to_the_older_kept_round(tmp_path):
    run, names = str(tmp_path), ["server", "worker_1", "worker_2"]
    for rnd in (10, 20, 30):
        _save_round(tmp_path, rnd)
        checkpoint.mark_complete(run, rnd, names, keep=2)
    with open(os.path.join(checkpoint.ckpt_root(run), "round_00000030", "worker_2.pt"), "wb") as fh:
        fh.write(b"torn")  # damaged outside the run: it was written atomically
    # round 30 reads on the server and worker 1, not on worker 2: all three resume from round 20
    readable = {"server": [True, True], "worker_1": [True, True], "worker_2": [False, True]}
    for name in names:
        got = []
        agree = FakeAgreement([30, 20], readable, name)
        assert checkpoint.resume(run, name, got.append, agree) == 20 and agree.calls == 2
        assert [(g["round"], g["name"]) for g in got] == [(20, name)]
    assert checkpoint.forget_after(run, 20) == [30]  # the server drops the round that did not load
    assert checkpoint.read_manifest(run)["complete"] == [20]
    assert sorted(os.listdir(checkpoint.ckpt_root(run))) == ["manifest.json", "round_00000020",
                                                             "round_00000030.unreadable"]  # set aside
    # the server's list rules: a rank whose copy of the manifest is stale still tries the same rounds
    agree = FakeAgreement([20], {"server": [True], "worker_1": [True], "worker_2": [True]}, "worker_1")
    assert checkpoint.resume(run, "worker_1", lambda s: None, agree) == 20
    # when no kept round loads, every rank names the rounds and ranks, this one its own files too
    with open(os.path.join(checkpoint.ckpt_root(run), "round_00000020", "server.pt"), "wb") as fh:
        fh.write(b"")
    agree = FakeAgreement([20], {"server": [False], "worker_1": [True], "worker_2": [True]}, "worker_1")
    with pytest.raises(RuntimeError, match=r"loads on every rank \(round 20 unreadable on rank\(s\) \[0\]\): "):
        checkpoint.resume(run, "worker_1", lambda s: pytest.fail("nothing loads"), agree)
    with pytest.raises(RuntimeError, match=r"\(round 20 unreadable; here round 20: server.pt: EOFError"):  # alone
        checkpoint.resume(run, "server", lambda s: pytest.fail("nothing loads"))


def test_an_io_error_is_not_a_damaged_round(tmp_path, monkeypatch):
    """A transient storage error must not make the group give up (and set aside) an intact round."""
    run = str(tmp_path)
    _save_round(tmp_path, 10, names=("server",))
    checkpoint.mark_complete(run, 10, ["server"])

    def flaky(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.torch, "load", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        checkpoint.resume(run, "server", lambda s: pytest.fail("nothing loads"))
    assert checkpoint.read_manifest(run)["complete"] == [10]


def test_no_manifest_means_a_fresh_start_and_a_damaged_one_is_an_error(tmp_path):
    from common.config import ConfigError
    from launch.validate import check_resume_config

    assert checkpoint.latest_round(str(tmp_path)) is None
    assert checkpoint.resume(str(tmp_path), "server", lambda s: pytest.fail("nothing to load")) is None
    os.makedirs(checkpoint.ckpt_root(str(tmp_path)))
    path = os.path.join(checkpoint.ckpt_root(str(tmp_path)), "manifest.json")
    for damaged in ('{"complete": [1', '["not", "a", "manifest"]', '{"complete": ["x"]}'):
        with open(path, "w") as fh:
            fh.write(damaged)
        # starting over would drop the run's metrics: refuse, in one line where the run starts
        with pytest.raises(RuntimeError, match="manifest.json .*(unreadable|not a checkpoint manifest)"):
            checkpoint.latest_round(str(tmp_path))
        with pytest.raises(ConfigError, match=r"^run.dir=.*manifest.json") as e:
            check_resume_config(None, str(tmp_path))
        assert "\n" not in str(e.value)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    checkpoint.save_rank(str(tmp_path), 5, "server", {"v": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        checkpoint.save_rank(str(tmp_path), 5, "server", {"v": Unpicklable()})
    folder = os.path.join(checkpoint.ckpt_root(str(tmp_path)), "round_00000005")
    assert os.listdir(folder) == ["server.pt"]
    assert checkpoint.load_rank(str(tmp_path), 5, "server") == {"v": 1}


def test_metrics_log_on_resume_drops_later_rows_and_a_torn_line(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=False)
    for r in (10, 20, 30):
        log.log({"round": r, "lr": 0.1, "loss": float("nan")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 40, "lr"')  # the crash cut this line
    log = MetricsLogger(str(tmp_path), start_round=20, tensorboard=False)
    log.log({"round": 30, "lr": 0.05, "loss": 1.5})
    log.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["round"], r["lr"]) for r in rows] == [(10, 0.1), (20, 0.1), (30, 0.05)]
    assert rows[0]["loss"] is None  # NaN is written as null: the file stays valid JSON lines


def test_tensorboard_gets_numeric_fields_under_their_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(str(tmp_path), tensorboard=True)
    log.log({"round": 3, "test_accuracy": 0.5, "lr": 0.1, "note": "text", "flag": True}, {"test_accuracy": "test/acc"})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["lr", "test/acc"]
    assert [(e.step, e.value) for e in acc.Scalars("test/acc")] == [(3, 0.5)]


def test_tensorboard_restart_without_a_checkpoint_drops_the_first_attempts_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(str(tmp_path), tensorboard=True)
    for r in (1, 2, 3):  # the first attempt, killed before any checkpoint
        log.log({"round": r, "lr": 0.1})
    log.close()
    log = MetricsLogger(str(tmp_path), start_round=0, tensorboard=True)  # the restart begins at round 0
    for r in (1, 2):
        log.log({"round": r, "lr": 0.2})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("lr")] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.2))]


def test_summary_merges_nested_sections(tmp_path):
    s = write_summary(str(tmp_path), {"a": 1, "config": {"x": 1}}, {"config": {"y": 2}, "b": math.pi})
    assert s == {"a": 1, "config": {"x": 1, "y": 2}, "b": math.pi}
    assert json.load(open(tmp_path / "summary.json")) == s
    assert not os.path.exists(tmp_path / "summary.json.tmp")
