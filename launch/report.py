"""Tables and plots over finished runs, in paper A's layouts.

    python -m launch.report DIR [DIR ...] [--out OUTDIR]

Walks the DIRs for run directories (any directory holding summary.json, config.yaml or metrics.jsonl,
or a hydra job directory with .hydra/; hidden directories, tb/ and checkpoints/ are not searched) and
writes OUTDIR/report.md (default OUTDIR: the first DIR) with
- per setting (dataset, model, attack, delta, ...): rows rule x algorithm, columns "Best" and the batch
  sizes B x m (paper A, Tables 2-5);
- per rule x algorithm x attack: rows batch sizes, columns delta = byzantine_count / workers, no-attack
  runs as delta = 0 (paper A, Table 1), the best batch size of each column in bold;
- wall-clock seconds per algorithm and batch size (paper A, Table 6);
- every run, and the runs that failed (no or unreadable summary.json) with the reason;
and PNGs: test accuracy per epoch, accuracy vs batch size per delta, and accuracy vs (logical) time
for HGO / SGD runs (paper B's figures).

Every accuracy cell is the final top-1 test accuracy of the best learning rate of the grid (paper A
reports the best over eta_0); runs repeated with several seeds are averaged per learning rate first.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl")
SKIP_DIRS = {"tb", "checkpoints"}
ALG_NAMES = {"byzsgdm": "ByzSGDm", "byzsgdnm": "ByzSGDnm", "sgd": "SGD", "hgo": "HGO"}
ALG_ORDER = ("byzsgdm", "byzsgdnm", "sgd", "hgo")
RULE_NAMES = {"krum": "KR", "gm": "GM", "cm": "CM", "cc": "CC", "tm": "TM", "mean": "Mean",
              "multikrum": "MKR", "meamed": "MeaMed", "phocas": "Phocas", "bulyan": "Bulyan",
              "aksel": "AKSEL", "nnm": "NNM", "bucketing": "Bucketing", "clip": "Clip", "arc": "ARC"}
RULE_ORDER = ("krum", "gm", "cm", "cc")  # paper A's order; the others follow alphabetically
CONFIG_KEYS = ("algorithm", "aggregator", "pre", "attack", "byzantine_count", "workers", "batch_size", "lr",
               "epochs", "dataset", "model")


# ------------------------------------------------------------------------------------------------ runs

@dataclass
class Run:
    path: str
    ok: bool
    reason: str = ""
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)

    @property
    def delta(self) -> float:
        return int(self.config["byzantine_count"]) / int(self.config["workers"])

    @property
    def attack(self) -> str:
        """The attack, 'none' whenever no worker is Byzantine (delta = 0 runs are no-attack runs)."""
        return "none" if int(self.config["byzantine_count"]) == 0 else str(self.config["attack"])

    @property
    def rule(self) -> tuple:
        name = str(self.config["aggregator"])
        changed = _non_default_params(name, self.config.get("aggregator_params") or {})
        if changed:  # e.g. CC at tau = 0.1 and tau = 1.0 are different rows, never one best-over-lr cell
            name += "(" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"
        return (*map(str, self.config.get("pre") or []), name)

    @property
    def acc(self) -> float:
        return float(self.summary["final_test_accuracy"])


def _non_default_params(rule: str, params: dict) -> dict:
    """The rule parameters of a run that differ from conf/aggregator/RULE.yaml's defaults."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "aggregator",
                        f"{rule}.yaml")
    defaults = _yaml(path) if os.path.exists(path) else {}
    return {k: v for k, v in params.items() if k in defaults and defaults[k] != v}


def _yaml(path: str) -> dict:
    import yaml

    with open(path) as fh:
        out = yaml.safe_load(fh)
    return out if isinstance(out, dict) else {}


