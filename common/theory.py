"""Paper A's bounds and optimal batch sizes as plain float functions.

Paper A: Yang, Shi & Li, "On the Optimal Batch Size for Byzantine-Robust Distributed Learning".

Symbols (paper A §2-3): ``sigma2`` = sigma^2, the per-sample gradient variance (Assumption 1);
``L`` the smoothness constant (Assumption 3); ``F0`` >= F(w_0) - F^* (Theorems 1-2); ``c`` the constant
of a (delta_max, c)-robust aggregator (Definition 1: E||e||^2 <= c * delta * rho^2); ``delta`` the
fraction of Byzantine workers; ``m`` the number of workers; ``C = T * B * m * (1 - delta)`` the total
number of gradient computations on non-Byzantine workers; ``B`` the per-worker batch size.

delta enters as the product ``c * delta`` wherever the aggregation error appears, as
``1 + c*delta*m`` (ByzSGDm) or ``sqrt(2*c*m*delta*(1-delta)) + 1`` (ByzSGDnm), and on its own through
``1 - delta`` (the share of honest workers in C). ``m`` enters as printed in each equation; note that
eq. (10) has m in two places, ``(3 / (16 L^2 F0^2 m))^(1/3)`` and
``(c delta (1 + c delta m) / (m (1 - delta)))^(1/3)``, i.e. ``m^(-2/3)`` besides the ``c delta m``.
"""
from __future__ import annotations

import math

__all__ = ["U", "b_star", "U_at_b_star", "b_tilde_star", "U_tilde", "U_tilde_at_b_tilde_star", "T_of"]


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a positive number") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name}={value!r} must be a positive finite number")
    return v


def _check(sigma2, L, F0, c, delta, m, C=None, B=None):
    """Validate and convert the common arguments; raises ValueError naming the offending argument."""
    out = [_positive("sigma2", sigma2), _positive("L", L), _positive("F0", F0), _positive("c", c)]
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta={delta!r} must be a number in [0, 1/2)") from None
    if not (0.0 <= d < 0.5):
        raise ValueError(f"delta={delta!r} must lie in [0, 1/2) (fraction of Byzantine workers)")
    out.append(d)
    out.append(_positive("m", m))
    if C is not None:
        out.append(_positive("C", C))
    if B is not None:
        out.append(_positive("B", B))
    return out


def T_of(B: float, m: float, delta: float, C: float) -> float:
    """Iterations for a gradient budget: T = C / (B m (1 - delta)) (paper A §3.1)."""
    B, m, C = _positive("B", B), _positive("m", m), _positive("C", C)
    if not (0.0 <= float(delta) < 0.5):
        raise ValueError(f"delta={delta!r} must lie in [0, 1/2) (fraction of Byzantine workers)")
    return C / (B * m * (1.0 - float(delta)))


def U(B: float, sigma2: float, L: float, F0: float, c: float, delta: float, m: float, C: float) -> float:
    """Upper bound U(B) on (1/T) sum_t E||grad F(w_t)||^2 for ByzSGDm at a fixed budget C (paper A, eq. 8).

    U(B) = 16 sqrt(sigma^2 (1 + c delta m)(1 - delta) / C) (sqrt(10 L F0) + sqrt(3 c delta sigma^2 / B))
           + 32 L F0 B m (1 - delta) / C
           + 20 sigma^2 (1 + c delta m)(1 - delta) / C

    This is Theorem 1 (eq. 6, Karimireddy et al. 2021) with T = C / (B m (1 - delta)) substituted.
    """
    sigma2, L, F0, c, delta, m, C, B = _check(sigma2, L, F0, c, delta, m, C, B)
    k = (1.0 + c * delta * m) * (1.0 - delta)
    noise = math.sqrt(10.0 * L * F0) + math.sqrt(3.0 * c * delta * sigma2 / B)
    return (16.0 * math.sqrt(sigma2 * k / C) * noise
            + 32.0 * L * F0 * B * m * (1.0 - delta) / C
            + 20.0 * sigma2 * k / C)


def b_star(sigma2: float, L: float, F0: float, c: float, delta: float, m: float, C: float) -> float:
    """The batch size B* minimising U(B) of eq. 8 (paper A, Proposition 1, eq. 10).

    B* = (3 / (16 L^2 F0^2 m))^(1/3) (c delta (1 + c delta m) / (m (1 - delta)))^(1/3) sigma^(4/3) C^(1/3)

    U is strictly convex on (0, inf). For delta > 0 this is its unique minimiser; for delta = 0 the
    B-dependent noise term vanishes, U increases in B and the infimum is at B -> 0+, so 0.0 is
    returned (the paper's remark after Proposition 1: read it as "as small as hardware allows").
    """
    sigma2, L, F0, c, delta, m, C = _check(sigma2, L, F0, c, delta, m, C)
    return ((3.0 / (16.0 * L * L * F0 * F0 * m)) ** (1.0 / 3.0)
            * (c * delta * (1.0 + c * delta * m) / (m * (1.0 - delta))) ** (1.0 / 3.0)
            * sigma2 ** (2.0 / 3.0) * C ** (1.0 / 3.0))


