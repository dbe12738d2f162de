"""Paper A's bounds (common.theory) against their definitions: B* is the minimiser of eq. 8, eq. 11 is
U(B*), B~* is the minimiser of eq. 16 at a fixed budget, and the monotonicity claims of §3."""
import math
import random

import pytest

from common import theory

INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def golden_min_log(fn, lo=1e-12, hi=1e12, iters=160):
    """Minimiser of a unimodal fn on (lo, hi) by golden-section search on log B (no scipy)."""
    a, b = math.log(lo), math.log(hi)
    x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
    f1, f2 = fn(math.exp(x1)), fn(math.exp(x2))
    for _ in range(iters):
        if f1 <= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - INV_PHI * (b - a)
            f1 = fn(math.exp(x1))
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + INV_PHI * (b - a)
            f2 = fn(math.exp(x2))
    return math.exp((a + b) / 2.0)


def random_inputs(rng: random.Random):
    """Positive inputs spanning several orders of magnitude, delta in (0, 1/2)."""
    def logu(lo, hi):
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return dict(sigma2=logu(1e-2, 1e2), L=logu(1e-1, 1e2), F0=logu(1e-1, 1e1), c=logu(1e-1, 1e1),
                delta=rng.uniform(0.01, 0.49), m=rng.randint(2, 64), C=logu(1e5, 1e9))


def test_b_star_is_the_numerical_minimiser_of_eq8():
    rng = random.Random(0)
    for _ in range(25):
        p = random_inputs(rng)
        num = golden_min_log(lambda B, p=p: theory.U(B, **p))
        assert theory.b_star(**p) == pytest.approx(num, rel=1e-6), p


def test_eq11_equals_U_at_b_star():
    rng = random.Random(1)
    for _ in range(50):
        p = random_inputs(rng)
        b = theory.b_star(**p)
        assert theory.U_at_b_star(**p) == pytest.approx(theory.U(b, **p), rel=1e-12), p


def test_b_star_hand_computed_case():
    # sigma2=1, L=1, F0=1, c=1, delta=1/4, m=4, C=3*2^10:
    # (3/(16*4))^(1/3) * ((1/4)(1+1)/(4*3/4))^(1/3) * 1 * C^(1/3) = (3/64 * 1/6 * 3072)^(1/3) = 24^(1/3)
    assert theory.b_star(1.0, 1.0, 1.0, 1.0, 0.25, 4, 3 * 2**10) == pytest.approx(24.0 ** (1 / 3), rel=1e-14)


def test_b_star_increases_with_delta():
    p = dict(sigma2=2.0, L=5.0, F0=2.3, c=3.0, m=8, C=160 * 50000.0)
    deltas = [k / 100 for k in range(1, 50)]
    values = [theory.b_star(delta=d, **p) for d in deltas]
    assert all(b < a_next for b, a_next in zip(values, values[1:]))
    tilde = [theory.b_tilde_star(delta=d, **{k: v for k, v in p.items() if k != "C"}) for d in deltas]
    assert all(b < a_next for b, a_next in zip(tilde, tilde[1:]))


def test_b_star_scales_as_cube_root_of_budget():
    p = dict(sigma2=0.7, L=3.0, F0=1.5, c=2.0, delta=0.375, m=8)
    assert theory.b_star(C=8e6, **p) / theory.b_star(C=1e6, **p) == pytest.approx(2.0, rel=1e-12)


def test_U_is_convex_on_a_grid():
    rng = random.Random(2)
    for _ in range(10):
        p = random_inputs(rng)
        b = theory.b_star(**p)
        grid = [b * (0.01 + 0.05 * k) for k in range(400)]  # uniform in B around B*
        u = [theory.U(x, **p) for x in grid]
        second = [u[i - 1] - 2 * u[i] + u[i + 1] for i in range(1, len(u) - 1)]
        assert min(second) >= -1e-12 * max(u)
        assert abs(grid[min(range(len(u)), key=u.__getitem__)] - b) <= 0.05 * b  # grid step


def test_delta_zero_gives_the_infimum_at_zero_batch():
    p = dict(sigma2=1.0, L=2.0, F0=3.0, c=1.0, delta=0.0, m=8, C=1e6)
    assert theory.b_star(**p) == 0.0
    assert theory.U_at_b_star(**p) == pytest.approx(theory.U(1e-9, **p), rel=1e-9)
    assert theory.U(2.0, **p) > theory.U(1.0, **p)
    # ByzSGDnm keeps a positive optimum without attack: 9 sigma^2 / (80 m L F0)
    assert theory.b_tilde_star(1.0, 2.0, 3.0, 1.0, 0.0, 8) == pytest.approx(9 / (80 * 8 * 6))


def test_b_tilde_star_minimises_eq16_and_eq17_is_its_value():
    rng = random.Random(3)
    for _ in range(25):
        p = random_inputs(rng)
        q = {k: v for k, v in p.items() if k != "C"}
        num = golden_min_log(lambda B, p=p: theory.U_tilde(B, **p))
        bt = theory.b_tilde_star(**q)
        assert bt == pytest.approx(num, rel=1e-6), p
        assert theory.U_tilde_at_b_tilde_star(**p) == pytest.approx(theory.U_tilde(bt, **p), rel=1e-12)


def test_byzsgdnm_hand_computed_case_with_byzantine_workers():
    """Prop. 2 written out at sigma^2 = 35, L = 5, F0 = 2.3, c = 1, m = 8, delta = 1/8, C = 35000:
    2 c m delta (1 - delta) = 1.75, so the Byzantine factor is sqrt(1.75) + 1."""
    s = math.sqrt(1.75) + 1.0
    bt = 9 * s**1.5 * 35.0 / (80 * 8 * (7 / 8) * 5.0 * 2.3)
    assert theory.b_tilde_star(35.0, 5.0, 2.3, 1.0, 0.125, 8) == pytest.approx(bt, rel=1e-12)
    eq17 = 6 * s**0.5 * (5 * 5.0 * 2.3 * 35.0) ** 0.25 / 35000**0.25 + 18 * s**0.75 * math.sqrt(35.0) / math.sqrt(35000)
    assert theory.U_tilde_at_b_tilde_star(35.0, 5.0, 2.3, 1.0, 0.125, 8, 35000) == pytest.approx(eq17, rel=1e-12)


def test_T_of_budget():
    assert theory.T_of(32, 8, 0.375, 160 * 50000 * 0.625) == pytest.approx(160 * 50000 / (32 * 8))


@pytest.mark.parametrize("name,value", [
    ("delta", 0.5), ("delta", -0.1), ("delta", float("nan")), ("sigma2", 0.0), ("L", -1.0),
    ("F0", 0.0), ("c", 0.0), ("m", 0), ("C", -5.0), ("B", 0.0), ("L", float("inf")), ("F0", "x"),
])
def test_invalid_inputs_raise_value_error_naming_the_argument(name, value):
    p = dict(B=16.0, sigma2=1.0, L=1.0, F0=1.0, c=1.0, delta=0.25, m=8, C=1e6)
    p[name] = value
    with pytest.raises(ValueError, match=rf"^{name}="):
        theory.U(**p)
    if name != "B":
        p.pop("B")
        with pytest.raises(ValueError, match=rf"^{name}="):
            theory.b_star(**p)
