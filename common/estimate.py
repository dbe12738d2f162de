"""Estimates of the constants in paper A's bounds at a model's current (initial) point.

- ``sigma2``: the per-sample gradient variance of Assumption 1, E_xi ||grad f(w, xi) - grad F(w)||^2,
  from per-sample gradients (torch.func vmap + grad, chunked) of a random subsample of the data.
- ``L``: the smoothness constant of Assumption 3, estimated locally as the largest absolute eigenvalue
  of the Hessian of F at w (Lanczos, i.e. Krylov-accelerated power iteration, on Hessian-vector
  products of a large batch; not gradient differences). The local
  curvature at w_0 is a lower bound on the global L; it is what is measurable without training.
- ``F0``: F(w_0) - F^*, the mean loss over the data minus a known lower bound (0 for cross-entropy).
- ``c``: the constant of a (delta_max, c)-robust aggregator (Definition 1), from a documented
  table of published robustness coefficients (`robustness_c`).

Models are put in eval mode while measuring (per-sample gradients are meaningless through batch
statistics; BatchNorm then uses its running statistics, the identity at initialisation). Weight decay
lambda, when the objective includes it, adds lambda/2 ||w||^2 to F (so lambda I to the Hessian) and
nothing to sigma^2 (it is deterministic).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["estimate_sigma2", "estimate_L", "estimate_F0", "per_sample_grads", "robustness_c", "ROBUSTNESS"]

LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> mean loss


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def _subsample(n_total: int, n: int | None, seed: int) -> Tensor:
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def per_sample_grads(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.cross_entropy,
                     chunk: int = 128):
    """Yield (k, d) blocks of flattened per-sample gradients of loss_fn over the trainable parameters."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in _params(model).items()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    for s in range(0, len(x), chunk):
        g = per_sample(params, x[s:s + chunk], y[s:s + chunk])
        yield torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], dim=1)


def _mean_grad(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, chunk: int) -> Tensor:
    """Flat gradient of the mean loss over (x, y), accumulated over chunks (exact, float64)."""
    params = list(_params(model).values())
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=x.device)
    for s in range(0, len(x), chunk):
        xs, ys = x[s:s + chunk], y[s:s + chunk]
        g = torch.autograd.grad(loss_fn(model(xs), ys) * (len(xs) / len(x)), params)
        total += torch.cat([t.reshape(-1) for t in g]).double()
    return total


def estimate_sigma2(model: nn.Module, x: Tensor, y: Tensor, n_samples: int | None = 256,
                    loss_fn: LossFn = F.cross_entropy, seed: int = 0, chunk: int = 128) -> float:
    """Per-sample gradient variance sigma^2 = (1/N) sum_i ||grad f_i(w) - grad F(w)||^2 (Assumption 1),
    with F the mean of f_i over the N samples (x, y).

    From a subsample S of n samples drawn without replacement this returns the unbiased estimate
    ((N - 1) / N) * (1 / (n - 1)) * sum_{i in S} ||g_i - mean_S g||^2, which is exact when n = N.
    """
    was_training = model.training
    model.eval()
    try:
        idx = _subsample(len(x), n_samples, seed).to(x.device)
        xs, ys = x[idx], y[idx]
        n, N = len(xs), len(x)
        if n < 2:
            raise ValueError(f"n_samples={n_samples} must be >= 2 to estimate a variance")
        mean = _mean_grad(model, xs, ys, loss_fn, chunk)
        ss = 0.0
        for g in per_sample_grads(model, xs, ys, loss_fn, chunk):
            ss += float(((g.double() - mean) ** 2).sum())
        return (N - 1) / N * ss / (n - 1)
    finally:
        model.train(was_training)