def _dig(d: dict, path: str):
    node = d
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _config_from_yaml(c: dict) -> dict:
    """Key values from a resolved hydra config (config.yaml)."""
    ranks = _dig(c, "byzantine.ranks")
    count = len(ranks) if isinstance(ranks, list) else _dig(c, "byzantine.count")
    out = {"algorithm": _dig(c, "algorithm.name"), "aggregator": _dig(c, "aggregator.name"),
           "pre": _dig(c, "aggregator.pre") or [], "attack": _dig(c, "attack.name"), "byzantine_count": count,
           "workers": c.get("workers"), "batch_size": c.get("batch_size"), "lr": c.get("lr"),
           "epochs": c.get("epochs"), "dataset": _dig(c, "dataset.name"), "model": _dig(c, "model.name"),
           "seed": c.get("seed"), "partition": _dig(c, "dataset.partition")}
    return {k: v for k, v in out.items() if v is not None}


def load_run(path: str) -> Run:
    """Read one run directory; never raises: problems make a failed Run with the reason."""
    cfg: dict = {}
    problems = []
    ypath = os.path.join(path, "config.yaml")
    if not os.path.isfile(ypath):  # a hydra job that stopped before writing its run files
        ypath = os.path.join(path, ".hydra", "config.yaml")
    if os.path.isfile(ypath):
        try:
            cfg = _config_from_yaml(_yaml(ypath))
        except Exception as e:  # noqa: BLE001 - a broken file makes a failed run, never a crash
            problems.append(f"config.yaml unreadable ({type(e).__name__})")
    summary: dict = {}
    spath = os.path.join(path, "summary.json")
    if not os.path.isfile(spath):
        problems.insert(0, "no summary.json (crashed, killed or still running)")
    else:
        try:
            with open(spath) as fh:
                summary = json.load(fh)
            if not isinstance(summary, dict):
                raise ValueError("not an object")
        except Exception as e:  # noqa: BLE001
            problems.insert(0, f"summary.json unreadable ({type(e).__name__}: {str(e)[:80]})")
            summary = {}
    if isinstance(summary.get("config"), dict):
        cfg = {**cfg, **{k: v for k, v in summary["config"].items() if v is not None}}
    metrics = []
    mpath = os.path.join(path, "metrics.jsonl")
    if os.path.isfile(mpath):
        with open(mpath, errors="replace") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:  # a row cut short by a crash
                    continue
                if isinstance(row, dict):
                    metrics.append(row)
    if os.path.exists(os.path.join(path, "FAILED")):  # launch.run gave up (this outranks any summary.json)
        problems.insert(0, f"FAILED: {_last_line(os.path.join(path, 'FAILED'))[:200] or 'no reason recorded'}")
    elif not summary:
        last = _last_line(os.path.join(path, "run.log"))
        if last:
            problems.append(f"run.log: {last[:160]}")
    if summary and not problems:
        acc = summary.get("final_test_accuracy")
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
            problems.append(f"summary.json final_test_accuracy={acc!r} is not a number")
        missing = [k for k in CONFIG_KEYS if k not in cfg and k != "pre"]
        if missing:
            problems.append(f"config values missing: {', '.join(missing)}")
    return Run(path, not problems, "; ".join(problems), summary, cfg, metrics)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh.readlines()[-50:] if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def find_runs(dirs: Iterable[str]) -> list[Run]:
    """Every run directory under dirs (sorted by path): a directory with a run file, or a hydra job
    directory (with .hydra/) whose job may have stopped before writing any."""
    found = []
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            hydra_job = ".hydra" in subdirs
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in SKIP_DIRS)
            if hydra_job or any(f in files for f in RUN_FILES):
                found.append(load_run(root))
    return sorted(found, key=lambda r: r.path)


# ---------------------------------------------------------------------------------------------- tables

@dataclass
class Table:
    title: str
    corner: str
    rows: list
    cols: list
    row_labels: dict
    col_labels: dict
    cells: dict  # (row, col) -> value or None
    fmt: str = "pct"  # pct | seconds
    bold_col_max: bool = False
    notes: list = field(default_factory=list)

    def value(self, row_label: str, col_label: str):
        """The cell by its printed labels (tests, callers)."""
        r = next(k for k, v in self.row_labels.items() if v == row_label)
        c = next(k for k, v in self.col_labels.items() if v == col_label)
        return self.cells.get((r, c))


