"""Attacks computed from the honest vectors of the round (ALGORITHMS.md §5.2-§5.4).

All of them send one vector, identical on every Byzantine rank. With knowledge = "colluders" the
same formulas run on the Byzantine ranks' own honest momenta instead of the honest workers' ones.
"""
from __future__ import annotations

import logging
import math
from statistics import NormalDist

from torch import Tensor

from .base import Attack, AttackContext, honest_mean, register

log = logging.getLogger(__name__)

Z_MODES = ("karimireddy", "baruch")


@register("signflip")
class SignFlip(Attack):
    """Sign flipping, x_byz = -mean_{i in H}(x_i) (ByzFL `SignFlipping`, LPD; ALGORITHMS.md §5.2).

    Negating one's own vector is `bitflip` with scale 1, not this attack.
    """

    needs_honest = True

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return -honest_mean(honest)


@register("foe", "ipm")
class FallOfEmpires(Attack):
    """Fall of Empires / inner-product manipulation, x_byz = -epsilon * mean_{i in H}(x_i).

    Xie, Koyejo & Gupta, UAI 2020; ALGORITHMS.md §5.4. epsilon = 0.1 as in Karimireddy et al. and
    LPD's "empire" (ByzFL uses 2.0, blades 1.0).
    """

    needs_honest = True

    def __init__(self, epsilon: float = 0.1, **common):
        super().__init__(**common)
        self.epsilon = float(epsilon)

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return honest_mean(honest) * (-self.epsilon)

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        return {**super().resolved(ctx), "epsilon": self.epsilon}


def alie_supporters(n: int, f: int) -> int:
    """s = floor(n/2 + 1) - f, the honest workers the f copies need on their side (Baruch et al.)."""
    return n // 2 + 1 - f


def alie_z(n: int, f: int, mode: str = "karimireddy") -> float:
    """ALIE's z for n workers of which f are Byzantine (ALGORITHMS.md §5.3 and its table).

    - "baruch" (the paper):                 z = Phi^-1((n - s) / n)
    - "karimireddy" (epfml `alittle.py`):   z = Phi^-1((n - f - s) / (n - f))

    Raises ValueError when the argument of Phi^-1 leaves (0, 1) (the formula gives +-inf there).
    """
    s = alie_supporters(n, f)
    if mode == "baruch":
        p = (n - s) / n
    elif mode == "karimireddy":
        p = (n - f - s) / (n - f) if n > f else math.nan
    else:
        raise ValueError(f"attack.z='{mode}' must be a number or one of {Z_MODES}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"attack.z='{mode}' is undefined for n={n}, f={f} (Phi^-1 of {p:.3f}); "
                         f"set a numeric attack.z")
    return NormalDist().inv_cdf(p)


def coordinate_std(x: Tensor) -> Tensor:
    """Unbiased coordinate-wise standard deviation (divisor k - 1); zero when a single row is given."""
    if x.shape[0] < 2:
        return x[0] * 0
    return x.std(dim=0, correction=1)


@register("alie")
class ALittleIsEnough(Attack):
    """A little is enough (Baruch, Baruch & Goldberg, NeurIPS 2019; ALGORITHMS.md §5.3).

    x_byz = mu - z * sigma, with mu and sigma the coordinate-wise mean and unbiased standard deviation
    of the rows given (the honest vectors; with knowledge = colluders the Byzantine ranks' own
    momenta, as in the original code). z is "karimireddy" (default, for paper A reproduction),
    "baruch" (the paper's formula), or a number. n = ctx.n (all workers), f = ctx.f. The z used is
    logged once per (n, f) and reported by `resolved()`.
    """

    needs_honest = True

    def __init__(self, z: float | str = "karimireddy", **common):
        super().__init__(**common)
        if isinstance(z, str):
            try:
                z = float(z)
            except ValueError:
                if z not in Z_MODES:
                    raise ValueError(f"attack.z='{z}' must be a number or one of {Z_MODES}") from None
        if not isinstance(z, str) and not math.isfinite(float(z)):
            raise ValueError(f"attack.z={z} must be a finite number or one of {Z_MODES}")
        self.z_mode = z if isinstance(z, str) else "fixed"
        self.z_fixed = None if isinstance(z, str) else float(z)
        self._z: dict[tuple[int, int], float] = {}
        self._last: tuple[int, int] | None = None

    def z(self, n: int, f: int) -> float:
        """The z used for (n, f); recorded for `resolved()`."""
        if self.z_fixed is not None:
            return self.z_fixed
        if (n, f) not in self._z:
            self._z[(n, f)] = alie_z(n, f, self.z_mode)
            log.info("alie: z=%.4f (mode %s, n=%d, f=%d)", self._z[(n, f)], self.z_mode, n, f)
        self._last = (n, f)
        return self._z[(n, f)]

    def check(self, n: int, f: int, known: int | None = None) -> None:
        self.z(n, f)

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        z = self.z(ctx.n, ctx.f)
        return honest_mean(honest) - coordinate_std(honest) * z

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        out = {**super().resolved(ctx), "z_mode": self.z_mode}
        if ctx is not None and self._last is None:
            self.z(ctx.n, ctx.f)
        if self.z_fixed is not None:
            out["z"] = self.z_fixed
        elif self._last is not None:
            n, f = self._last
            out.update(z=self._z[self._last], n=n, f=f)
        return out
