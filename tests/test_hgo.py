"""HGO (paper B) without process groups: quorum and segments against Algorithm 1 written one coordinate at
a time, length lies, the quorum derived from the declared f, profiles, block lengths, the wire helpers."""
from __future__ import annotations

import math

import pytest
import torch

from common.hgo import clamp_length, clamp_lengths, parse_tau, permutation, selection, task_labels
from server.aggregators import get_aggregator
from server.quorum import aggregate_blocks, quorum_length, segments
from worker.profiles import (
    RATE_TABLES,
    SCENARIOS,
    assign_profiles,
    block_length,
    compute_time,
    draw_rate,
    profile_counts,
    sgd_length,
)


def naive_aggregate(values, lengths, v, rule, f):
    """Algorithm 1 lines 8-12, one coordinate at a time: Q_j = the workers whose block contains j."""
    b_v = quorum_length(lengths, v)
    out = torch.zeros(b_v, dtype=values.dtype)
    for j in range(b_v):
        senders = [i for i, b in enumerate(lengths) if b > j]
        out[j] = rule(values[senders, j:j + 1], f)[0]
    return out


def random_blocks(g, q, d, lo=0):
    lengths = torch.randint(lo, d + 1, (q,), generator=g).tolist()
    values = torch.randn(q, d, generator=g, dtype=torch.float64)
    return values, lengths


@pytest.mark.parametrize("name", ["cm", "tm", "meamed", "mean"])
def test_segment_aggregation_equals_a_per_coordinate_loop(name):
    g = torch.Generator().manual_seed(11)
    for trial in range(12):
        q, d, f = int(torch.randint(3, 11, (1,), generator=g)), 40, 1
        values, lengths = random_blocks(g, q, d)
        v = int(torch.randint(2 * f + 1, q + 1, (1,), generator=g))
        rule = get_aggregator(name, q, f)
        got = aggregate_blocks(values, lengths, v, rule, f)
        want = naive_aggregate(values, lengths, v, rule, f)
        assert got.shape == (quorum_length(lengths, v),)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{name} trial {trial}")


@pytest.mark.parametrize("name", ["krum", "aksel"])
def test_vector_rules_act_on_each_segment_of_equal_senders(name):
    """Vector rules see each segment (same sender set) as one vector: compare with a loop that groups the
    coordinates of the block by their sender set and calls the rule once per group."""
    g = torch.Generator().manual_seed(5)
    q, d, f = 9, 60, 2
    values, lengths = random_blocks(g, q, d)
    v = 6
    rule = get_aggregator(name, q, f)
    got = aggregate_blocks(values, lengths, v, rule, f)
    b_v = quorum_length(lengths, v)
    groups: dict[tuple[int, ...], list[int]] = {}
    for j in range(b_v):
        groups.setdefault(tuple(i for i, b in enumerate(lengths) if b > j), []).append(j)
    want = torch.zeros(b_v, dtype=values.dtype)
    for senders, cols in groups.items():
        want[cols] = rule(values[list(senders)][:, cols], f)
    torch.testing.assert_close(got, want)


def test_rows_in_any_order_give_the_same_aggregate():
    g = torch.Generator().manual_seed(3)
    values, lengths = random_blocks(g, 7, 30)
    rule = get_aggregator("cm", 7, 1)
    perm = torch.randperm(7, generator=g)
    a = aggregate_blocks(values, lengths, 3, rule, 1)
    b = aggregate_blocks(values[perm], [lengths[i] for i in perm.tolist()], 3, rule, 1)
    torch.testing.assert_close(a, b)


def test_segments_tile_the_quorum_block_with_decreasing_senders():
    lengths = [9, 9, 7, 4, 4, 1, 0]
    assert quorum_length(lengths, 3) == 7
    assert segments(lengths, 3) == [(3, 4, 7), (5, 1, 4), (6, 0, 1)]
    assert segments(lengths, 1) == [(2, 7, 9), (3, 4, 7), (5, 1, 4), (6, 0, 1)]
    assert quorum_length([5, 3], 3) == 0 and segments([5, 3], 3) == []
    with pytest.raises(ValueError):
        segments([1, 5], 1)