def frac(d: float) -> str:
    for den in (1, 2, 4, 8, 16, 3, 5, 10, 100):
        if abs(d * den - round(d * den)) < 1e-9:
            num = int(round(d * den))
            return "0" if num == 0 else ("1" if num == den else f"{num}/{den}")
    return f"{d:.3g}"


def rule_label(rule: tuple) -> str:
    def one(r: str) -> str:
        base, _, params = r.partition("(")
        return RULE_NAMES.get(base, base.upper()) + (f"({params}" if params else "")

    return "∘".join(one(r) for r in rule)


def row_label(alg: str, rule: tuple) -> str:
    return f"{ALG_NAMES.get(alg, alg)} + {rule_label(rule)}"


def _rule_key(rule: tuple):
    agg = rule[-1]
    return (RULE_ORDER.index(agg) if agg in RULE_ORDER else len(RULE_ORDER), agg, rule)


def _alg_key(alg: str):
    return (ALG_ORDER.index(alg) if alg in ALG_ORDER else len(ALG_ORDER), alg)


def best_over_lr(runs: Sequence[Run]) -> tuple[float, float, int]:
    """(accuracy, lr, runs) of the best learning rate: seeds averaged per lr, then the max over lrs."""
    by_lr: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        by_lr[float(r.config["lr"])].append(r.acc)
    lr, accs = max(by_lr.items(), key=lambda kv: (sum(kv[1]) / len(kv[1]), -kv[0]))
    return sum(accs) / len(accs), lr, len(runs)


def _setting(r: Run) -> tuple:
    c = r.config
    return (str(c["dataset"]), str(c["model"]), str(c.get("partition", "iid")), int(c["workers"]),
            c["epochs"])


def _setting_title(s: tuple) -> str:
    dataset, model, partition, m, epochs = s
    part = "" if partition == "iid" else f", {partition} partition"
    return f"{dataset} / {model}, m = {m}, {epochs} epochs{part}"


def _attack_title(attack: str, count: int, m: int) -> str:
    if count == 0:
        return "no attack"
    return f"{attack}, {count} of {m} Byzantine (δ = {frac(count / m)})"


