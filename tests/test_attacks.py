"""Attacks against their formulas on controlled inputs (ALGORITHMS.md §5)."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from worker.attacks import ATTACKS, AttackContext, flip_labels, get_attack

N, F, D = 8, 3, 64


def honest_rows(h=N - F, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(h, d, generator=g)


def ctx(**kw):
    base = dict(round=3, n=N, f=F, rank=N, generator=torch.Generator().manual_seed(1234),
                aggregator={"name": "cm", "f": F, "pre": []}, honest_ranks=tuple(range(1, N - F + 1)))
    base.update(kw)
    return AttackContext(**base)


def test_registry_holds_every_attack_of_the_library_api():
    names = {"none", "bitflip", "signflip", "alie", "foe", "ipm", "gaussian", "labelflip", "mimic",
             "alie_opt", "foe_opt", "nan", "inf", "large", "zero"}
    assert names <= set(ATTACKS)


def test_every_attack_config_builds_its_attack_with_the_yaml_defaults():
    files = sorted(Path(__file__).resolve().parents[1].glob("conf/attack/*.yaml"))
    built = set()
    for path in files:
        params = yaml.safe_load(path.read_text())
        name, knowledge = params.pop("name"), params.pop("knowledge")
        assert name == path.stem and knowledge in ("omniscient", "colluders")
        built.add(get_attack(name, **params).name)
    assert built == {cls.name for cls in ATTACKS.values()}


def test_only_omniscient_attacks_ask_for_the_honest_vectors():
    asking = {name for name, cls in ATTACKS.items() if cls.needs_honest}
    assert asking == {"signflip", "alie", "foe", "ipm", "mimic", "alie_opt", "foe_opt"}


def test_unknown_name_and_unknown_parameter_are_named_in_the_error():
    with pytest.raises(ValueError, match="'nope' is unknown"):
        get_attack("nope")
    with pytest.raises(ValueError, match=r"'alie' got unknown parameter\(s\) \['eps'\]"):
        get_attack("alie", eps=1.0)


def test_omniscient_attack_without_honest_vectors_is_refused():
    with pytest.raises(ValueError, match="needs the honest vectors"):
        get_attack("signflip")(torch.ones(D), None, ctx())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_returns_a_u_shaped_vector_and_json_safe_resolved_parameters(name):
    u, H = torch.randn(D, dtype=torch.float64), honest_rows().double()
    v = get_attack(name)(u, H, ctx())
    assert v.shape == u.shape and v.dtype == u.dtype
    json.dumps(get_attack(name).resolved(), allow_nan=False)
    attack = get_attack(name)
    attack(u, H, ctx())
    json.dumps(attack.resolved(), allow_nan=False)


def test_no_attack_and_labelflip_send_the_own_momentum_unchanged():
    u, H = torch.randn(D), honest_rows()
    for name in ("none", "labelflip"):  # labelflip's harm is in the labels the worker trained on
        v = get_attack(name)(u.clone(), H, ctx())
        assert torch.equal(v, u), name


def test_bitflip_sends_minus_ten_times_the_own_momentum():
    u = torch.tensor([1.0, -2.0, 0.5])
    assert torch.equal(get_attack("bitflip")(u, None, ctx()), torch.tensor([-10.0, 20.0, -5.0]))
    assert torch.equal(get_attack("bitflip", scale=1)(u, None, ctx()), -u)


def test_signflip_sends_minus_the_honest_mean():
    H = torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 8.0]])
    assert torch.equal(get_attack("signflip")(torch.zeros(2), H, ctx()), torch.tensor([-3.0, -2.0]))


def test_foe_and_ipm_send_minus_epsilon_times_the_honest_mean():
    H = torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 8.0]])
    for name in ("foe", "ipm"):
        assert torch.allclose(get_attack(name)(torch.zeros(2), H, ctx()), torch.tensor([-0.3, -0.2]))
    assert torch.allclose(get_attack("foe", epsilon=2)(torch.zeros(2), H, ctx()), torch.tensor([-6.0, -4.0]))


def test_gaussian_is_identical_on_every_byzantine_rank_and_fresh_each_round():
    u = torch.zeros(1000)
    a = get_attack("gaussian")
    v1 = a(u, None, ctx(rank=6, generator=torch.Generator().manual_seed(77)))
    v2 = a(u, None, ctx(rank=8, generator=torch.Generator().manual_seed(77)))
    v3 = a(u, None, ctx(rank=6, generator=torch.Generator().manual_seed(78)))
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)


def test_gaussian_independent_draws_differ_per_rank_and_are_reproducible():
    u, a = torch.zeros(1000), get_attack("gaussian", independent=True)
    v6 = a(u, None, ctx(rank=6, generator=torch.Generator().manual_seed(77)))
    v7 = a(u, None, ctx(rank=7, generator=torch.Generator().manual_seed(77)))
    again = a(u, None, ctx(rank=6, generator=torch.Generator().manual_seed(77)))
    assert not torch.equal(v6, v7) and torch.equal(v6, again)


def test_gaussian_coordinates_have_the_configured_mean_and_std():
    v = get_attack("gaussian", mu=0.5, sigma=2.0)(torch.zeros(200_000, dtype=torch.float64), None, ctx())
    assert abs(v.mean().item() - 0.5) < 0.02 and abs(v.std().item() - 2.0) < 0.02


def test_labelflip_maps_y_to_c_minus_1_minus_y_and_sends_its_own_momentum():
    attack = get_attack("labelflip")
    assert attack.flips_labels and not get_attack("alie").flips_labels
    assert flip_labels(torch.tensor([0, 3, 9]), 10).tolist() == [9, 6, 0]
    u = torch.randn(D)
    assert attack(u, None, ctx()) is u


@pytest.mark.parametrize("name,value", [("inf", float("inf")), ("large", 1e30), ("zero", 0.0)])
def test_malformed_attacks_fill_the_vector_with_their_constant(name, value):
    v = get_attack(name)(torch.randn(5, dtype=torch.float32), None, ctx())
    assert v.dtype == torch.float32 and torch.equal(v, torch.full((5,), value))


def test_nan_attack_sends_only_nan_and_large_stays_finite_in_float32():
    assert torch.isnan(get_attack("nan")(torch.randn(5), None, ctx())).all()
    assert torch.isfinite(get_attack("large")(torch.randn(5), None, ctx())).all()


def test_mimic_copies_the_target_honest_row_and_names_its_rank():
    H = honest_rows()
    attack = get_attack("mimic", target=2)
    assert torch.equal(attack(torch.zeros(D), H, ctx(honest_ranks=(1, 2, 4, 5, 7))), H[2])
    assert attack.resolved()["target_rank"] == 4


def mimic_variant_reference(rounds, warmup, seed=0):
    """Karimireddy et al.'s MimicVariantAttacker, written with loops over the honest vectors."""
    t, mu, z, target, sent = 0, None, None, None, []
    for grads in rounds:
        avg = sum(grads) / len(grads)
        if t == 0:
            mu = avg
            z = torch.randn(len(avg), generator=torch.Generator().manual_seed(seed), dtype=avg.dtype)
            cumu = sum(((g - mu) @ z) * (g - mu) for g in grads)
            z = cumu / cumu.norm()
        elif t < warmup:
            mu = t / (1 + t) * mu + avg / (1 + t)
            cumu = sum(((g - mu) @ z) * (g - mu) for g in grads)
            z = t / (1 + t) * z + cumu / cumu.norm() / (1 + t)
            z = z / z.norm()
        if t < warmup:
            target = max(range(len(grads)), key=lambda i: float(grads[i] @ z))
        sent.append(grads[target])
        t += 1
    return sent


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_mimic_variant_follows_the_reference_and_fixes_its_target_after_warmup(device):
    rounds = [honest_rows(seed=s).double() for s in range(5)]
    expected = mimic_variant_reference(rounds, warmup=2)
    rounds = [H.to(device) for H in rounds]
    attack = get_attack("mimic", warmup=2)
    sent = []
    for r, H in enumerate(rounds):
        sent.append(attack(torch.zeros(D, device=device), H, ctx(round=r)).cpu())
        if r == 0:  # resume from a checkpoint in the middle of the warm-up (checkpoints load on the CPU)
            state = {k: v.cpu() if torch.is_tensor(v) else v for k, v in attack.state_dict().items()}
            attack = get_attack("mimic", warmup=2)
            attack.load_state_dict(state)
    rounds = [H.cpu() for H in rounds]
    targets = [int(torch.nonzero((H == s).all(dim=1))[0]) for H, s in zip(rounds, sent)]
    assert all(torch.equal(a, b) for a, b in zip(sent, expected))
    assert len(set(targets[1:])) == 1  # rows 1.. use the target learnt in the last warm-up round


