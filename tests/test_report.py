"""launch.report on fake run directories: table cells in paper A's layouts (best over the lr grid),
robustness to failed jobs, and the files it writes."""
import json
import os

import pytest
import yaml

from launch.report import batch_tables, delta_tables, find_runs, load_run, main, time_tables, to_markdown


def make_run(root, name, *, alg="byzsgdm", agg="cc", pre=(), attack="alie", count=3, B=32, lr=0.1, acc=0.9,
             workers=8, seed=0, wall=100.0, summary="ok", with_config_in_summary=True, logical=False):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    cfg = {"algorithm": {"name": alg}, "aggregator": {"name": agg, "f": count, "pre": list(pre)},
           "attack": {"name": attack}, "byzantine": {"count": count, "ranks": None}, "workers": workers,
           "batch_size": B, "lr": lr, "epochs": 10, "seed": seed,
           "dataset": {"name": "mnist5k", "partition": "iid"}, "model": {"name": "cnn"}}
    with open(os.path.join(d, "config.yaml"), "w") as fh:
        yaml.safe_dump(cfg, fh)
    rows = []
    for e in range(1, 4):
        row = {"round": 10 * e, "epoch": float(e), "time": 1.5 * e, "lr": lr, "train_loss": 1.0 / e,
               "test_accuracy": acc * e / 3, "test_loss": 1.0 / e}
        if logical:
            row["logical_time"] = 4.0 * e
        rows.append(row)
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    s = {"final_test_accuracy": acc, "best_test_accuracy": acc, "final_test_loss": 0.3,
         "rounds_completed": 30, "epochs_completed": 3.0, "wall_seconds": wall,
         "rounds_per_second": 30 / wall, "restarts": 0, "time_breakdown": {"compute": 1.0},
         "bytes_received": 1000}
    if with_config_in_summary:
        s["config"] = {"algorithm": alg, "aggregator": agg, "pre": list(pre), "attack": attack,
                       "byzantine_count": count, "workers": workers, "batch_size": B, "lr": lr, "epochs": 10,
                       "dataset": "mnist5k", "model": "cnn", "seed": seed, "partition": "iid"}
    if logical:
        s["logical_time"] = 12.0
    text = json.dumps(s)
    if summary == "partial":
        text = text[: len(text) // 2]
    elif summary == "no_acc":
        text = json.dumps({k: v for k, v in s.items() if k != "final_test_accuracy"})
    if summary != "missing":
        with open(os.path.join(d, "summary.json"), "w") as fh:
            fh.write(text)
    return d


@pytest.fixture
def grid(tmp_path):
    """ByzSGDm / ByzSGDnm + CC under ALIE (3 of 8), B in {32, 64}, lr in {0.1, 1.0}, plus no-attack and
    delta = 1/8 runs for the Table 1 layout."""
    acc = {  # (alg, count, B, lr) -> final accuracy
        ("byzsgdm", 3, 32, 0.1): 0.3855, ("byzsgdm", 3, 32, 1.0): 0.40,
        ("byzsgdm", 3, 64, 0.1): 0.5415, ("byzsgdm", 3, 64, 1.0): 0.50,
        ("byzsgdnm", 3, 32, 0.1): 0.4347, ("byzsgdnm", 3, 64, 1.0): 0.7088,
        ("byzsgdm", 0, 32, 0.1): 0.9108, ("byzsgdm", 0, 64, 0.1): 0.8998,
        ("byzsgdm", 1, 32, 0.1): 0.5584, ("byzsgdm", 1, 64, 0.1): 0.6322,
    }
    for (alg, count, B, lr), a in acc.items():
        attack = "none" if count == 0 else "alie"
        make_run(str(tmp_path), f"{alg}_{count}_{B}_{lr}", alg=alg, count=count, attack=attack, B=B, lr=lr,
                 acc=a, wall=1000.0 / B)
    return tmp_path


def table_by_title(tables, text):
    (t,) = [t for t in tables if text in t.title]
    return t


def test_batch_table_takes_the_best_lr_and_the_best_batch(grid):
    runs = find_runs([str(grid)])
    assert len(runs) == 10 and all(r.ok for r in runs)
    t = table_by_title(batch_tables(runs), "alie, 3 of 8 Byzantine (δ = 3/8)")
    assert [t.row_labels[r] for r in t.rows] == ["ByzSGDm + CC", "ByzSGDnm + CC"]
    assert [t.col_labels[c] for c in t.cols] == ["Best", "32×8", "64×8"]
    assert t.value("ByzSGDm + CC", "32×8") == pytest.approx(0.40)
    assert t.value("ByzSGDm + CC", "64×8") == pytest.approx(0.5415)
    assert t.value("ByzSGDm + CC", "Best") == pytest.approx(0.5415)
    assert t.value("ByzSGDnm + CC", "Best") == pytest.approx(0.7088)
    md = to_markdown(t)
    assert "| Batch size | Best | 32×8 | 64×8 |" in md
    assert "| ByzSGDm + CC | 54.15% | 40.00% | 54.15% |" in md
    assert "| ByzSGDnm + CC | 70.88% | 43.47% | 70.88% |" in md
    clean = table_by_title(batch_tables(runs), "no attack")
    assert clean.value("ByzSGDm + CC", "Best") == pytest.approx(0.9108)


def test_delta_table_is_paper_a_table1_layout(grid):
    runs = find_runs([str(grid)])
    t = table_by_title(delta_tables(runs), "ByzSGDm + CC under alie")
    assert [t.row_labels[r] for r in t.rows] == ["32×8", "64×8"]
    assert [t.col_labels[c] for c in t.cols] == ["δ = 0", "δ = 1/8", "δ = 3/8"]
    assert t.value("32×8", "δ = 0") == pytest.approx(0.9108)
    assert t.value("64×8", "δ = 1/8") == pytest.approx(0.6322)
    assert t.value("32×8", "δ = 3/8") == pytest.approx(0.40)
    md = to_markdown(t)
    assert "| 32×8 | **91.08%** | 55.84% | 40.00% |" in md
    assert "| 64×8 | 89.98% | **63.22%** | **54.15%** |" in md
    assert t.notes == ["best batch size per δ: δ = 0: 32×8, δ = 1/8: 64×8, δ = 3/8: 64×8"]
    # ByzSGDnm has no no-attack runs: only its delta = 3/8 column
    tn = table_by_title(delta_tables(runs), "ByzSGDnm + CC under alie")
    assert [tn.col_labels[c] for c in tn.cols] == ["δ = 3/8"]


def test_time_table_is_mean_wall_seconds(grid, tmp_path):
    t = table_by_title(time_tables(find_runs([str(grid)])), "CC, alie, 3 of 8")
    assert t.value("ByzSGDm", "32×8") == pytest.approx(1000 / 32)
    assert "| ByzSGDm | 31.25s | 15.62s |" in to_markdown(t)
    own = tmp_path / "own"
    for name, lr, wall in (("a", 0.1, 10.0), ("b", 1.0, 30.0), ("c", 0.1, 35.0)):  # one cell, three runs
        make_run(str(own), name, lr=lr, seed=int(wall), wall=wall)
    t = time_tables(find_runs([str(own)]))[0]
    assert t.value("ByzSGDm", "32×8") == pytest.approx(25.0)  # (10 + 30 + 35) / 3: not the max, last or a median


def test_seeds_are_averaged_per_lr_before_the_max(tmp_path):
    for seed, a in enumerate((0.5, 0.7)):
        make_run(str(tmp_path), f"s{seed}", lr=0.1, seed=seed, acc=a)
    make_run(str(tmp_path), "other_lr", lr=1.0, acc=0.65)
    t = batch_tables(find_runs([str(tmp_path)]))[0]
    assert t.value("ByzSGDm + CC", "32×8") == pytest.approx(0.65)  # lr 1.0 (0.65) beats mean(0.5, 0.7)=0.6


def test_config_comes_from_config_yaml_when_the_summary_lacks_it(tmp_path):
    d = make_run(str(tmp_path), "r", alg="byzsgdnm", agg="cm", pre=("nnm",), B=128, acc=0.8,
                 with_config_in_summary=False)
    r = load_run(d)
    assert r.ok and r.config["batch_size"] == 128 and r.rule == ("nnm", "cm")
    t = batch_tables([r])[0]
    assert t.value("ByzSGDnm + NNM∘CM", "128×8") == pytest.approx(0.8)


def test_failed_jobs_are_listed_not_fatal(tmp_path):
    make_run(str(tmp_path), "good", acc=0.9)
    make_run(str(tmp_path), "crashed", summary="missing")
    make_run(str(tmp_path), "cut", summary="partial")
    make_run(str(tmp_path), "noacc", summary="no_acc")
    os.makedirs(tmp_path / "empty_dir")
    os.makedirs(tmp_path / "hydra_job" / ".hydra")  # a job stopped before writing its run files
    (tmp_path / "hydra_job" / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"algorithm": {"name": "byzsgdnm"}, "aggregator": {"name": "cm"}, "batch_size": 64}))
    (tmp_path / "hydra_job" / "run.log").write_text("starting\nbatch_size=64 must be <= 50 | shard\n")
    with open(tmp_path / "good" / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 40, "epoch": 4.0, "test_acc')  # a row cut short
    runs = {os.path.basename(r.path): r for r in find_runs([str(tmp_path)])}
    assert set(runs) == {"good", "crashed", "cut", "noacc", "hydra_job"}
    assert runs["good"].ok and len(runs["good"].metrics) == 3
    assert "no summary.json" in runs["crashed"].reason
    assert "summary.json unreadable" in runs["cut"].reason
    assert "final_test_accuracy" in runs["noacc"].reason
    assert "run.log: batch_size=64 must be <= 50" in runs["hydra_job"].reason
    assert runs["hydra_job"].config["batch_size"] == 64
    make_run(str(tmp_path), "gave_up", acc=0.9)  # a summary of an earlier attempt, then a failed resume
    (tmp_path / "gave_up" / "FAILED").write_text("rank 1 failed (exit 1): RuntimeError: boom\n")
    run = load_run(str(tmp_path / "gave_up"))
    assert not run.ok and run.reason.startswith("FAILED: rank 1 failed (exit 1): RuntimeError: boom")
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "6 run directories" in md and "1 finished, 5 failed" in md
    failed = md.split("## Failed runs")[1]
    for name in ("crashed", "cut", "noacc", "hydra_job", "gave_up"):
        assert f"| {name} |" in failed
    assert "<= 50 \\| shard" in failed  # a '|' in a reason cannot break the table
    assert "| ByzSGDm + CC | 90.00% | 90.00% |" in md


def test_cli_writes_report_and_plots_into_out(grid, tmp_path_factory):
    make_run(str(grid), "hgo_run", alg="hgo", agg="cm", attack="none", count=0, B=32, lr=0.5, acc=0.85,
             logical=True)
    make_run(str(grid), "sgd_run", alg="sgd", agg="cm", attack="none", count=0, B=32, lr=0.5, acc=0.80)
    os.makedirs(grid / "hgo_run" / ".hydra")
    (grid / "hgo_run" / ".hydra" / "config.yaml").write_text("a: 1\n")  # hydra's own copy: not a run
    out = tmp_path_factory.mktemp("out")
    assert main([str(grid), "--out", str(out)]) == 0
    files = sorted(os.listdir(out))
    assert "report.md" in files
    assert any(f.startswith("curves_") for f in files)
    assert any(f.startswith("acc_vs_batch_") for f in files)
    assert any(f.startswith("time_") for f in files)
    md = (out / "report.md").read_text()
    assert "12 run directories" in md and "0 failed" in md
    assert "| HGO + CM | 85.00% | 85.00% |" in md and "| SGD + CM | 80.00% | 80.00% |" in md
    for f in files:
        if f.endswith(".png"):
            assert f"]({f})" in md and (out / f).stat().st_size > 1000


def test_cli_rejects_a_missing_directory(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_rule_parameters_that_differ_from_the_defaults_name_their_own_row():
    from launch.report import Run, rule_label

    base = {"aggregator": "cc", "byzantine_count": 3, "workers": 8, "attack": "alie"}
    default = Run("a", True, config={**base, "aggregator_params": {"tau": 0.1, "L": 1}})
    wide = Run("b", True, config={**base, "aggregator_params": {"tau": 1.0, "L": 1}})
    assert default.rule == ("cc",) and wide.rule == ("cc(tau=1.0)",)
    assert rule_label(wide.rule) == "CC(tau=1.0)"


def _hgo_run(root, name, acc, b_i=3000.0, b_v=2500.0):
    d = make_run(root, name, alg="hgo", acc=acc, logical=True)
    with open(os.path.join(d, "summary.json")) as fh:
        s = json.load(fh)
    s.update(b_i_mean=b_i, b_v_mean=b_v)
    with open(os.path.join(d, "summary.json"), "w") as fh:
        json.dump(s, fh)
    return d


def test_hgo_report_table_and_plot_over_seeds(tmp_path, capsys):
    from launch import hgo_report

    a = [_hgo_run(tmp_path, f"hgo_s{k}", acc) for k, acc in enumerate((0.8, 0.9))]
    b = _hgo_run(tmp_path, "sgd_s0", 0.5, b_i=7850.0, b_v=7850.0)
    out = tmp_path / "fig.png"
    assert hgo_report.main([str(out), f"HGO={','.join(a)}", f"SGD={b}", "--x", "logical_time"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert out.stat().st_size > 1000
    assert lines[2] == "| HGO | 2 | 0.850 ± 0.071 | 0.850 ± 0.071 | 3000 | 2500 | 12 | 100.0 |"
    assert lines[3] == "| SGD | 1 | 0.500 | 0.500 | 7850 | 7850 | 12 | 100.0 |"


def test_hgo_report_rejects_missing_and_non_hgo_runs_with_one_line(tmp_path, capsys):
    from launch import hgo_report

    plain = make_run(tmp_path, "byz", acc=0.9)
    torn = make_run(tmp_path, "torn", summary="partial")
    for group, expect in ((f"A={plain}", "not an HGO run"), (f"A={tmp_path / 'none'}", "no summary.json"),
                          ("nolabel", "expected LABEL=RUN_DIR"), (f"A={torn}", "summary.json is unreadable")):
        assert hgo_report.main([str(tmp_path / "x.png"), group]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys):
    from launch import advise, hgo_report, report

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run = make_run(tmp_path, "r", acc=0.9)
    assert report.main([run, "--out", str(blocker / "out")]) == 2
    assert hgo_report.main([str(blocker / "x.png"), f"A={run}"]) == 2
    assert advise.main(["--out", str(blocker / "u.png")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("cannot create" in e and "a-file" in e for e in errors), errors