def batch_tables(runs: Sequence[Run]) -> list[Table]:
    """Paper A Tables 2-5: per setting and attack, rows rule x algorithm, columns Best + batch sizes."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(_setting(r), r.attack, int(r.config["byzantine_count"]))].append(r)
    tables = []
    for (setting, attack, count), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        m = setting[3]
        cellruns: dict[tuple, list[Run]] = defaultdict(list)
        for r in rs:
            cellruns[((r.config["algorithm"], r.rule), int(r.config["batch_size"]))].append(r)
        rows = sorted({k[0] for k in cellruns}, key=lambda ar: (_rule_key(ar[1]), _alg_key(ar[0])))
        bs = sorted({k[1] for k in cellruns})
        cells = {}
        for row in rows:
            vals = []
            for b in bs:
                v = best_over_lr(cellruns[(row, b)])[0] if (row, b) in cellruns else None
                cells[(row, b)] = v
                if v is not None:
                    vals.append(v)
            cells[(row, "best")] = max(vals) if vals else None
        tables.append(Table(
            title=f"{_setting_title(setting)}: {_attack_title(attack, count, m)}",
            corner="Batch size", rows=rows, cols=["best", *bs],
            row_labels={row: row_label(*row) for row in rows},
            col_labels={"best": "Best", **{b: f"{b}×{m}" for b in bs}}, cells=cells))
    return tables


def delta_tables(runs: Sequence[Run]) -> list[Table]:
    """Paper A Table 1: per setting, algorithm, rule and attack, rows batch sizes, columns delta (the
    no-attack runs of the same setting, algorithm and rule are the delta = 0 column)."""
    keyed: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        keyed[(_setting(r), r.config["algorithm"], r.rule)].append(r)
    tables = []
    for (setting, alg, rule), rs in sorted(keyed.items(), key=lambda kv: (kv[0][0], _rule_key(kv[0][2]),
                                                                           _alg_key(kv[0][1]))):
        m = setting[3]
        attacks = sorted({r.attack for r in rs if r.attack != "none"})
        clean = [r for r in rs if r.attack == "none"]
        for attack in attacks:
            sel = clean + [r for r in rs if r.attack == attack]
            cellruns: dict[tuple, list[Run]] = defaultdict(list)
            for r in sel:
                cellruns[(int(r.config["batch_size"]), r.delta)].append(r)
            bs = sorted({k[0] for k in cellruns})
            ds = sorted({k[1] for k in cellruns})
            cells = {k: best_over_lr(v)[0] for k, v in cellruns.items()}
            t = Table(
                title=f"{_setting_title(setting)}: {row_label(alg, rule)} under {attack}",
                corner="Batch size", rows=bs, cols=ds, row_labels={b: f"{b}×{m}" for b in bs},
                col_labels={d: f"δ = {frac(d)}" for d in ds}, cells=cells, bold_col_max=True)
            best = []
            for d in ds:
                col = [(cells[(b, d)], b) for b in bs if cells.get((b, d)) is not None]
                if col:
                    best.append(f"δ = {frac(d)}: {max(col)[1]}×{m}")
            t.notes.append("best batch size per δ: " + ", ".join(best))
            tables.append(t)
    return tables


def time_tables(runs: Sequence[Run]) -> list[Table]:
    """Paper A Table 6: mean wall-clock seconds per algorithm (rows) and batch size (columns)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if isinstance(r.summary.get("wall_seconds"), (int, float)):
            groups[(_setting(r), r.attack, int(r.config["byzantine_count"]), r.rule)].append(r)
    tables = []
    def order(kv):
        setting, attack, count, rule = kv[0]
        return setting, count, attack, _rule_key(rule)

    for (setting, attack, count, rule), rs in sorted(groups.items(), key=order):
        m = setting[3]
        cellruns: dict[tuple, list[float]] = defaultdict(list)
        for r in rs:
            key = (r.config["algorithm"], int(r.config["batch_size"]))
            cellruns[key].append(float(r.summary["wall_seconds"]))
        algs = sorted({k[0] for k in cellruns}, key=_alg_key)
        bs = sorted({k[1] for k in cellruns})
        cells = {k: sum(v) / len(v) for k, v in cellruns.items()}
        tables.append(Table(
            title=f"{_setting_title(setting)}: {rule_label(rule)}, {_attack_title(attack, count, m)} "
                  f"(wall-clock seconds, mean over runs)",
            corner="Batch size", rows=algs, cols=bs, row_labels={a: ALG_NAMES.get(a, a) for a in algs},
            col_labels={b: f"{b}×{m}" for b in bs}, cells=cells, fmt="seconds"))
    return tables


def _fmt(v, fmt: str) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.2f}%" if fmt == "pct" else f"{v:.2f}s"