def U_at_b_star(sigma2: float, L: float, F0: float, c: float, delta: float, m: float, C: float) -> float:
    """The minimum U(B*) (paper A, Proposition 1, eq. 11).

    U(B*) = 16 sigma sqrt(10 L F0 (1 + c delta m)(1 - delta)) / C^(1/2)
            + 24 [12 c delta (1 + c delta m)(1 - delta)^2 L F0 m]^(1/3) sigma^(4/3) / C^(2/3)
            + 20 (1 + c delta m)(1 - delta) sigma^2 / C

    The paper's typeset first term shows sigma under the square root; substituting eq. 10 into eq. 8
    gives sigma outside it (sigma * sqrt(...)), which is what is implemented, so that
    U_at_b_star(...) == U(b_star(...), ...). For delta = 0 this is the infimum lim_{B->0+} U(B).
    """
    sigma2, L, F0, c, delta, m, C = _check(sigma2, L, F0, c, delta, m, C)
    sigma = math.sqrt(sigma2)
    k = (1.0 + c * delta * m) * (1.0 - delta)
    return (16.0 * sigma * math.sqrt(10.0 * L * F0 * k) / math.sqrt(C)
            + 24.0 * (12.0 * c * delta * k * (1.0 - delta) * L * F0 * m) ** (1.0 / 3.0)
            * sigma2 ** (2.0 / 3.0) / C ** (2.0 / 3.0)
            + 20.0 * k * sigma2 / C)


def _s(c: float, delta: float, m: float) -> float:
    """sqrt(2 c m delta (1 - delta)) + 1, the Byzantine factor of Lemma 1 / Theorem 2 (ByzSGDnm)."""
    return math.sqrt(2.0 * c * m * delta * (1.0 - delta)) + 1.0


def U_tilde(B: float, sigma2: float, L: float, F0: float, c: float, delta: float, m: float,
            C: float) -> float:
    """Right-hand side of eq. 16 (ByzSGDnm, Proposition 2) with T = C / (B m (1 - delta)).

    With s = sqrt(2 c m delta (1 - delta)) + 1 and T B m (1 - delta) = C:
    RHS = 6 s^(1/2) (5 L F0 sigma^2 / (T B m (1 - delta)))^(1/4) + 12 sqrt(5 L F0 / T)
          + 27 s^(3/2) sigma^2 / (4 sqrt(5 T B^2 m^2 (1 - delta)^2 L F0)).
    It bounds (1/T) sum_t E||grad F(w_t)|| (a norm, not a squared norm: not comparable with U).
    """
    sigma2, L, F0, c, delta, m, C, B = _check(sigma2, L, F0, c, delta, m, C, B)
    s = _s(c, delta, m)
    T = C / (B * m * (1.0 - delta))
    return (6.0 * math.sqrt(s) * (5.0 * L * F0 * sigma2 / (T * B * m * (1.0 - delta))) ** 0.25
            + 12.0 * math.sqrt(5.0 * L * F0 / T)
            + 27.0 * s ** 1.5 * sigma2
            / (4.0 * math.sqrt(5.0 * T * B * B * m * m * (1.0 - delta) ** 2 * L * F0)))


def b_tilde_star(sigma2: float, L: float, F0: float, c: float, delta: float, m: float) -> float:
    """ByzSGDnm's optimal batch size at a fixed budget C (paper A, Proposition 2).

    B~* = 9 [sqrt(2 c m delta (1 - delta)) + 1]^(3/2) sigma^2 / (80 m (1 - delta) L F0)

    It minimises U_tilde(B) (eq. 16 with T = C / (B m (1 - delta))) and does not depend on C.
    Unlike B*, it stays positive at delta = 0: 9 sigma^2 / (80 m L F0).
    """
    sigma2, L, F0, c, delta, m = _check(sigma2, L, F0, c, delta, m)
    return 9.0 * _s(c, delta, m) ** 1.5 * sigma2 / (80.0 * m * (1.0 - delta) * L * F0)


def U_tilde_at_b_tilde_star(sigma2: float, L: float, F0: float, c: float, delta: float, m: float,
                            C: float) -> float:
    """The bound of eq. 17 (ByzSGDnm at B = B~*, paper A Proposition 2).

    6 s^(1/2) (5 L F0 sigma^2)^(1/4) / C^(1/4) + 18 s^(3/4) sigma / C^(1/2),
    s = sqrt(2 c m delta (1 - delta)) + 1.
    """
    sigma2, L, F0, c, delta, m, C = _check(sigma2, L, F0, c, delta, m, C)
    s = _s(c, delta, m)
    return (6.0 * math.sqrt(s) * (5.0 * L * F0 * sigma2) ** 0.25 / C ** 0.25
            + 18.0 * s ** 0.75 * math.sqrt(sigma2) / math.sqrt(C))
