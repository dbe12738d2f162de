"""The server's round (`Server.step`) on hand-made worker rows, without a process group: the row filter,
the rule on the momenta, the median of the BatchNorm statistics, the update, and what observers see."""
import math

import pytest
import torch
from torch import nn

from common.flat import flatten_model
from common.timing import PhaseTimer
from launch.oracle import OracleError
from server.aggregators import get_aggregator
from server.aggregators.basic import midpoint_median
from server.trainer import META, Server, evaluate


class RowsChannel:
    """Stands in for common.dist.Channel: the broadcast goes nowhere, the gather returns fixed rows."""

    def __init__(self, rows):
        self.rows, self.broadcasts = rows, 0

    def broadcast(self):
        self.broadcasts += 1

    def gather(self):
        return self.rows


def server_on(rows, rule="cm", f=1, observers=(), normalize=False, lr=0.5):
    """A Server whose model has d = 8 parameters and k = 4 BatchNorm statistics, fed `rows`."""
    torch.manual_seed(0)
    fm = flatten_model(nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2)))
    d, k = fm.d, fm.k
    assert (d, k) == (8, 4) and rows.shape[1] == d + k + META
    srv = Server.__new__(Server)
    srv.cfg, srv.fm, srv.d, srv.k, srv.m, srv.f = None, fm, d, k, rows.shape[0], f
    srv.chan, srv.heartbeat, srv.observers = RowsChannel(rows), None, list(observers)
    srv.agg = get_aggregator(rule, rows.shape[0], f)
    srv.timer, srv.round, srv.t_start, srv.bytes_received = PhaseTimer(), 0, 0.0, 0
    srv.wall_before = 0.0
    srv.counts = {"excluded_nonfinite": 0, "excluded_huge": 0, "rows_zero": 0}
    srv.max_abs, srv.fault_round, srv.ckpt_every, srv.log_every = 1e20, -1, 0, 1
    srv.rpe, srv.total_rounds, srv.eval_every = 1000, 10**6, 1
    srv.lr_of_epoch = lambda epoch: lr
    srv.wd_server, srv.normalize, srv.eps = 0.0, normalize, 1e-12
    return srv


def make_rows(m=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(m, 8 + 4 + META, generator=g)
    rows[:, -META:] = torch.tensor([0.01, 2.3])  # compute seconds, loss
    return rows


def test_step_applies_the_rule_to_the_momenta_and_the_median_to_the_batchnorm_statistics():
    rows = make_rows()
    srv = server_on(rows, rule="cm", f=1)
    w0 = srv.fm.params.clone()
    row = srv.step()
    torch.testing.assert_close(srv.fm.params, w0 - 0.5 * midpoint_median(rows[:, :8]))
    torch.testing.assert_close(srv.fm.bn, midpoint_median(rows[:, 8:12]))
    assert srv.round == 1 and srv.chan.broadcasts == 1 and srv.fm.header[0] == 0
    assert row["round"] == 1 and row["lr"] == 0.5 and row["train_loss"] == pytest.approx(2.3)
    assert row["excluded_nonfinite"] == row["excluded_huge"] == 0
    assert srv.bytes_received == rows.numel() * 4


def test_step_normalizes_the_aggregate_for_byzsgdnm():
    rows = make_rows()
    srv = server_on(rows, rule="mean", f=0, normalize=True)
    w0 = srv.fm.params.clone()
    row = srv.step()
    a = rows[:, :8].mean(0)
    torch.testing.assert_close(srv.fm.params, w0 - 0.5 * a / a.norm())
    assert row["agg_norm"] == pytest.approx(float(a.norm()), rel=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30])
def test_excluded_rows_leave_the_rule_and_the_batchnorm_median_and_count_against_f(bad):
    rows = make_rows()
    rows[1, 3] = bad  # a momentum entry
    rows[4, 9] = bad  # a BatchNorm statistic
    keep = torch.tensor([0, 2, 3, 5])
    srv = server_on(rows, rule="cm", f=2)
    w0 = srv.fm.params.clone()
    row = srv.step()
    torch.testing.assert_close(srv.fm.params, w0 - 0.5 * midpoint_median(rows[keep, :8]))
    torch.testing.assert_close(srv.fm.bn, midpoint_median(rows[keep, 8:12]))
    key = "excluded_huge" if math.isfinite(bad) else "excluded_nonfinite"
    assert row[key] == 2 and srv.counts[key] == 2
    assert torch.isfinite(srv.fm.buf).all()