def to_markdown(t: Table) -> str:
    cols = [t.col_labels[c] for c in t.cols]
    lines = [f"| {t.corner} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    col_max = {}
    if t.bold_col_max:
        for c in t.cols:
            vals = [t.cells.get((r, c)) for r in t.rows if t.cells.get((r, c)) is not None]
            col_max[c] = max(vals) if vals else None
    for r in t.rows:
        out = []
        for c in t.cols:
            v = t.cells.get((r, c))
            s = _fmt(v, t.fmt)
            out.append(f"**{s}**" if v is not None and col_max.get(c) == v else s)
        lines.append(f"| {t.row_labels[r]} | " + " | ".join(out) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plots

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:80] or "x"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Sequence[Run], out: str) -> list[str]:
    """Test accuracy per epoch: one figure per setting and attack, one line per rule x algorithm x B
    (its best learning rate's run)."""
    plt = _plt()
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(_setting(r), r.attack, int(r.config["byzantine_count"]))].append(r)
    files = []
    for (setting, attack, count), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        cell: dict[tuple, list[Run]] = defaultdict(list)
        for r in rs:
            cell[(r.config["algorithm"], r.rule, int(r.config["batch_size"]))].append(r)
        m = setting[3]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = 0
        for (alg, rule, b), crs in sorted(cell.items(), key=lambda kv: (_rule_key(kv[0][1]),
                                                                         _alg_key(kv[0][0]), kv[0][2])):
            _, lr, _ = best_over_lr(crs)
            run = max((r for r in crs if float(r.config["lr"]) == lr), key=lambda r: r.acc)
            pts = [(row["epoch"], row["test_accuracy"]) for row in run.metrics
                   if row.get("test_accuracy") is not None and row.get("epoch") is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"{row_label(alg, rule)}, B={b}, η0={lr:g}", lw=1.2)
                drawn += 1
        if drawn:
            name = f"curves_{_slug(_setting_title(setting) + ' ' + _attack_title(attack, count, m))}.png"
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{_setting_title(setting)}\n{_attack_title(attack, count, setting[3])}", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            fig.savefig(os.path.join(out, name), dpi=100)
            files.append(name)
        plt.close(fig)
    return files


def plot_acc_vs_batch(tables: Sequence[Table], out: str) -> list[str]:
    """Final accuracy against the batch size, one line per delta (from the Table 1 layouts)."""
    plt = _plt()
    files = []
    for t in tables:
        fig, ax = plt.subplots(figsize=(6, 4))
        for d in t.cols:
            pts = [(b, t.cells[(b, d)]) for b in t.rows if t.cells.get((b, d)) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=t.col_labels[d])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size per worker")
        ax.set_ylabel("final test accuracy (best η0)")
        ax.set_title(t.title, fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"acc_vs_batch_{_slug(t.title)}.png"
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)
        files.append(name)
    return files


def plot_time(runs: Sequence[Run], out: str) -> list[str]:
    """HGO and SGD runs (paper B): test accuracy against rounds and against (logical) time."""
    plt = _plt()
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.config["algorithm"] in ("hgo", "sgd"):
            groups[(_setting(r), r.attack, int(r.config["byzantine_count"]))].append(r)
    files = []
    for (setting, attack, count), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if not any(r.config["algorithm"] == "hgo" for r in rs):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        logical = any(row.get("logical_time") is not None for r in rs for row in r.metrics)
        tkey = "logical_time" if logical else "time"
        for r in sorted(rs, key=lambda r: (_alg_key(r.config["algorithm"]), r.path)):
            rows = [row for row in r.metrics if row.get("test_accuracy") is not None]
            label = f"{row_label(r.config['algorithm'], r.rule)}, B={r.config['batch_size']}, " \
                    f"η={float(r.config['lr']):g}"
            pts = [(row["round"], row["test_accuracy"]) for row in rows if row.get("round") is not None]
            if pts:
                line, = axes[0].plot(*zip(*pts), label=label, lw=1.2)
                tp = [(row[tkey], row["test_accuracy"]) for row in rows if row.get(tkey) is not None]
                if tp:
                    axes[1].plot(*zip(*tp), color=line.get_color(), lw=1.2)
        axes[0].set_xlabel("round")
        axes[1].set_xlabel("logical time" if logical else "wall-clock time (s)")
        for ax in axes:
            ax.set_ylabel("test accuracy")
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{_setting_title(setting)}: {_attack_title(attack, count, setting[3])}", fontsize=9)
        fig.tight_layout()
        name = f"time_{_slug(_setting_title(setting) + '_' + _attack_title(attack, count, setting[3]))}.png"
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)
        files.append(name)
    return files


# ---------------------------------------------------------------------------------------------- report

