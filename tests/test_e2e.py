"""End-to-end runs with real processes (1 server + 8 workers over Gloo). Few and short."""
import os

import pytest
import torch

from tests.helpers import contract_problems, launch, metrics, summary

pytestmark = pytest.mark.e2e


def test_no_attack_reaches_90_percent_on_mnist5k_and_writes_every_contract_file(tmp_path):
    run = tmp_path / "clean"
    launch(run, "attack=none")  # every other setting is the default
    s = summary(run)
    assert s["epochs_completed"] == 10 and s["rounds_completed"] == 150
    assert s["final_test_accuracy"] >= 0.90, s["final_test_accuracy"]
    assert s["bytes_received"] == 150 * 8 * (s["d"] + s["bn_floats"] + 2) * 4
    assert set(s["time_breakdown"]) == {"compute", "communication", "aggregation", "update", "evaluation"}
    rows = metrics(run)
    rounds = [r["round"] for r in rows]
    assert rounds == sorted(set(rounds)) and rounds[-1] == 150
    assert [r["test_accuracy"] for r in rows if "test_accuracy" in r][-1] == pytest.approx(s["final_test_accuracy"])
    evaluated = [r for r in rows if "test_accuracy" in r]
    assert len(evaluated) == 10 and all(r["t_evaluation"] > 0 for r in evaluated)
    assert s["best_test_accuracy"] == pytest.approx(max(r["test_accuracy"] for r in evaluated))
    assert all(r[f"t_{p}"] >= 0 for r in rows for p in ("compute", "communication", "aggregation", "update"))
    # TensorBoard read back with tensorboard's own event reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    series = acc.Scalars("test/accuracy")
    assert [e.step for e in series] == [15 * k for k in range(1, 11)]
    assert series[-1].value == pytest.approx(s["final_test_accuracy"], abs=1e-6)
    assert contract_problems(run) == []


def test_bitflip_breaks_mean_but_not_coordinate_median(tmp_path):
    accs = {}
    for rule in ("mean", "cm"):
        launch(tmp_path / rule, "attack=bitflip", f"aggregator={rule}", "epochs=4")
        accs[rule] = summary(tmp_path / rule)["final_test_accuracy"]
    assert accs["mean"] < 0.3 and accs["cm"] > 0.8, accs


def test_hydra_override_changes_the_run_and_multirun_sweeps(tmp_path):
    run = tmp_path / "krum"
    launch(run, "aggregator=krum", "attack=signflip", "byzantine.count=1", "max_rounds=4", "batch_size=16",
           "log.oracle=true", "log.every=1", "comm.pattern=collective")  # the multi-host and NCCL pattern
    s = summary(run)
    assert s["config"]["aggregator"] == "krum" and s["config"]["attack"] == "signflip"
    assert s["config"]["pattern"] == "collective"
    assert s["config"]["byzantine_count"] == 1 and s["config"]["batch_size"] == 16
    assert s["rounds_completed"] == 4
    rows = metrics(run)
    assert len(rows) == 4 and all(r["oracle_error"] >= 0 for r in rows)
    # Krum never picks the signflip row -mean(honest), whose error would be 2 ||mean(honest)||
    assert all(r["oracle_error"] < 1.5 * r["honest_mean_norm"] for r in rows), rows
    sweep = tmp_path / "sweep"
    proc = launch(None, "--multirun", "aggregator=mean,cm", "attack=none", "max_rounds=2",
                  f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0
    found = sorted(p for p in os.listdir(sweep) if os.path.exists(sweep / p / "summary.json"))
    assert found == ["0", "1"]
    assert {summary(sweep / j)["config"]["aggregator"] for j in found} == {"mean", "cm"}


def test_colluding_byzantine_workers_build_their_own_group_and_attack_with_it(tmp_path):
    """attack.knowledge=colluders: the 3 Byzantine workers build a group among themselves (no other rank
    takes part) and the run completes with it and records the knowledge. Which rows the attack then sees
    is checked in test_attacks.py (test_worker_knowledge_is_the_honest_rows_or_the_colluders_own_momenta)."""
    run = tmp_path / "colluders"
    launch(run, "attack=alie", "attack.knowledge=colluders", "max_rounds=3", "log.every=1", "batch_size=16")
    s = summary(run)
    assert s["rounds_completed"] == 3 and s["config"]["attack_knowledge"] == "colluders"
    assert s["config"]["pattern"] == "p2p"  # auto: Gloo, every rank on this host
    assert all(r["train_loss"] is not None and r["agg_norm"] > 0 for r in metrics(run))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nine_ranks_sharing_one_gpu_train_through_gloo_staging_with_the_speed_options(tmp_path):
    """device=cuda with every rank on one GPU: the data group is Gloo staged through pinned host memory,
    the server aggregates on the GPU, and bf16 autocast + channels_last leave the accuracy where it is."""
    run = tmp_path / "gpu"
    launch(run, "attack=none", "device=cuda", "perf.autocast=bf16", "perf.channels_last=true")
    s = summary(run)
    assert s["config"]["device"].startswith("cuda") and s["config"]["backend"] == "gloo"
    assert s["config"]["pattern"] == "p2p"  # point-to-point through the pinned host buffers
    assert s["rounds_completed"] == 150 and s["final_test_accuracy"] >= 0.90, s["final_test_accuracy"]
    assert contract_problems(run) == []