def test_length_lies_cannot_raise_b_v_when_v_exceeds_f():
    """f Byzantine workers claiming b_i = d: b_v never exceeds the (v - f)-th largest honest length."""
    g = torch.Generator().manual_seed(7)
    d = 1000
    for _ in range(200):
        q = int(torch.randint(4, 20, (1,), generator=g))
        f = int(torch.randint(1, (q - 1) // 2 + 1, (1,), generator=g))
        v = int(torch.randint(f + 1, q + 1, (1,), generator=g))
        honest = torch.randint(0, d // 2, (q - f,), generator=g).tolist()
        b_v = quorum_length(honest + [d] * f, v)
        bound = sorted(honest, reverse=True)[v - f - 1]
        assert b_v <= bound < d
    # ... whereas with v <= f the lies alone set the block to the whole vector
    assert quorum_length([10, 20, 30] + [d] * 2, 2) == d


def test_sgd_special_case_equals_plain_robust_aggregation():
    """b_i = d for every worker: the block is all of C_k and the update is the rule on the full rows."""
    g = torch.Generator().manual_seed(2)
    q, d = 7, 50
    x = torch.randn(q, d, generator=g, dtype=torch.float64)
    perm = permutation(123, d)
    for name, f in (("cm", 2), ("tm", 2), ("mean", 0), ("krum", 2)):
        rule = get_aggregator(name, q, f)
        ag = aggregate_blocks(x[:, perm], [d] * q, 2 * f + 1, rule, f)
        full = torch.zeros(d, dtype=x.dtype).index_add_(0, perm, ag)
        torch.testing.assert_close(full, rule(x, f), msg=name)


# ------------------------------------------------------------------------------------------ profiles


def test_block_length_is_tau_lambda_over_s_capped_at_d():
    assert block_length(32, 500, 32, 7850) == 500
    assert block_length(32, 10_000, 32, 7850) == 7850
    assert block_length(1, 250, 32, 785) == 7  # floor(250 / 32)
    assert block_length(math.inf, 1.0, 32, 785) == 785
    assert block_length(32, 0.0, 32, 785) == 0
    assert sgd_length(32, 10_000, 32, 7850) == 7850  # 32 * 7850 / 10000 = 25.1 <= 32
    assert sgd_length(32, 500, 32, 7850) == 0
    assert sgd_length(math.inf, 1.0, 32, 7850) == 7850
    assert compute_time(500, 32, 500) == 32.0 and compute_time(0, 32, 0.0) == 0.0


def test_scenarios_place_the_paper_fractions():
    assert profile_counts(20, "default") == {"weak": 6, "average": 8, "powerful": 6}
    assert profile_counts(20, "C_min") == {"weak": 18, "average": 0, "powerful": 2}
    assert profile_counts(40, "C_1") == {"weak": 36, "average": 4, "powerful": 0}
    assert profile_counts(7, "default") == {"weak": 2, "average": 3, "powerful": 2}
    for name in SCENARIOS:
        p = assign_profiles(33, name, seed=4)
        assert len(p) == 33 and p == assign_profiles(33, name, seed=4)
        assert [p.count(k) for k in ("weak", "average", "powerful")] == list(profile_counts(33, name).values())


def test_rates_are_drawn_per_worker_from_the_profile_and_clipped_at_zero():
    draws = [draw_rate("weak", "multinomial", 0, k) for k in range(1, 2001)]
    assert draws == [draw_rate("weak", "multinomial", 0, k) for k in range(1, 2001)]
    assert min(draws) == 0.0  # N(500, 250) goes below 0 about 2% of the time
    mean, std = RATE_TABLES["multinomial"]["weak"]
    positive = torch.tensor(draws)
    assert abs(float(positive.mean()) - mean) < 0.1 * mean  # clipping raises the mean only slightly
    # every table and profile draws from its own N(mean, std) (paper B §V.A), written out here
    paper = {("binary", "weak"): (250, 125), ("binary", "average"): (1000, 500), ("binary", "powerful"): (5000, 1000),
             ("multinomial", "average"): (10000, 2500), ("multinomial", "powerful"): (50000, 5000),
             ("ffn", "weak"): (5000, 500), ("ffn", "average"): (25000, 2500), ("ffn", "powerful"): (50000, 5000)}
    for (table, profile), (mu, sd) in paper.items():
        x = torch.tensor([draw_rate(profile, table, 3, k) for k in range(1, 2001)], dtype=torch.float64)
        assert abs(float(x.mean()) - mu) < 4 * sd / 2000**0.5, (table, profile)
        assert float(x.std()) == pytest.approx(sd, rel=0.08), (table, profile)


# ------------------------------------------------------------------------------------------ wire


def test_selection_and_permutation_are_rebuilt_from_the_seed():
    s = selection(99, 20, 16)
    assert s == selection(99, 20, 16) and len(set(s)) == 16 and all(1 <= k <= 20 for k in s)
    assert s != selection(100, 20, 16)
    p = permutation(99, 785)
    assert torch.equal(p, permutation(99, 785)) and torch.equal(p.sort().values, torch.arange(785))


def test_out_of_range_lengths_are_clamped_and_flagged():
    assert clamp_length(5, 10) == (5, False)
    assert clamp_length(10, 10) == (10, False)
    assert clamp_length(11, 10) == (10, True)
    assert clamp_length(-3, 10) == (0, True)
    assert clamp_length(2.5, 10) == (2, True)
    assert clamp_length(float("nan"), 10) == (0, True)
    b, bad = clamp_lengths(torch.tensor([5.0, 11.0, -1.0, float("inf"), 2.5, 0.0]), 10)
    assert b.tolist() == [5, 10, 0, 0, 2, 0]
    assert bad.tolist() == [False, True, True, True, True, False]


def test_tau_parses_numbers_and_infinity_and_binary_labels():
    assert parse_tau(32) == 32.0 and parse_tau("inf") == math.inf and parse_tau(float("inf")) == math.inf
    y = torch.arange(10)
    assert task_labels(y, None).tolist() == list(range(10))
    assert task_labels(y, "even_odd").tolist() == [0, 1] * 5
    assert task_labels(y, 3).tolist() == [int(k == 3) for k in range(10)]
    with pytest.raises(ValueError):
        task_labels(y, "odd")


def test_class_zero_is_a_binary_task_like_every_other_class():
    """model.binary=0 (class 0 vs the rest): 2 outputs, the binary rate table (it built a 10-class model)."""
    from common.flat import flatten_model
    from common.models import build_model
    from worker.profiles import rate_table

    for k in (0, 3, "even_odd"):
        assert flatten_model(build_model("logreg", (1, 28, 28), 2, binary=k)).d == 785, k
        assert rate_table("auto", {"name": "logreg", "binary": k}) == "binary"
    assert task_labels(torch.arange(4), 0).tolist() == [1, 0, 0, 0]
    assert flatten_model(build_model("logreg", (1, 28, 28), 10, binary=None)).d == 7850


def test_unequal_shards_keep_every_sample_once():
    from worker.hgo import resize_shards

    shards = [torch.arange(i * 100, (i + 1) * 100) for i in range(10)]
    out = resize_shards(shards, 0.5, seed=1, min_size=32)
    sizes = [len(s) for s in out]
    assert sum(sizes) == 1000 and min(sizes) >= 32 and max(sizes) > 2 * min(sizes)
    assert torch.equal(torch.cat(out).sort().values, torch.arange(1000))


# ------------------------------------------------------------------------------------------ validation


def compose(*overrides):
    from launch.node import compose as hydra_compose

    return hydra_compose(list(overrides))


def test_v_is_derived_from_the_declared_f_not_the_true_count():
    from launch.node import server_view
    from launch.validate import validate

    cfg = compose("experiment=hgo_cpu", "aggregator=cm", "byzantine.count=4", "aggregator.f=2")
    validate(cfg, check_data=False)
    assert (cfg.hgo.q, cfg.hgo.v) == (16, 5)  # 2 * declared f + 1, although 4 workers are Byzantine
    assert "byzantine" not in server_view(cfg) and server_view(cfg).hgo.v == 5
    cfg = compose("experiment=hgo_cpu", "aggregator=cm", "byzantine.count=4")
    validate(cfg, check_data=False)
    assert cfg.hgo.v == 9  # aggregator.f defaults to byzantine.count (a declaration in the config)
    cfg = compose("experiment=hgo_cpu", "aggregator=krum", "byzantine.count=3")
    validate(cfg, check_data=False)
    assert cfg.hgo.v == 8  # raised to Krum's n >= 2f + 2
    cfg = compose("experiment=hgo_cpu", "hgo.q=null", "workers=10")
    validate(cfg, check_data=False)
    assert (cfg.hgo.q, cfg.hgo.v) == (8, 1)


@pytest.mark.parametrize("overrides, message", [
    (["hgo.q=21"], "hgo.q=21"),
    (["aggregator=cm", "byzantine.count=3", "hgo.v=3"], "must be > aggregator.f=3"),
    (["aggregator=cm", "byzantine.count=3", "hgo.v=17"], "hgo.v=17"),
    (["aggregator=cm", "byzantine.count=3", "hgo.v=5"], "too small for the rule"),
    (["hgo.tau=0"], "hgo.tau=0"),
    (["hgo.tau=-1"], "hgo.tau=-1"),
    (["hgo.scenario=C_3"], "hgo.scenario='C_3'"),
    (["hgo.batch_sizes=[8,8]"], "one per worker"),
    (["aggregator=cc", "byzantine.count=2"], "aggregator=cc"),
    (["model=binlogreg", "algorithm=byzsgdm"], "model.binary"),
])
def test_hgo_keys_are_validated_with_one_line(overrides, message):
    from common.config import ConfigError
    from launch.validate import validate

    cfg = compose("experiment=hgo_cpu", *overrides)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(cfg, check_data=False)


def test_tau_inf_and_sgd_compose_and_validate():
    from launch.validate import validate

    cfg = compose("experiment=hgo_cpu", "algorithm=sgd", "hgo.tau=inf")
    validate(cfg, check_data=False)
    assert cfg.algorithm.name == "sgd" and math.isinf(parse_tau(cfg.hgo.tau)) and cfg.workers == 20


def test_summary_records_no_momentum_for_paper_b_algorithms():
    """HGO and SGD update with the aggregate itself (Alg. 1 line 13): a momentum value is not used, and the
    summary says 0, not the ByzSGDm default."""
    from launch.node import compose, run_summary_config
    from launch.validate import validate

    for alg in ("hgo", "sgd"):
        cfg = compose(["experiment=hgo_cpu", f"algorithm={alg}", "momentum=0.9"])
        validate(cfg, check_data=False)
        assert run_summary_config(cfg)["momentum"] == 0.0
    cfg = compose(["momentum=0.9"])
    validate(cfg, check_data=False)
    assert run_summary_config(cfg)["momentum"] == 0.9