def test_every_row_excluded_is_an_error_not_a_silent_update():
    rows = make_rows(m=3)
    rows[:, 0] = math.nan
    srv = server_on(rows, rule="mean", f=0)
    with pytest.raises(RuntimeError, match="every worker row was non-finite"):
        srv.step()


def test_observers_see_every_workers_row_in_worker_order_even_when_rows_are_excluded():
    rows = make_rows()
    rows[0, 2] = math.nan  # worker 1 is Byzantine and sends NaN; it is not the last rank
    seen = []
    oracle = OracleError(byzantine=[1, 3], m=6)
    srv = server_on(rows, rule="cm", f=2, observers=[lambda t, u, a: seen.append(u.clone()) or {}, oracle])
    row = srv.step()
    assert len(seen) == 1 and torch.equal(seen[0].nan_to_num(7.0), rows[:, :8].nan_to_num(7.0))
    honest_mean = rows[[1, 3, 4, 5], :8].double().mean(0)
    agg = midpoint_median(rows[1:, :8]).double()
    assert row["oracle_error"] == pytest.approx(float((agg - honest_mean).norm()), rel=1e-5)
    assert row["honest_mean_norm"] == pytest.approx(float(honest_mean.norm()), rel=1e-6)


def test_server_weight_decay_joins_the_step_but_observers_see_the_rules_output():
    rows = make_rows()
    seen = []
    srv = server_on(rows, rule="mean", f=0, observers=[lambda t, u, a: seen.append(a.clone()) or {}])
    srv.wd_server = 0.1
    w0 = srv.fm.params.clone()
    row = srv.step()
    a = rows[:, :8].mean(0)
    torch.testing.assert_close(seen[0], a)
    torch.testing.assert_close(srv.fm.params, w0 - 0.5 * (a + 0.1 * w0))
    assert row["agg_norm"] == pytest.approx(float(a.norm()), rel=1e-6)  # the rule's output, not the step


def test_the_time_column_counts_the_wall_time_of_earlier_attempts():
    import time

    srv = server_on(make_rows(), rule="mean", f=0)
    srv.wall_before, srv.t_start = 100.0, time.perf_counter()  # restored from a checkpoint
    row = srv.step()
    assert 100.0 <= row["time"] < 160.0


def test_metric_rows_only_every_log_every_rounds():
    srv = server_on(make_rows(), rule="mean", f=0)
    srv.log_every = 3
    got = [srv.step() for _ in range(6)]
    assert [r is not None for r in got] == [False, False, True, False, False, True]
    assert [r["round"] for r in got if r] == [3, 6]


def test_oracle_indexes_workers_not_surviving_rows():
    u = torch.arange(12.0).view(4, 3)
    out = OracleError(byzantine=[2], m=4)(0, u, torch.zeros(3))
    assert out["honest_mean_norm"] == pytest.approx(float(u[[0, 2, 3]].mean(0).norm()))


def test_evaluation_every_eval_every_epochs_and_at_the_end():
    srv = server_on(make_rows(), rule="mean", f=0)
    srv.rpe, srv.eval_every, srv.total_rounds = 2, 2, 9  # epochs of 2 rounds; evaluate every 2nd epoch
    srv.x_test, srv.y_test = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    srv.best_acc, srv.last_eval = 0.0, (math.nan, math.nan)
    rows = [row for row in (srv.step() for _ in range(9)) if "test_accuracy" in row]
    assert [r["round"] for r in rows] == [4, 8, 9]
    for r in rows:  # evaluated on the weights after that round's update; recomputed here
        assert r["test_accuracy"] in {k / 5 for k in range(6)}
    acc, loss = evaluate(srv.fm.model, srv.x_test, srv.y_test)
    # (the BatchNorm variances here are random rows' medians, some negative: the loss may be NaN)
    assert (rows[-1]["test_accuracy"], rows[-1]["test_loss"]) == pytest.approx((acc, loss), nan_ok=True)
    assert srv.best_acc == max(r["test_accuracy"] for r in rows)


def test_evaluate_is_accuracy_and_mean_cross_entropy_in_batches():
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # logits = x: class = the larger coordinate
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 4.0], [0.5, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 1])  # rows 0, 1, 3 right; 2 and 4 wrong
    expected_loss = float(torch.nn.functional.cross_entropy(x, y))  # mean over the 5 samples
    model.train()
    assert evaluate(model, x, y, batch=2) == pytest.approx((0.6, expected_loss))
    assert model.training  # back in training mode
