"""HGO (paper B) end to end: real process groups of a few workers, a few rounds each."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from common.flat import HEADER
from common.hgo import REPLY
from tests.helpers import launch, metrics, summary
from worker.profiles import block_length, draw_rate

pytestmark = pytest.mark.e2e
D_LOGREG = 7850  # multinomial logistic regression on 28 x 28 MNIST
SMALL = ["experiment=hgo_cpu", "log.tensorboard=false", "hgo.eval_every=2", "log.every=1"]


def final_params(run_dir: str, rounds: int) -> torch.Tensor:
    path = os.path.join(run_dir, "checkpoints", f"round_{rounds:08d}", "server.pt")
    return torch.load(path, weights_only=False)["buf"][HEADER:HEADER + D_LOGREG]


def test_hgo_bytes_are_four_times_the_sum_of_lengths_and_length_lies_cannot_raise_b_v(tmp_path):
    """5 weak workers, q = m, worker 5 Byzantine claiming b = d; cm with declared f = 1 gives v = 3.
    The server receives exactly 4 sum b_i bytes of values (+ one reply header per worker), and b_v stays
    at the 2nd largest honest length, far below d. The emulated clock really takes the logical time."""
    run, rounds, unit = str(tmp_path / "lie"), 6, 0.002
    launch(run, *SMALL, "workers=5", "hgo.q=5", f"hgo.rounds={rounds}", "hgo.scenario=C_weak",
           "aggregator=cm", "byzantine.count=1", "attack=none", "attack.lie_length=true",
           "hgo.clock=emulated", f"hgo.time_unit_s={unit}")
    s, rows = summary(run), metrics(run)
    honest = [block_length(32, draw_rate("weak", "multinomial", 0, k), 32, D_LOGREG) for k in range(1, 5)]
    bound = sorted(honest, reverse=True)[1]  # (v - f)-th largest honest length, v = 3, f = 1
    assert s["hgo"]["v"] == 3 and bound < D_LOGREG
    assert [r["b_v"] for r in rows] == [bound] * rounds
    assert [r["b_mean"] for r in rows] == [(sum(honest) + D_LOGREG) / 5] * rounds  # the lie is received
    assert s["hgo"]["sum_b"] == rounds * (sum(honest) + D_LOGREG)
    assert s["hgo"]["bytes_values"] == 4 * s["hgo"]["sum_b"]
    assert s["hgo"]["bytes_headers"] == rounds * 5 * REPLY * 4
    assert s["bytes_received"] == s["hgo"]["bytes_values"] + s["hgo"]["bytes_headers"]
    assert s["logical_time"] == pytest.approx(sum(r["round_logical"] for r in rows))
    assert 0 < s["logical_time"] <= rounds * 32
    assert s["wall_seconds"] >= 0.9 * s["logical_time"] * unit
    assert s["b_v_mean"] == bound and s["inputs"]["lengths_clamped"] == 0


def test_sgd_special_case_equals_plain_robust_sgd(tmp_path):
    """algorithm=sgd, tau = inf, q = m: every worker sends its full gradient and the server's model after T
    rounds equals plain synchronous SGD with the coordinate-wise median, computed here in one process."""
    from common.data import load_dataset, make_partition
    from common.flat import flatten_model
    from common.models import build_model
    from server.aggregators import get_aggregator
    from worker.data import ShardSampler

    run, m, rounds, lr = str(tmp_path / "sgd"), 3, 4, 0.5
    launch(run, *SMALL, f"workers={m}", f"hgo.q={m}", f"hgo.rounds={rounds}", "algorithm=sgd", "hgo.tau=inf",
           "hgo.scenario=C_powerful", "aggregator=cm", "aggregator.f=1", "dataset.partition=iid", f"lr={lr}")
    s = summary(run)
    assert s["b_v_mean"] == D_LOGREG and s["hgo"]["answered_mean"] == m and s["hgo"]["v"] == 3

    ds = load_dataset("mnist5k", seed=0)
    shards = make_partition("iid", ds.y_train, m, 0)
    samplers = [ShardSampler(ds.x_train[idx], ds.y_train[idx], 32, 0, k) for k, idx in enumerate(shards, 1)]
    torch.manual_seed(0)
    fm = flatten_model(build_model("logreg", ds.input_shape, 10))
    rule = get_aggregator("cm", m, 1)
    for t in range(rounds):
        grads = []
        for sampler in samplers:
            x, y = sampler.batch(t)
            fm.grad.zero_()
            F.cross_entropy(fm.model(x), y).backward()
            grads.append(fm.grad.clone())
        fm.params.sub_(lr * rule(torch.stack(grads), 1))
    torch.testing.assert_close(final_params(run, rounds), fm.params.detach(), rtol=0, atol=1e-6)


def test_store_transport_skips_a_worker_slower_than_tau(tmp_path):
    """Real deadline: worker 2 sleeps 3 s per round, far beyond tau * time_unit_s + grace = 1.03 s, which
    the honest workers meet with a wide margin even on a loaded machine; the server skips worker 2 every
    round (counted as absent) and trains on the other two."""
    run, rounds = str(tmp_path / "store"), 3
    launch(run, *SMALL, "workers=3", "hgo.q=3", f"hgo.rounds={rounds}", "hgo.transport=store",
           "hgo.stragglers=[2]", "hgo.straggle_s=3.0", "hgo.time_unit_s=0.001", "hgo.grace_s=1.0",
           "hgo.scenario=C_powerful")
    s, rows = summary(run), metrics(run)
    assert s["inputs"]["absent"] == rounds and [r["answered"] for r in rows] == [2] * rounds
    assert s["hgo"]["bytes_values"] == 4 * s["hgo"]["sum_b"] == 4 * rounds * 2 * D_LOGREG
    assert s["hgo"]["bytes_headers"] == rounds * 2 * REPLY * 4
    assert s["final_test_accuracy"] > 0.3


def test_hgo_resumes_bitwise_exactly_after_a_worker_or_the_server_is_killed(tmp_path):
    """The HGO server checkpoints alone (workers keep no state); killing a worker or the server at round 5
    and resuming from the round-4 checkpoint gives the same parameters as the run without a fault."""
    common = [*SMALL, "workers=4", "hgo.q=3", "hgo.rounds=8", "checkpoint.every=4", "aggregator=cm",
              "aggregator.f=1", "byzantine.count=1", "attack=signflip"]
    launch(str(tmp_path / "clean"), *common)
    clean = final_params(str(tmp_path / "clean"), 8)
    for who in (2, 0):
        run = str(tmp_path / f"kill{who}")
        launch(run, *common, "fault.kind=kill", f"fault.rank={who}", "fault.round=5")
        s = summary(run)
        assert s["restarts"] == 1 and s["rounds_completed"] == 8
        assert [r["round"] for r in metrics(run)] == list(range(1, 9))
        assert torch.equal(final_params(run, 8), clean), f"HGO resume after killing rank {who} is not exact"


def test_hgo_excludes_non_finite_blocks_and_keeps_the_parameters_finite(tmp_path):
    run, rounds = str(tmp_path / "nan"), 6
    launch(run, *SMALL, "workers=4", "hgo.q=4", f"hgo.rounds={rounds}", "aggregator=cm", "aggregator.f=1",
           "byzantine.count=1", "attack='nan'", "checkpoint.every=6")
    s = summary(run)
    assert s["inputs"]["excluded_nonfinite"] == rounds  # the Byzantine worker is selected every round (q = m)
    assert [r["excluded_nonfinite_blocks"] for r in metrics(run)] == [1] * rounds
    assert torch.isfinite(final_params(run, rounds)).all() and s["final_test_accuracy"] > 0.3
