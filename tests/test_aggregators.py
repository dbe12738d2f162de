"""The aggregation library (ALGORITHMS.md §3-4): hand-computed cases, definitions against float64
references written here, permutation invariance, breakdown, even-n medians, state, preconditions."""
from __future__ import annotations

import pytest
import torch

from server.aggregators import AGGREGATORS, PRE_AGGREGATORS, get_aggregator
from server.aggregators.geometry import pairwise_sq_distances, sq_distances_to
from server.aggregators.sorting import NETWORK_MAX_N, network_kind, sorted_chunks

RULES = sorted(AGGREGATORS)
PRES = sorted(PRE_AGGREGATORS)


def rows(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def column(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


def random_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2.0 + torch.randn(1, d, generator=g)


# ---------------------------------------------------------------- float64 references (straightforward)


def ref_median(x):
    s = torch.sort(x.double(), dim=0).values
    n = s.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def ref_tm(x, f):
    s = torch.sort(x.double(), dim=0).values
    return s[f:x.shape[0] - f].mean(0)


def ref_closest(x, centre, m):
    """Per column, mean of the m values closest to centre (argsort of |x - centre|)."""
    x = x.double()
    idx = torch.argsort((x - centre).abs(), dim=0, stable=True)[:m]
    return torch.gather(x, 0, idx).mean(0)


def ref_sq_dist(x):
    x = x.double()
    n = x.shape[0]
    d = [[float(((x[i] - x[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    return torch.tensor(d, dtype=torch.float64)


def ref_krum_scores(x, f, pool, k_offset=2):
    dist = ref_sq_dist(x)
    k = max(0, len(pool) - f - k_offset)
    return [sum(sorted(float(dist[i, j]) for j in pool if j != i)[:k]) for i in pool]


def ref_krum_order(x, f, k_offset=2):
    pool = list(range(x.shape[0]))
    scores = ref_krum_scores(x, f, pool, k_offset)
    return sorted(pool, key=lambda i: (scores[i], i))


def ref_gm(x, init="zeros", nu=0.1, T=3, ftol=None):
    x = x.double()
    zero = torch.zeros(x.shape[1], dtype=torch.float64)
    z = {"zeros": zero, "mean": x.mean(0), "median": ref_median(x)}[init]

    def obj(z):
        return float(sum(torch.linalg.norm(z - xi) for xi in x)) / len(x)

    for _ in range(T):
        beta = [1.0 / max(nu, float(torch.linalg.norm(z - xi))) / len(x) for xi in x]
        beta = torch.tensor(beta, dtype=torch.float64)
        z_new = (beta[:, None] * x).sum(0) / beta.sum()
        if ftol is not None and abs(obj(z) - obj(z_new)) <= ftol * obj(z_new):
            return z_new
        z = z_new
    return z


def ref_cc(x, v, tau, L):
    x, v = x.double(), v.double()
    for _ in range(L):
        c = [(xi - v) * min(1.0, tau / float(torch.linalg.norm(xi - v))) for xi in x]
        v = v + torch.stack(c).mean(0)
    return v


def ref_bulyan(x, f):
    n = x.shape[0]
    theta, beta = n - 2 * f, n - 4 * f
    pool, chosen = list(range(n)), []
    for _ in range(theta):
        scores = ref_krum_scores(x, f, pool)
        best = min(range(len(pool)), key=lambda i: (scores[i], i))
        chosen.append(pool.pop(best))
    m = x[chosen].double()
    return ref_closest(m, ref_median(m), beta)


def ref_aksel(x, f, mode="mid", median="lower"):
    x64 = x.double()
    n = x.shape[0]
    med = torch.sort(x64, 0).values[(n - 1) // 2] if median == "lower" else ref_median(x)
    dist = ((x64 - med) ** 2).sum(1)
    c = (n + 1) // 2 if mode == "mid" else n - f
    return x64[torch.argsort(dist, stable=True)[:c]].mean(0)


def ref_nnm(x, f):
    dist = ref_sq_dist(x)
    n = x.shape[0]
    k = n - f
    out = []
    for i in range(n):
        near = sorted(range(n), key=lambda j: (float(dist[i, j]), j != i))[:k]
        out.append(x.double()[near].mean(0))
    return torch.stack(out)


def ref_clip(x, c):
    x = x.double()
    return torch.stack([xi * min(1.0, c / float(torch.linalg.norm(xi))) for xi in x])


def ref_arc(x, f):
    x = x.double()
    n = x.shape[0]
    k = int(2 * (f / n) * (n - f))
    norms = torch.linalg.norm(x, dim=1)
    radius = float(torch.sort(norms, descending=True).values[k])
    return torch.stack([xi * min(1.0, radius / float(ni)) for xi, ni in zip(x, norms)])


# ---------------------------------------------------------------- sorting kernel


@pytest.mark.parametrize("kind", ["transposition", "bitonic", "sort"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 16, 17])
def test_sorting_networks_equal_torch_sort_with_ties_and_infinities(kind, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-3, 4, (n, 2500), generator=g).float()  # many ties
    x[0, :7] = float("inf")
    x[-1, 7:14] = -float("inf")
    expected = torch.sort(x, dim=0).values
    out = torch.empty_like(x)
    for cols, s in sorted_chunks(x, chunk=1024, kind=kind):  # chunk boundaries inside the matrix
        out[:, cols] = s
    assert torch.equal(out, expected)


def test_network_choice_small_n_networks_large_n_torch_sort():
    assert network_kind(5) == "transposition"
    assert network_kind(8) == "bitonic"
    assert network_kind(32) == "bitonic"
    assert network_kind(NETWORK_MAX_N + 1) == "sort"


def test_sorting_selected_rows_equals_sorting_their_copy():
    x = random_rows(12, 3000)
    sel = torch.tensor([0, 3, 4, 9, 11])
    out = torch.empty(5, 3000)
    for cols, s in sorted_chunks(x, chunk=1024, rows=sel):
        out[:, cols] = s
    assert torch.equal(out, torch.sort(x[sel], dim=0).values)


# ---------------------------------------------------------------- hand-computed cases


def test_mean_hand_case():
    assert get_aggregator("mean", 3, 0)(rows([1, 2], [3, 4], [5, 9])).tolist() == [3.0, 5.0]


def test_cm_hand_case_odd_n_is_middle_value():
    assert get_aggregator("cm", 3, 1)(rows([1, 10], [2, 20], [100, -5])).tolist() == [2.0, 10.0]


def test_cm_even_n_is_midpoint_of_the_two_middle_values():
    x = column(1, 2, 3, 10)
    assert get_aggregator("cm", 4, 1)(x).item() == 2.5
    y = random_rows(8, 300, seed=3)
    torch.testing.assert_close(get_aggregator("cm", 8, 3)(y).double(), ref_median(y), rtol=0, atol=1e-6)


def test_tm_hand_case_drops_f_per_side():
    assert get_aggregator("tm", 5, 1)(column(1, 2, 3, 4, 100)).item() == 3.0


def test_meamed_hand_case_averages_n_minus_f_closest_to_median():
    # median 2; the 4 values closest to it are 0, 1, 2, 3
    assert get_aggregator("meamed", 5, 1)(column(0, 1, 2, 3, 10)).item() == 1.5


def test_meamed_even_n_centre_is_midpoint_median():
    # n = 4, f = 1: midpoint median 2.5; closest 3 of {0, 2, 3, 5.2}: 2, 3 (0.5) then 0 (2.5) vs 5.2 (2.7)
    assert get_aggregator("meamed", 4, 1)(column(0, 2, 3, 5.2)).item() == pytest.approx(5 / 3)


def test_closest_values_window_keeps_strictly_closer_values_under_ties():
    from server.aggregators.trimmed import closest_mean_of_sorted

    # centre 0, m = 3: 0.5 is strictly closest; the three -1 and the 1 tie at distance 1
    s = column(-1, -1, -1, 0.5, 1)
    assert closest_mean_of_sorted(s, torch.zeros(1), 3).item() == pytest.approx(-0.5)  # -1, -1, 0.5
    s = column(-4, -1, 0.5, 1, 1, 1, 9)
    assert closest_mean_of_sorted(s, torch.zeros(1), 4).item() == pytest.approx(0.375)  # -1, 0.5, 1, 1


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9])
def test_closest_values_window_matches_argsort_reference_for_every_m(m):
    from server.aggregators.trimmed import closest_mean_of_sorted

    x = random_rows(9, 400, seed=m)
    s = torch.sort(x, dim=0).values
    centre = random_rows(1, 400, seed=20 + m)[0] * 0.5
    torch.testing.assert_close(closest_mean_of_sorted(s, centre, m).double(), ref_closest(x, centre, m),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [5, 9, 15])
def test_closest_values_window_is_exact_with_ties_and_any_centre(n):
    """Plateaus of equal values (identical Byzantine rows, quantised values) and centres inside, between
    and outside the values: the window equals the m closest values, equal distances going to the lower."""
    from server.aggregators.basic import median_of_sorted
    from server.aggregators.trimmed import closest_mean_of_sorted

    g = torch.Generator().manual_seed(n)
    s = torch.sort(torch.randint(-3, 4, (n, 500), generator=g).float(), dim=0).values
    centres = [median_of_sorted(s), torch.randint(-8, 9, (500,), generator=g) * 0.5]
    for centre in centres:
        for m in range(1, n + 1):
            torch.testing.assert_close(closest_mean_of_sorted(s, centre, m).double(), ref_closest(s, centre, m),
                                       rtol=1e-6, atol=1e-6)


def test_bulyan_with_identical_byzantine_rows_matches_the_definition():
    """n = 15 < 6f with f = 3 (the masked-window path): the coordinate step is the mean of the beta values
    closest to the median of the theta selected rows, also when the f Byzantine rows are identical."""
    from server.aggregators.basic import median_of_sorted
    from server.aggregators.bulyan import bulyan_selection
    from server.aggregators.geometry import pairwise_sq_distances

    n, f = 15, 3
    honest = torch.round(random_rows(n - f, 300, seed=4) * 2) / 2  # quantised: many ties
    x = torch.cat([honest, honest.mean(0, keepdim=True).expand(f, 300) + 0.5])
    theta, beta = n - 2 * f, n - 4 * f
    sel = torch.sort(x[bulyan_selection(pairwise_sq_distances(x), f, theta)], dim=0).values
    expected = ref_closest(sel, median_of_sorted(sel), beta)
    torch.testing.assert_close(get_aggregator("bulyan", n, f)(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_phocas_hand_case_centre_is_trimmed_mean():
    # TM_1 = mean(4, 5, 10) = 6.33 -> the 4 closest drop 0: mean(4, 5, 10, 11) = 7.5; MeaMed drops 11
    x = column(0, 4, 5, 10, 11)
    assert get_aggregator("phocas", 5, 1)(x).item() == 7.5
    assert get_aggregator("meamed", 5, 1)(x).item() == 4.75


def test_krum_hand_case_ties_broken_by_index():
    # n = 5, f = 1: k = 2 neighbours; scores 0:10, 1:5, 3:5, 4:10, 20:545 -> rows 1 and 3 tie, row 1 wins
    x = column(0, 1, 3, 4, 20)
    assert get_aggregator("krum", 5, 1)(x).item() == 1.0
    # Multi-Krum, m = n - f = 4: rows 1, 3, 0, 4 -> mean 2
    assert get_aggregator("multikrum", 5, 1)(x).item() == 2.0
    assert get_aggregator("multikrum", 5, 1, m=2)(x).item() == 2.0


def test_krum_neighbours_option_changes_the_score():
    # k = n - f - 1 = 2 with n = 4, f = 1: scores 0:(1+4)=5, 1:(1+1)=2, 2:(1+4)=5, 9:(49+64)=113
    x = column(0, 1, 2, 9)
    assert get_aggregator("krum", 4, 1, neighbours="n-f-1")(x).item() == 1.0
    # paper's k = 1: scores 0:1, 1:1, 2:1, 9:49 -> first index
    assert get_aggregator("krum", 4, 1)(x).item() == 0.0


def test_gm_hand_case_one_weiszfeld_step_from_zero():
    # norms 5 and 1: beta = (1/5, 1) -> z = (0.2 [3, 4] + [0, 1]) / 1.2 = [0.5, 1.5]
    out = get_aggregator("gm", 2, 0, T=1)(rows([3, 4], [0, 1]))
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5]))


def test_gm_many_steps_reach_the_one_dimensional_median():
    out = get_aggregator("gm", 5, 2, init="mean", nu=1e-9, T=300)(column(0, 1, 2, 50, 90))
    assert out.item() == pytest.approx(2.0, abs=1e-3)


def test_cc_hand_case_clips_around_zero_first():
    # tau = 1: [3, 4] has norm 5 -> factor 0.2; [0, 0.5] is kept -> v = mean([0.6, 0.8], [0, 0.5])
    out = get_aggregator("cc", 2, 0, tau=1.0)(rows([3, 4], [0, 0.5]))
    torch.testing.assert_close(out, torch.tensor([0.3, 0.65]))


def test_bulyan_hand_case_iterated_krum_then_closest_to_median():
    # selection: 2, 3, 1, 4, 0 (1000 never); median of them 2; the 3 closest: 1, 2, 3
    assert get_aggregator("bulyan", 7, 1)(column(0, 1, 2, 3, 4, 5, 1000)).item() == 2.0


def test_aksel_hand_case_modes():
    x = column(0, 1, 2, 3, 100)  # median 2; distances 4, 1, 0, 1, 9604
    assert get_aggregator("aksel", 5, 1)(x).item() == 2.0  # c = 3: 1, 2, 3
    assert get_aggregator("aksel", 5, 1, mode="n-f")(x).item() == 1.5  # c = 4: 0, 1, 2, 3


def test_nnm_hand_case_mixes_n_minus_f_nearest_including_self():
    y = get_aggregator("mean", 4, 1, pre=["nnm"]).pres[0](column(0, 1, 2, 10), 1)
    torch.testing.assert_close(y.squeeze(1), torch.tensor([1.0, 1.0, 1.0, 13 / 3]))


def test_clip_hand_case():
    y = get_aggregator("mean", 2, 0, pre=[{"name": "clip", "c": 2.0}]).pres[0](rows([3, 4], [0, 1]), 0)
    torch.testing.assert_close(y, torch.tensor([[1.2, 1.6], [0.0, 1.0]]))


def test_arc_hand_case_clips_k_largest_to_next_norm():
    # n = 5, f = 1: k = floor(2 * 1/5 * 4) = 1; the norm-10 row is clipped to norm 4
    y = get_aggregator("mean", 5, 1, pre=["arc"]).pres[0](column(1, -2, 3, 4, -10), 1)
    assert y.squeeze(1).tolist() == [1.0, -2.0, 3.0, 4.0, -4.0]


def test_bucketing_hand_case_buckets_average_pairs_of_the_permutation():
    x = column(1, 2, 4, 8, 16)
    pre = get_aggregator("mean", 5, 0, pre=[{"name": "bucketing", "s": 2, "seed": 7}]).pres[0]
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    expected = [x[perm[i:i + 2]].mean().item() for i in range(0, 5, 2)]
    assert pre(x, 0).squeeze(1).tolist() == pytest.approx(expected)
    assert len(expected) == 3  # ceil(5 / 2), the last bucket holds one row


# ---------------------------------------------------------------- definitions on random inputs


@pytest.mark.parametrize("n,f", [(9, 2), (10, 3), (16, 4)])
def test_coordinatewise_rules_match_float64_reference(n, f):
    x = random_rows(n, 257, seed=n)
    med = ref_median(x)
    expected = {
        "mean": x.double().mean(0),
        "cm": med,
        "tm": ref_tm(x, f),
        "meamed": ref_closest(x, med, n - f),
        "phocas": ref_closest(x, ref_tm(x, f), n - f),
    }
    for name, ref in expected.items():
        out = get_aggregator(name, n, f)(x).double()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("n,f", [(8, 3), (11, 2)])
def test_krum_and_multikrum_match_reference(n, f):
    x = random_rows(n, 64, seed=n)
    order = ref_krum_order(x, f)
    assert torch.equal(get_aggregator("krum", n, f)(x), x[order[0]])
    multi = get_aggregator("multikrum", n, f)(x).double()
    torch.testing.assert_close(multi, x.double()[order[:n - f]].mean(0))
    order1 = ref_krum_order(x, f, k_offset=1)
    assert torch.equal(get_aggregator("krum", n, f, neighbours="n-f-1")(x), x[order1[0]])


@pytest.mark.parametrize("params", [
    {},
    {"preset": "rfa"},
    {"init": "median", "T": 5},
    {"init": "mean", "nu": 1e-3, "T": 20, "ftol": 1e-4},
])
@pytest.mark.parametrize("method", ["gram", "direct"])
def test_gm_matches_weiszfeld_reference(params, method):
    x = random_rows(9, 80, seed=5)
    x[7:] += 30.0  # two far rows
    preset = {"byzfl": dict(init="zeros", nu=0.1, T=3, ftol=None),
              "rfa": dict(init="mean", nu=1e-5, T=4, ftol=1e-6)}
    ref_params = dict(preset[params.get("preset", "byzfl")])
    ref_params.update({k: v for k, v in params.items() if k != "preset"})
    out = get_aggregator("gm", 9, 2, method=method, **params)(x)
    torch.testing.assert_close(out.double(), ref_gm(x, **ref_params), rtol=1e-5, atol=1e-5)


def test_gm_from_the_mean_is_exact_when_large_rows_cancel_in_the_mean():
    """Rows +B and -B leave the mean near the honest rows; its distances to them are O(1), which the
    Gram form ||mean||^2 - 2<mean, x_i> + ||x_i||^2 loses to cancellation at B = 1e15 (it was 0.82 off)."""
    x = random_rows(8, 1000, seed=3) * 0.1
    x[6], x[7] = 1e15, -1e15
    ref = ref_gm(x, init="mean", nu=1e-5, T=4, ftol=1e-6)  # float64 mean; the rule's float32 mean is 0.03 off
    gram, direct = (get_aggregator("gm", 8, 2, method=m, preset="rfa")(x).double() for m in ("gram", "direct"))
    torch.testing.assert_close(gram, direct, rtol=1e-6, atol=1e-6)
    assert float((gram - ref).norm()) < 0.1 < float((x[:6].double() - ref).norm(dim=1).min())


def test_cc_matches_reference_over_rounds_with_l_iterations():
    agg = get_aggregator("cc", 9, 2, tau=1.5, L=3)
    v = torch.zeros(50, dtype=torch.float64)
    for t in range(3):
        x = random_rows(9, 50, seed=t)
        v = ref_cc(x, v, 1.5, 3)
        torch.testing.assert_close(agg(x).double(), v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,f", [(7, 1), (11, 2), (12, 2)])
def test_bulyan_matches_reference(n, f):
    x = random_rows(n, 120, seed=n)
    out = get_aggregator("bulyan", n, f)(x).double()
    torch.testing.assert_close(out, ref_bulyan(x, f), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,median", [("mid", "lower"), ("n-f", "lower"), ("mid", "midpoint")])
def test_aksel_matches_reference(mode, median):
    x = random_rows(10, 90, seed=2)
    out = get_aggregator("aksel", 10, 3, mode=mode, median=median)(x)
    torch.testing.assert_close(out.double(), ref_aksel(x, 3, mode, median), rtol=1e-5, atol=1e-5)


def test_pre_aggregators_match_reference():
    x = random_rows(9, 70, seed=4)
    x[0] *= 4
    nnm = get_aggregator("mean", 9, 2, pre=["nnm"]).pres[0]
    torch.testing.assert_close(nnm(x, 2).double(), ref_nnm(x, 2), rtol=1e-5, atol=1e-5)
    clip = get_aggregator("mean", 9, 2, pre=[{"name": "clip", "c": 12.0}]).pres[0]
    torch.testing.assert_close(clip(x, 2).double(), ref_clip(x, 12.0), rtol=1e-5, atol=1e-5)
    arc = get_aggregator("mean", 9, 2, pre=["arc"]).pres[0]
    torch.testing.assert_close(arc(x, 2).double(), ref_arc(x, 2), rtol=1e-5, atol=1e-5)


def test_pipeline_is_rule_applied_to_pre_aggregated_rows():
    x = random_rows(9, 40, seed=6)
    out = get_aggregator("cm", 9, 2, pre=["nnm"])(x)
    torch.testing.assert_close(out.double(), ref_median(ref_nnm(x, 2)), rtol=1e-5, atol=1e-5)


def test_distances_are_accurate_for_close_rows_with_large_norms():
    # distances ~0.2 between rows of norm ~6e3: the plain float32 Gram form is off by a factor ~500 here
    x = random_rows(6, 4000, seed=1) * 1e-3 + 100.0
    torch.testing.assert_close(pairwise_sq_distances(x), ref_sq_dist(x), rtol=1e-9, atol=1e-12)


def test_distances_to_huge_rows_do_not_overflow_and_keep_honest_distances():
    x = random_rows(6, 500, seed=2)
    x[4] = 1e30
    x[5] = -3e38
    d, ref = pairwise_sq_distances(x), ref_sq_dist(x)
    assert bool(torch.isfinite(d).all())
    torch.testing.assert_close(d[:4, :4], ref[:4, :4], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d[4, :4], ref[4, :4], rtol=1e-6, atol=0.0)


def test_distances_to_a_point_redo_overflowing_rows_in_float64():
    x = random_rows(5, 3000, seed=3)
    x[1] = 1e30
    z = random_rows(1, 3000, seed=4)[0]
    ref = ((x.double() - z.double()) ** 2).sum(1)
    torch.testing.assert_close(sq_distances_to(x, z), ref, rtol=1e-6, atol=0.0)
    assert sq_distances_to(x)[1].item() == pytest.approx(3000 * 1e60, rel=1e-6)


def test_chunked_loops_restore_the_thread_count():
    before = torch.get_num_threads()
    get_aggregator("cm", 9, 2)(random_rows(9, 5000))
    get_aggregator("krum", 9, 2)(random_rows(9, 5000))
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- invariances and robustness properties


def _build(name, n, f, **params):
    return get_aggregator(name, n, f, **params)


@pytest.mark.parametrize("name", RULES)
def test_permutation_invariance(name):
    n, f = 11, 2
    x = random_rows(n, 33, seed=8)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    a, b = _build(name, n, f)(x), _build(name, n, f)(x[perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cm", "tm", "meamed", "phocas", "bulyan", "aksel", "krum", "multikrum"])
@pytest.mark.parametrize("far", [1e6, 1e30])
def test_f_identical_far_rows_stay_outside_the_output(name, far):
    n, f = 11, 2
    honest = random_rows(n - f, 25, seed=9)
    x = torch.cat([honest, torch.full((f, 25), far)])
    out = _build(name, n, f)(x)
    lo, hi = honest.min(0).values, honest.max(0).values
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()), name


@pytest.mark.parametrize("far", [1e6, 1e30, 3e38])
def test_krum_never_selects_f_identical_outliers(far):
    n, f = 8, 3
    honest = random_rows(n - f, 40, seed=2)
    x = torch.cat([torch.full((f, 40), far), honest])  # outliers first: ties would pick them
    out = get_aggregator("krum", n, f)(x)
    assert any(torch.equal(out, h) for h in honest)
    d = pairwise_sq_distances(x)
    assert bool(torch.isfinite(d).all())  # no overflow: float64 distances


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_row_gives_finite_output_inside_the_honest_rows(name, bad):
    """The mean, gm and cc drop the row and equal the rule recomputed without it; the order-statistic
    and selection rules keep it as an extreme value, so their output stays within the other rows' range."""
    n, f = 11, 2
    x = random_rows(n, 30, seed=10)
    x[4, 3] = bad
    out = _build(name, n, f)(x)
    assert bool(torch.isfinite(out).all()) and out.dtype == torch.float32
    keep = torch.arange(n) != 4
    if name in ("mean", "gm", "cc"):
        expected = _build(name, n, f)(x[keep], f=f - 1)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # recomputed without the row
    else:
        lo, hi = x[keep].min(0).values, x[keep].max(0).values
        assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()), name


@pytest.mark.parametrize("pre", PRES)
@pytest.mark.parametrize("name", ["cm", "tm", "krum", "cc"])
def test_non_finite_rows_behind_pre_aggregators_are_dropped_and_f_lowered(pre, name):
    x = random_rows(11, 30, seed=11)
    x[2] = float("nan")
    x[5, 0] = float("inf")
    out = get_aggregator(name, 11, 2, pre=[pre])(x)
    keep = torch.isfinite(x).all(dim=1)
    ref = get_aggregator(name, 11, 2, pre=[pre])
    first = ref.aggregate(x, 2)  # pre-aggregators and rule once, without the fallback (draws bucketing's perm)
    if bool(torch.isfinite(first).all()):  # e.g. Krum: non-finite rows are infinitely far, never picked
        torch.testing.assert_close(out, first)
    else:  # the pipeline again on the 9 finite rows, f lowered by the 2 dropped
        torch.testing.assert_close(out, ref(x[keep], f=0))
    assert bool(torch.isfinite(out).all())


def test_all_rows_non_finite_gives_zeros():
    x = torch.full((5, 4), float("nan"))
    assert get_aggregator("gm", 5, 1)(x).tolist() == [0.0] * 4


def test_mean_of_rows_near_float_max_is_clamped_not_inf():
    x = torch.full((3, 2), 3.0e38)
    out = get_aggregator("mean", 3, 0)(x)
    assert out.tolist() == [torch.finfo(torch.float32).max] * 2  # the float32 sum overflows; clamped


@pytest.mark.parametrize("name", RULES)
def test_fewer_rows_than_n_with_effective_f(name):
    # the server drops non-finite rows and passes f_eff = max(0, f - dropped): r may be far below n
    agg = _build(name, 11, 2)
    for r, f_eff in [(9, 0), (3, 0), (1, 0)]:
        x = random_rows(r, 20, seed=r)
        out = agg(x, f=f_eff)
        assert out.shape == (20,) and bool(torch.isfinite(out).all())
        if r == 1 and name != "cc":  # one row: every rule returns it (cc moves its centre by at most tau)
            torch.testing.assert_close(out, x[0])
    x = random_rows(9, 20, seed=9)
    if name in ("tm", "meamed", "phocas", "mean", "multikrum"):  # with f = 0 nothing is trimmed: the mean
        torch.testing.assert_close(_build(name, 11, 2)(x, f=0), x.mean(0), rtol=1e-5, atol=1e-6)
    if name == "tm":  # and with f = 1 one value per side, not the configured 2
        torch.testing.assert_close(_build(name, 11, 2)(x, f=1), ref_tm(x, 1).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", RULES)
def test_sub_matrix_view_equals_its_contiguous_copy(name):
    # HGO segments: a rule on some rows and a column range of a larger matrix
    big = random_rows(13, 300, seed=12)
    view = big[2:11, 40:250]
    assert not view.is_contiguous()
    a, b = _build(name, 9, 1)(view), _build(name, 9, 1)(view.contiguous())
    torch.testing.assert_close(a, b)
    assert a.dtype == torch.float32


# ---------------------------------------------------------------- state


def test_cc_state_across_rounds_and_checkpoint_restore():
    xs = [random_rows(7, 20, seed=s) for s in range(4)]
    full = get_aggregator("cc", 7, 2, tau=0.5)
    outs = [full(x) for x in xs]
    # round 2 starts from round 1's output, not from zero
    torch.testing.assert_close(outs[1].double(), ref_cc(xs[1], outs[0], 0.5, 1), rtol=1e-5, atol=1e-6)
    first = get_aggregator("cc", 7, 2, tau=0.5)
    first(xs[0])
    first(xs[1])
    state = first.state_dict()
    resumed = get_aggregator("cc", 7, 2, tau=0.5)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(xs[2]), outs[2]) and torch.equal(resumed(xs[3]), outs[3])


def test_cc_center_zero_option_ignores_history():
    agg = get_aggregator("cc", 7, 2, tau=0.5, center="zero")
    x = random_rows(7, 20, seed=1)
    assert torch.equal(agg(x), agg(x))


def test_bucketing_state_restores_the_same_permutations():
    xs = [random_rows(8, 10, seed=s) for s in range(4)]
    full = get_aggregator("cm", 8, 1, pre=[{"name": "bucketing", "s": 2, "seed": 3}])
    outs = [full(x) for x in xs]
    first = get_aggregator("cm", 8, 1, pre=[{"name": "bucketing", "s": 2, "seed": 3}])
    first(xs[0])
    first(xs[1])
    resumed = get_aggregator("cm", 8, 1, pre=[{"name": "bucketing", "s": 2, "seed": 3}])
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed(xs[2]), outs[2]) and torch.equal(resumed(xs[3]), outs[3])
    other_seed = get_aggregator("cm", 8, 1, pre=[{"name": "bucketing", "s": 2, "seed": 4}])
    assert not torch.equal(outs[0], other_seed(xs[0]))


# ---------------------------------------------------------------- preconditions


@pytest.mark.parametrize("name,n,f,condition", [
    ("krum", 7, 3, "n >= 2f + 2"),
    ("multikrum", 5, 2, "n >= 2f + 2"),
    ("bulyan", 8, 2, "n >= 4f + 3"),
    ("tm", 4, 2, "n >= 2f + 1"),
    ("meamed", 6, 3, "n >= 2f + 1"),
    ("phocas", 2, 1, "n >= 2f + 1"),
    ("cm", 6, 3, "n >= 2f + 1"),
    ("gm", 4, 2, "n >= 2f + 1"),
    ("cc", 2, 1, "n >= 2f + 1"),
    ("aksel", 9, 0, "f >= 1 and n >= 2f + 1"),
])
def test_precondition_violation_raises_one_clear_error(name, n, f, condition):
    with pytest.raises(ValueError) as e:
        get_aggregator(name, n, f)
    msg = str(e.value)
    assert f"'{name}'" in msg and f"n={n}" in msg and f"f={f}" in msg and condition in msg
    with pytest.raises(ValueError):
        AGGREGATORS[name].cls(n + 10, f).check(n, f)


def test_krum_paper_setting_runs_and_strict_option_rejects_it():
    get_aggregator("krum", 8, 3)  # paper A: n = 8, f = 3 satisfies n >= 2f + 2
    with pytest.raises(ValueError, match=r"'krum' needs n > 2f \+ 2.*n=8, f=3"):
        get_aggregator("krum", 8, 3, strict=True)


def test_inner_rule_precondition_is_checked_on_bucket_count():
    get_aggregator("krum", 8, 1, pre=[{"name": "bucketing", "s": 2}])  # 4 buckets >= 2*1 + 2
    with pytest.raises(ValueError, match=r"'krum' needs n >= 2f \+ 2: got n=4, f=2"):
        get_aggregator("krum", 8, 2, pre=[{"name": "bucketing", "s": 2}])


def test_unknown_names_and_parameters_raise():
    with pytest.raises(ValueError, match="unknown"):
        get_aggregator("median", 5, 1)
    with pytest.raises(ValueError, match="unknown"):
        get_aggregator("cm", 5, 1, pre=["mixing"])
    with pytest.raises(ValueError, match=r"'cc' got unknown parameter\(s\) \['radius'\]"):
        get_aggregator("cc", 5, 1, radius=0.1)
    with pytest.raises(ValueError, match="preset"):
        get_aggregator("gm", 5, 1, preset="fast")


def test_registry_records_condition_doc_and_robustness_note_for_every_name():
    for spec in list(AGGREGATORS.values()) + list(PRE_AGGREGATORS.values()):
        assert spec.condition and spec.doc and spec.robustness, spec.name
    assert set(RULES) == {"mean", "krum", "multikrum", "gm", "cm", "tm", "meamed", "phocas", "cc", "bulyan",
                          "aksel"}
    assert set(PRES) == {"nnm", "bucketing", "clip", "arc"}


# ---------------------------------------------------------------- configuration


def test_every_yaml_builds_its_rule_with_its_defaults():
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "aggregator"
    names = set()
    for path in sorted(conf.glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        assert cfg.pop("f") is None and cfg.pop("pre") == []
        name = cfg.pop("name")
        names.add(name)
        agg = get_aggregator(name, 11, 2, pre=[], **cfg)
        assert bool(torch.isfinite(agg(random_rows(11, 16))).all())
    assert names == set(RULES)


def test_hydra_overrides_select_rule_f_and_pre_aggregators(tmp_path):
    import shutil
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    shutil.copytree(Path(__file__).resolve().parents[1] / "conf" / "aggregator", tmp_path / "aggregator")
    (tmp_path / "config.yaml").write_text("defaults:\n  - aggregator: cc\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose("config", overrides=["aggregator=krum", "aggregator.f=3", "aggregator.pre=[nnm]"])
    params = {k: v for k, v in cfg.aggregator.items() if k not in ("name", "f", "pre")}
    agg = get_aggregator(cfg.aggregator.name, 8, cfg.aggregator.f, pre=list(cfg.aggregator.pre), **params)
    assert repr(agg) == "nnm(n=8, f=3) -> krum(n=8, f=3)"
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose("config", overrides=["aggregator.pre=[{name:bucketing,s:2,seed:1}]", "aggregator.L=3"])
    params = {k: v for k, v in cfg.aggregator.items() if k not in ("name", "f", "pre")}
    agg = get_aggregator(cfg.aggregator.name, 8, 1, pre=cfg.aggregator.pre, **params)
    assert agg.rule.L == 3 and agg.pres[0].s == 2 and agg.rule.n == 4


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name", RULES)
def test_gpu_matches_cpu(name):
    x = random_rows(11, 5000, seed=13)
    a = _build(name, 11, 2)(x)
    b = _build(name, 11, 2)(x.cuda())
    assert b.device.type == "cuda" and b.dtype == torch.float32
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