def estimate_L(model: nn.Module, x: Tensor, y: Tensor, batch: int | None = 512,
               loss_fn: LossFn = F.cross_entropy, weight_decay: float = 0.0, iters: int = 30,
               tol: float = 1e-3, seed: int = 0) -> float:
    """Local smoothness: |lambda|_max of the Hessian H of F (+ weight_decay/2 ||w||^2) at the current w.

    Hessian-vector products H v = d/dw <grad F(w), v> (double backward over a batch of `batch` samples,
    all of x when None) drive a Lanczos iteration, i.e. power iteration that keeps its whole Krylov
    subspace (fully re-orthogonalised): the largest |Ritz value| of the tridiagonal matrix converges to
    |lambda|_max from below in far fewer products than plain power iteration. Stops when it changes by
    less than `tol` relative, after `iters` products, or when the Krylov space is exhausted (exact).
    """
    was_training = model.training
    model.eval()
    try:
        idx = _subsample(len(x), batch, seed + 1).to(x.device)
        params = list(_params(model).values())
        loss = loss_fn(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        sizes = [p.numel() for p in params]

        def hvp(v: Tensor) -> Tensor:  # flat float64 in, flat float64 out
            parts = [t.view_as(p).to(p.dtype) for t, p in zip(v.split(sizes), params)]
            hv = torch.autograd.grad(grads, params, grad_outputs=parts, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).double() + weight_decay * v

        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(sum(sizes), generator=gen, dtype=torch.float64).to(x.device)
        q /= q.norm()
        basis, alpha, beta = [q], [], []
        top = 0.0
        for k in range(min(iters, q.numel())):
            w = hvp(q)
            alpha.append(float(q @ w))
            Q = torch.stack(basis)
            for _ in range(2):  # full re-orthogonalisation (twice is enough)
                w -= Q.T @ (Q @ w)
            T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
            if beta:
                off = torch.tensor(beta, dtype=torch.float64)
                T += torch.diag(off, 1) + torch.diag(off, -1)
            new = float(torch.linalg.eigvalsh(T).abs().max())
            b = float(w.norm())
            if (k > 0 and abs(new - top) <= tol * new) or b <= 1e-10 * max(new, 1e-30):
                return new
            top = new
            beta.append(b)
            q = w / b
            basis.append(q)
        return top
    finally:
        model.train(was_training)


@torch.no_grad()
def estimate_F0(model: nn.Module, x: Tensor, y: Tensor, f_star: float = 0.0,
                loss_fn: LossFn = F.cross_entropy, weight_decay: float = 0.0, chunk: int = 1024) -> float:
    """F0 = F(w) - F^*: the mean loss over (x, y) (+ weight_decay/2 ||w||^2) minus the lower bound
    `f_star` (0 for cross-entropy and squared losses)."""
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for s in range(0, len(x), chunk):
            xs, ys = x[s:s + chunk], y[s:s + chunk]
            total += float(loss_fn(model(xs), ys)) * len(xs)
        reg = 0.5 * weight_decay * sum(float((p * p).sum()) for p in _params(model).values())
        return total / len(x) + reg - f_star
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------ robustness constants c
#
# Paper A uses Definition 1 (Karimireddy et al. 2021): E||Agg - mean_G||^2 <= c delta rho^2 with rho^2
# bounding E||x_k - x_k'||^2 over honest pairs. It never gives numbers for c. Allouah et al. (2023,
# "Fixing by Mixing", AISTATS) bound the (f, kappa)-robustness coefficient of common rules:
# ||Agg - mean_S||^2 <= kappa (1/|S|) sum_{i in S} ||x_i - mean_S||^2 for every honest set S of n - f.
# For i.i.d. honest vectors E (1/|S|) sum ||x_i - mean_S||^2 = (1 - 1/|S|) rho^2 / 2 <= rho^2 / 2, so a
# kappa-robust rule is (delta, c)-robust with c = kappa / (2 delta), delta = f / n. With x = f / (n - 2f):
#   krum      kappa = 6 (1 + x)           (Allouah et al. 2023)
#   gm, cm    kappa = 4 (1 + x)^2         (Allouah et al. 2023)
#   tm        kappa = 6 x (1 + x)         (Allouah et al. 2023)
#   lower     kappa = x                   (no rule does better; Allouah et al. 2023)
# Rules without a published kappa use a stand-in, marked "(inference)" in the returned note: centered
# clipping is proved (delta_max, O(1))-robust by Karimireddy et al. (2021) and gets the lower bound;
# multikrum gets Krum's bound, meamed / phocas the trimmed mean's, bulyan and aksel the median's.
# The mean is not robust (no finite c). Pre-aggregators (nnm, bucketing) would lower c; not modelled.

def _kappa_krum(x):
    return 6.0 * (1.0 + x)


def _kappa_median(x):
    return 4.0 * (1.0 + x) ** 2


def _kappa_tm(x):
    return 6.0 * x * (1.0 + x)


def _kappa_lower(x):
    return x


ROBUSTNESS: dict[str, tuple[Callable[[float], float], str]] = {
    "krum": (_kappa_krum, "kappa = 6(1 + f/(n-2f)), Allouah et al. 2023"),
    "multikrum": (_kappa_krum, "Krum's kappa (inference: MultiKrum is no worse than Krum)"),
    "gm": (_kappa_median, "kappa = 4(1 + f/(n-2f))^2, Allouah et al. 2023"),
    "cm": (_kappa_median, "kappa = 4(1 + f/(n-2f))^2, Allouah et al. 2023"),
    "tm": (_kappa_tm, "kappa = 6 f/(n-2f) (1 + f/(n-2f)), Allouah et al. 2023"),
    "meamed": (_kappa_tm, "trimmed mean's kappa (inference: no published kappa)"),
    "phocas": (_kappa_tm, "trimmed mean's kappa (inference: no published kappa)"),
    "bulyan": (_kappa_median, "median's kappa (inference: no published kappa)"),
    "aksel": (_kappa_median, "median's kappa (inference: no published kappa)"),
    "cc": (_kappa_lower, "lower bound kappa = f/(n-2f) (inference: CC is (delta_max, O(1))-robust, "
                         "Karimireddy et al. 2021)"),
}


def robustness_c(rule: str, n: int, f: int) -> tuple[float | None, str]:
    """Default c (Definition 1 of paper A) for rule `rule` over n inputs with f Byzantine:
    c = kappa(f/(n-2f)) / (2 f/n), see the table above. f = 0 is evaluated at f = 1 (c is a property
    of the rule; the bound multiplies it by delta). Returns (None, note) for the non-robust mean.
    Raises ValueError for an unknown rule or when n <= 2f."""
    if rule == "mean":
        return None, "mean is not robust: no finite c (Definition 1 fails for any delta > 0)"
    if rule not in ROBUSTNESS:
        raise ValueError(f"aggregator.name={rule!r} has no default c; choose one of "
                         f"{sorted([*ROBUSTNESS, 'mean'])} or pass c explicitly")
    if n < 1 or f < 0:
        raise ValueError(f"n={n}, f={f} must satisfy n >= 1 and f >= 0")
    f_eff = max(int(f), 1)
    if n <= 2 * f_eff:
        raise ValueError(f"n={n}, f={f_eff}: a robust rule needs n > 2f")
    kappa_fn, note = ROBUSTNESS[rule]
    kappa = kappa_fn(f_eff / (n - 2 * f_eff))
    return kappa / (2.0 * f_eff / n), note + (" (evaluated at f=1)" if f == 0 else "")