def test_colluders_knowledge_applies_the_same_formula_to_the_byzantine_rows():
    own = honest_rows(h=F)  # the f Byzantine ranks' own honest momenta
    c = ctx(knowledge="colluders")
    assert torch.allclose(get_attack("signflip")(own[0], own, c), -own.mean(0))
    z = 0.2533471031357997  # Karimireddy z for (n, f) = (8, 3)
    assert torch.allclose(get_attack("alie")(own[0], own, c), own.mean(0) - z * own.std(0), atol=1e-6)
    single = own[:1]  # f = 1: no spread can be estimated, ALIE sends the own momentum
    assert torch.equal(get_attack("alie")(single[0], single, ctx(f=1, knowledge="colluders")), single[0])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hgo_claimed_length_is_honest_unless_lie_length(name):
    assert get_attack(name).claim_length(37, 1000) == 37
    liar = get_attack(name, lie_length=True)
    assert liar.claim_length(37, 1000) == 1000 and liar.resolved()["lie_length"] is True


@pytest.mark.parametrize("mode", ["omniscient", "colluders"])
def test_worker_knowledge_is_the_honest_rows_or_the_colluders_own_momenta(monkeypatch, mode):
    """Worker.knowledge: the all-gather runs over the group the knowledge model allows (all workers, or
    the Byzantine workers alone) and hands the attack exactly the rows it may see, in rank order."""
    from types import SimpleNamespace

    import worker.trainer as wt

    m, byz = 8, [2, 6, 7]  # worker indices 1..8; Byzantine not all last
    U = torch.randn(m, 5)  # every worker's momentum this round, row k-1 for worker k
    members = {"all": list(range(1, m + 1)), "colluders": byz}

    def all_gather(out, tensor, group):
        for t, k in zip(out, members[group], strict=True):
            t.copy_(U[k - 1])

    monkeypatch.setattr(wt.dist, "all_gather", all_gather)
    for me in (6, 3):  # a Byzantine worker, then an honest one
        w = wt.Worker.__new__(wt.Worker)
        w.exchange, w.knowledge_mode, w.byzantine = True, mode, byz
        w.is_byzantine, w.honest = me in byz, [k for k in range(1, m + 1) if k not in byz]
        w.topo, w.u = SimpleNamespace(worker_group="all", colluder_group="colluders"), U[me - 1].clone()
        w._known = torch.zeros(m if mode == "omniscient" else len(byz), 5)
        w._known_list = list(w._known.unbind(0))
        known = w.knowledge()
        if not w.is_byzantine:
            assert known is None  # an honest worker takes part in the omniscient gather but gets nothing
        elif mode == "omniscient":
            assert torch.equal(known, U[[0, 2, 3, 4, 7]])  # the 5 honest workers 1, 3, 4, 5, 8
        else:
            assert torch.equal(known, U[[1, 5, 6]])  # workers 2, 6, 7: their own honest momenta
