"""ALIE (ALGORITHMS.md §5.3): z from both formulas, the vector mu - z sigma, and the z recorded."""
import logging

import pytest
import torch

from worker.attacks import AttackContext, alie_z, get_attack

# (n, f, paper z = Phi^-1((n-s)/n), Karimireddy z = Phi^-1((n-f-s)/(n-f))), ALGORITHMS.md's table
TABLE = [
    (8, 1, 0.000, -0.180),
    (8, 2, 0.319, 0.000),
    (8, 3, 0.674, 0.253),
    (10, 3, 0.524, 0.180),
    (25, 5, 0.468, 0.253),
    (25, 11, 1.405, 1.068),
    (50, 12, 0.583, 0.336),
]


@pytest.mark.parametrize("n,f,baruch,karimireddy", TABLE)
def test_alie_z_matches_the_table_in_both_modes(n, f, baruch, karimireddy):
    assert alie_z(n, f, "baruch") == pytest.approx(baruch, abs=5e-4)
    assert alie_z(n, f, "karimireddy") == pytest.approx(karimireddy, abs=5e-4)


def test_alie_z_is_exact_where_the_cdf_argument_is_simple():
    assert alie_z(8, 1, "baruch") == 0.0  # Phi^-1(4/8)
    assert alie_z(8, 3, "baruch") == pytest.approx(0.6744897501960817, abs=1e-12)  # Phi^-1(6/8)
    assert alie_z(8, 3, "karimireddy") == pytest.approx(0.2533471031357997, abs=1e-12)  # Phi^-1(3/5)


@pytest.mark.parametrize("n,f,mode", [(8, 1, "karimireddy"), (8, 3, "karimireddy"), (25, 5, "karimireddy"),
                                      (8, 1, "baruch"), (8, 3, "baruch"), (25, 5, "baruch")])
def test_alie_sends_mu_minus_z_times_the_unbiased_std_of_the_honest_vectors(n, f, mode):
    g = torch.Generator().manual_seed(n * 100 + f)
    H = torch.randn(n - f, 50, generator=g, dtype=torch.float64) * 3 + 1
    attack = get_attack("alie", z=mode)
    v = attack(H[0], H, AttackContext(n=n, f=f))
    mu = H.sum(0) / (n - f)
    sigma = ((H - mu) ** 2).sum(0).div(n - f - 1).sqrt()
    z = dict(((a, b), (c, d)) for a, b, c, d in TABLE)[(n, f)][0 if mode == "baruch" else 1]
    assert torch.allclose(v, mu - alie_z(n, f, mode) * sigma, atol=1e-12)
    assert torch.allclose(v, mu - z * sigma, atol=5e-4 * sigma.max().item())
    assert attack.resolved() == {"z_mode": mode, "z": alie_z(n, f, mode), "n": n, "f": f}


def test_alie_on_a_hand_computed_case():
    H = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])  # mu = (2, 2), unbiased sigma = (2, sqrt(3))
    v = get_attack("alie", z=1.5)(H[0], H, AttackContext(n=5, f=2))
    assert torch.allclose(v, torch.tensor([2.0 - 3.0, 2.0 - 1.5 * 3**0.5]))


def test_numeric_z_is_used_as_given_and_recorded():
    for z in (1.5, "1.5", -0.5):
        attack = get_attack("alie", z=z)
        assert attack.resolved() == {"z_mode": "fixed", "z": float(z)}


def test_alie_logs_the_z_it_uses(caplog):
    with caplog.at_level(logging.INFO, logger="worker.attacks.omniscient"):
        get_attack("alie").check(8, 3)
    assert "z=0.2533 (mode karimireddy, n=8, f=3)" in caplog.text


def test_undefined_z_and_unknown_mode_are_refused_with_the_field_name():
    with pytest.raises(ValueError, match="attack.z='karimireddy' is undefined for n=8, f=5"):
        get_attack("alie").check(8, 5)
    with pytest.raises(ValueError, match="attack.z='median' must be a number or one of"):
        get_attack("alie", z="median")


def test_resolved_with_the_run_context_reports_z_before_any_round():
    attack = get_attack("alie")
    assert attack.resolved() == {"z_mode": "karimireddy"}
    resolved = attack.resolved(AttackContext(n=25, f=5))
    assert resolved == {"z_mode": "karimireddy", "z": pytest.approx(0.2533, abs=1e-4), "n": 25, "f": 5}
    assert get_attack("alie_opt").resolved(AttackContext(aggregator={"name": "cm"}))["rule"] == "cm"
