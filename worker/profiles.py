"""Compute profiles and scenarios of paper B (§V.A, Fig 5; ALGORITHMS.md §10), and the block length.

A worker i computes partial derivatives at rate lambda_i (partial derivatives per sample per time unit).
Its rate is drawn once, lambda_i ~ N(mean, std) of its profile, clipped at 0 (the authors' code), from
a stream seeded by (seed, worker), so every process and every restart draws the same value. Which
workers are weak / average / powerful follows the scenario's fractions, placed at random with the seed.

Paper B §II.B: in time tau, worker i computes b_i = min(floor(tau lambda_i / s_i), d) coordinates of its
mini-batch gradient (s_i samples); the SGD baseline needs all d, so it sends d or nothing.
"""
from __future__ import annotations

import math

import numpy as np

from common.models import is_binary

PROFILES = ("weak", "average", "powerful")

# (mean, std) of lambda per profile, per model (the authors' config.py; ALGORITHMS.md §10 table)
RATE_TABLES: dict[str, dict[str, tuple[float, float]]] = {
    "binary": {"weak": (250.0, 125.0), "average": (1000.0, 500.0), "powerful": (5000.0, 1000.0)},
    "multinomial": {"weak": (500.0, 250.0), "average": (10000.0, 2500.0), "powerful": (50000.0, 5000.0)},
    "ffn": {"weak": (5000.0, 500.0), "average": (25000.0, 2500.0), "powerful": (50000.0, 5000.0)},
}

# fractions of (weak, average, powerful) devices (paper B §V.A and Fig 5)
SCENARIOS: dict[str, tuple[float, float, float]] = {
    "default": (0.3, 0.4, 0.3),
    "C_weak": (1.0, 0.0, 0.0),
    "C_1": (0.9, 0.1, 0.0),
    "C_2": (0.7, 0.3, 0.0),
    "C_min": (0.9, 0.0, 0.1),  # 10% of the weak devices of C_weak replaced by powerful ones
    "C_powerful": (0.0, 0.0, 1.0),
}


def rate_table(name: str, model: dict) -> str:
    """The rate table for `hgo.profiles` (`auto`: binary / multinomial logistic regression, else ffn)."""
    if name != "auto":
        if name not in RATE_TABLES:
            raise ValueError(f"hgo.profiles={name!r} is unknown; choose auto or one of {sorted(RATE_TABLES)}")
        return name
    if model.get("name") == "logreg":
        return "binary" if is_binary(model.get("binary")) else "multinomial"
    return "ffn"


def profile_counts(m: int, scenario: str) -> dict[str, int]:
    """How many of the m workers have each profile: the scenario's fractions, largest remainder rounding."""
    if scenario not in SCENARIOS:
        raise ValueError(f"hgo.scenario={scenario!r} is unknown; choose one of {list(SCENARIOS)}")
    exact = [frac * m for frac in SCENARIOS[scenario]]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in by_remainder[:m - sum(counts)]:
        counts[j] += 1
    return dict(zip(PROFILES, counts))


def assign_profiles(m: int, scenario: str, seed: int) -> list[str]:
    """Profile of each worker: entry k - 1 is worker k's, placed at random with the seed."""
    counts = profile_counts(m, scenario)
    names = [p for p in PROFILES for _ in range(counts[p])]
    order = np.random.default_rng([int(seed), 0x4867]).permutation(m)
    return [names[j] for j in order]


def draw_rate(profile: str, table: str, seed: int, worker: int) -> float:
    """lambda_i ~ N(mean, std) of the profile, clipped at 0, from the stream of (seed, worker)."""
    mean, std = RATE_TABLES[table][profile]
    rng = np.random.default_rng([int(seed), int(worker), 0x4C41])
    return max(float(rng.normal(mean, std)), 0.0)


def block_length(tau: float, lam: float, s: int, d: int) -> int:
    """b_i = min(floor(tau lambda_i / s_i), d) (paper B §II.B); 0 for a device with lambda_i = 0."""
    if lam <= 0:
        return 0
    if math.isinf(tau):
        return d
    return int(min(math.floor(tau * lam / s), d))


def sgd_length(tau: float, lam: float, s: int, d: int) -> int:
    """SGD with a time limit: the full gradient when s_i d / lambda_i <= tau, otherwise nothing."""
    if lam <= 0:
        return 0
    return d if s * d / lam <= tau else 0


def compute_time(b: int, s: int, lam: float) -> float:
    """Time units needed for b coordinates on s samples at rate lambda: s b / lambda."""
    if b <= 0:
        return 0.0
    return math.inf if lam <= 0 else s * b / lam