def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rel(path: str, base: str) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return path


def runs_table(runs: Sequence[Run], base: str) -> str:
    head = ("| run | algorithm | rule | attack | δ | B | η0 | final acc. | best acc. | epochs | wall s | "
            "restarts |")
    lines = [head, "|---" * 12 + "|"]
    for r in runs:
        s, c = r.summary, r.config
        best, wall = s.get("best_test_accuracy"), s.get("wall_seconds")
        best = f"{100 * best:.2f}%" if isinstance(best, (int, float)) else "–"
        wall = f"{wall:.1f}" if isinstance(wall, (int, float)) else "–"
        alg = ALG_NAMES.get(c["algorithm"], c["algorithm"])
        lines.append(
            f"| {_rel(r.path, base)} | {alg} | {rule_label(r.rule)} | "
            f"{r.attack} | {frac(r.delta)} | {c['batch_size']} | {float(c['lr']):g} | {100 * r.acc:.2f}% | "
            f"{best} | {s.get('epochs_completed', '–')} | {wall} | {s.get('restarts', '–')} |")
    return "\n".join(lines)


def write_report(dirs: Sequence[str], out: str) -> tuple[str, list[Run]]:
    """Write out/report.md and the PNGs; return the report's path and every run found."""
    os.makedirs(out, exist_ok=True)
    runs = find_runs(dirs)
    ok = [r for r in runs if r.ok]
    failed = [r for r in runs if not r.ok]
    base = os.path.commonpath([os.path.abspath(d) for d in dirs])  # run paths are shown relative to it
    md = ["# Report", "",
          f"{len(runs)} run directories under {', '.join(dirs)}: {len(ok)} finished, {len(failed)} failed.",
          "Accuracy cells: final top-1 test accuracy at the best η0 of the grid (seeds averaged per η0).", ""]
    if ok:
        md += ["## Accuracy by rule × algorithm and batch size (paper A, Tables 2-5)", ""]
        for t in batch_tables(ok):
            md += [f"### {t.title}", "", to_markdown(t), ""]
        dts = delta_tables(ok)
        if dts:
            md += ["## Accuracy by batch size and Byzantine fraction δ (paper A, Table 1)", "",
                   "Bold: the best batch size of each δ column.", ""]
            for t in dts:
                md += [f"### {t.title}", "", to_markdown(t), "", *[f"{n}." for n in t.notes], ""]
        md += ["## Wall-clock time (paper A, Table 6)", ""]
        for t in time_tables(ok):
            md += [f"### {t.title}", "", to_markdown(t), ""]
        pngs = plot_curves(ok, out) + plot_acc_vs_batch(dts, out) + plot_time(ok, out)
        if pngs:
            md += ["## Plots", "", *[f"![{p}]({p})" for p in pngs], ""]
        md += ["## Runs", "", runs_table(ok, base), ""]
    if failed:
        md += ["## Failed runs", "", "| run | reason | configuration |", "|---|---|---|"]
        for r in failed:
            c = r.config
            what = ", ".join(f"{k}={c[k]}" for k in ("algorithm", "aggregator", "attack", "byzantine_count",
                                                      "batch_size", "lr") if k in c)
            md.append(f"| {_cell(_rel(r.path, base))} | {_cell(r.reason)} | {_cell(what or '–')} |")
        md.append("")
    path = os.path.join(out, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    return path, runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="directories to search for run directories")
    p.add_argument("--out", default=None, help="output directory (default: the first DIR)")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not os.path.isdir(d)]
    if missing:
        print(f"report: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    from common.config import output_folder_problem

    out = args.out or args.dirs[0]
    problem = output_folder_problem(out)
    if problem:
        print(f"report: --out={out!r}: {problem}", file=sys.stderr)
        return 2
    path, runs = write_report(args.dirs, out)
    n_failed = sum(not r.ok for r in runs)
    print(f"report: {len(runs)} runs ({n_failed} failed) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
