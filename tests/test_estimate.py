"""Estimators of sigma^2, L and F0 (common.estimate) on least squares, where the true values are known:
f_i(w) = 1/2 (x_i^T w - y_i)^2, Hessian = X^T X / N (so L = its largest eigenvalue), per-sample
gradients x_i (x_i^T w - y_i)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.estimate import estimate_F0, estimate_L, estimate_sigma2, per_sample_grads, robustness_c


def squared_loss(out, t):
    return 0.5 * ((out.squeeze(-1) - t) ** 2).mean()


def least_squares(n=600, d=12, seed=0):
    """Design with a known spectrum (top eigenvalues 9, 4, ...) and a linear model at a random point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = torch.tensor([9.0, 4.0] + [1.0 / (k + 1) for k in range(d - 2)], dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T, correction=0))).T  # whitened
    x = z @ torch.diag(eig.sqrt()) @ q.T  # X^T X / n = Q diag(eig) Q^T exactly
    noise = 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + noise
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    return model, x, y, eig


def true_sigma2(model, x, y):
    w = model.weight.detach().reshape(-1)
    g = x * (x @ w - y).unsqueeze(1)
    return float(((g - g.mean(0)) ** 2).sum(1).mean())


def test_sigma2_exact_on_all_samples():
    model, x, y, _ = least_squares()
    est = estimate_sigma2(model, x, y, n_samples=None, loss_fn=squared_loss, chunk=64)
    assert est == pytest.approx(true_sigma2(model, x, y), rel=1e-10)


def test_sigma2_subsample_is_unbiased():
    model, x, y, _ = least_squares()
    ests = torch.tensor([estimate_sigma2(model, x, y, n_samples=150, loss_fn=squared_loss, seed=s, chunk=150)
                         for s in range(30)], dtype=torch.float64)
    se = float(ests.std() / len(ests) ** 0.5)  # standard error of the mean of independent draws
    assert abs(float(ests.mean()) - true_sigma2(model, x, y)) < 4 * se
    assert se < 0.1 * true_sigma2(model, x, y)


def test_sigma2_subsample_formula_is_unbiased_exactly_over_every_subset(monkeypatch):
    """Averaged over all C(8, 4) subsets of 4 of the N = 8 samples, the estimate equals the population
    sigma^2 (the finite-population factor (N - 1) / N and 1 / (n - 1) together)."""
    import itertools

    import common.estimate as est

    model, x, y, _ = least_squares(n=8, d=3, seed=4)
    subsets = list(itertools.combinations(range(8), 4))
    got = []
    for sub in subsets:
        monkeypatch.setattr(est, "_subsample", lambda n_total, n, seed, sub=sub: torch.tensor(sub))
        got.append(estimate_sigma2(model, x, y, n_samples=4, loss_fn=squared_loss))
    assert sum(got) / len(got) == pytest.approx(true_sigma2(model, x, y), rel=1e-10)


def test_L_is_the_top_hessian_eigenvalue():
    model, x, y, eig = least_squares()
    assert float(eig.max()) == pytest.approx(9.0)
    est = estimate_L(model, x, y, batch=None, loss_fn=squared_loss, tol=1e-8, iters=200)
    assert est == pytest.approx(9.0, rel=1e-6)
    # weight decay lambda adds lambda I to the Hessian
    est_wd = estimate_L(model, x, y, batch=None, loss_fn=squared_loss, weight_decay=0.5, tol=1e-8, iters=200)
    assert est_wd == pytest.approx(9.5, rel=1e-6)


def test_F0_is_mean_loss_plus_weight_decay_minus_lower_bound():
    model, x, y, _ = least_squares()
    w = model.weight.detach().reshape(-1)
    mean_loss = float(0.5 * ((x @ w - y) ** 2).mean())
    assert estimate_F0(model, x, y, loss_fn=squared_loss, chunk=100) == pytest.approx(mean_loss, rel=1e-12)
    got = estimate_F0(model, x, y, f_star=0.1, loss_fn=squared_loss, weight_decay=0.2)
    assert got == pytest.approx(mean_loss + 0.1 * float(w @ w) - 0.1, rel=1e-12)


def test_per_sample_grads_match_a_loop_on_a_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    got = torch.cat(list(per_sample_grads(model, x, y, F.cross_entropy, chunk=4)))
    for i in range(10):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), list(model.parameters()))
        assert torch.allclose(got[i], torch.cat([t.reshape(-1) for t in g]), atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_estimators_leave_the_training_mode_alone(training):
    model, x, y, _ = least_squares(n=50, d=3)
    model.train(training)
    estimate_sigma2(model, x, y, n_samples=10, loss_fn=squared_loss)
    assert model.training is training
    estimate_L(model, x, y, batch=20, loss_fn=squared_loss)
    assert model.training is training
    estimate_F0(model, x, y, loss_fn=squared_loss)
    assert model.training is training


def test_robustness_c_table_at_paper_a_setting():
    # n = 8, f = 3: x = f/(n-2f) = 3/2, delta = 3/8, c = kappa / (2 delta) = kappa * 4/3
    assert robustness_c("krum", 8, 3)[0] == pytest.approx(6 * 2.5 * 4 / 3)
    assert robustness_c("cm", 8, 3)[0] == pytest.approx(4 * 2.5**2 * 4 / 3)
    assert robustness_c("gm", 8, 3)[0] == pytest.approx(4 * 2.5**2 * 4 / 3)
    assert robustness_c("tm", 8, 3)[0] == pytest.approx(6 * 1.5 * 2.5 * 4 / 3)
    assert robustness_c("cc", 8, 3)[0] == pytest.approx(2.0)
    assert robustness_c("cc", 8, 0)[0] == robustness_c("cc", 8, 1)[0]
    assert robustness_c("mean", 8, 3)[0] is None
    with pytest.raises(ValueError, match="aggregator.name"):
        robustness_c("nope", 8, 3)
    with pytest.raises(ValueError, match="n > 2f"):
        robustness_c("cm", 8, 4)
