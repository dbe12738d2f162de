"""Attacks that need no knowledge of the honest vectors (ALGORITHMS.md §5.1, §5.6, §5.7)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, register


@register("none")
class NoAttack(Attack):
    """The Byzantine slot behaves honestly (delta = 0 runs, baselines)."""

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return u


@register("bitflip")
class BitFlip(Attack):
    """Bit-flipping, x_byz = -scale * u_t^(k), the worker's own honest momentum (ALGORITHMS.md §5.1).

    Paper A, App. E.1: "-10 times the true values" (scale 10, the default); scale 1 with raw
    gradients is Karimireddy et al.'s `BitFlippingWorker`. Each Byzantine rank flips its own
    momentum, so the ranks' vectors differ.
    """

    def __init__(self, scale: float = 10.0, **common):
        super().__init__(**common)
        self.scale = float(scale)

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return u * (-self.scale)

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        return {**super().resolved(ctx), "scale": self.scale}


@register("gaussian")
class Gaussian(Attack):
    """Gaussian noise, each coordinate i.i.d. N(mu, sigma^2) (ByzFL `Gaussian`; ALGORITHMS.md §5.6).

    The draw comes from a stream seeded with the seed of `ctx.generator` (per round, identical on
    every Byzantine rank), so all ranks send the same vector (ByzFL repeats one draw f times). With
    `independent=True` each rank draws from its own stream, seeded from (the round's seed, its rank).
    """

    def __init__(self, mu: float = 0.0, sigma: float = 1.0, independent: bool = False, **common):
        super().__init__(**common)
        if sigma < 0:
            raise ValueError(f"attack.sigma={sigma} must be >= 0")
        self.mu, self.sigma, self.independent = float(mu), float(sigma), bool(independent)

    def _generator(self, ctx: AttackContext) -> torch.Generator:
        """A fresh stream from the round's seed (and this rank's, if independent): no shared state."""
        base = ctx.generator
        device = base.device if base is not None else torch.device("cpu")
        seed = base.initial_seed() if base is not None else ctx.round
        if self.independent:
            seed = hash((seed, ctx.rank)) & 0x7FFF_FFFF_FFFF_FFFF  # ints hash deterministically
        return torch.Generator(device=device).manual_seed(seed)

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        g = self._generator(ctx)
        noise = torch.randn(u.shape, generator=g, device=g.device, dtype=u.dtype)
        return (noise * self.sigma + self.mu).to(u.device)

    def resolved(self, ctx: AttackContext | None = None) -> dict:
        return {**super().resolved(ctx), "mu": self.mu, "sigma": self.sigma, "independent": self.independent}


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Label flipping y -> (C - 1) - y (ALGORITHMS.md §5.7)."""
    return (num_classes - 1) - y


@register("labelflip")
class LabelFlip(Attack):
    """Label flipping as a data attack (ALGORITHMS.md §5.7, recommended form).

    The Byzantine worker runs the honest pipeline on its own shard (same batch size, same EMA
    momentum) with labels mapped by `flip_labels`, and sends that momentum. `flips_labels = True`
    tells the worker loop to flip; the attack itself then sends u unchanged. (Karimireddy et al. send
    the raw flipped gradient; ByzFL the mean of the honest clients' flipped gradients.)
    """

    flips_labels = True

    def craft(self, u: Tensor, honest: Tensor | None, ctx: AttackContext) -> Tensor:
        return u
