"""Paper B's figures from HGO run directories: test accuracy against rounds or time, one curve per label.

    python -m launch.hgo_report OUT.png "HGO=runs/a,runs/b" "SGD=runs/c,runs/d" [--x round|logical_time|time]

Each curve is the mean over the run directories given for its label (seeds), with their min-max band.
The script also prints one markdown row per label: final and best accuracy (mean +- std over seeds),
mean block length b_i, mean quorum block b_v, logical time and wall seconds (from summary.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

X_LABELS = {"round": "rounds", "logical_time": "logical time (units)", "time": "wall-clock time (s)"}


def _curve(run_dir: str, x: str) -> tuple[list[float], list[float]]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows = [r for r in rows if r.get("test_accuracy") is not None]
    xs = [float(r[x]) for r in rows]
    ys = [float(r["test_accuracy"]) for r in rows]
    return xs, ys


def _summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _check_group(label: str, dirs: list[str]) -> str | None:
    """One line naming what makes LABEL=DIRS unusable, or None."""
    if not label or not dirs:
        return f"{label or '?'}={','.join(dirs)}: expected LABEL=RUN_DIR[,RUN_DIR...]"
    for d in dirs:
        for name in ("summary.json", "metrics.jsonl"):
            if not os.path.isfile(os.path.join(d, name)):
                return f"{d}: no {name} (not a finished run directory)"
        try:
            s = _summary(d)
        except (OSError, ValueError) as e:  # a run cut short or a damaged file
            return f"{d}/summary.json is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
        if not isinstance(s, dict) or "b_i_mean" not in s:
            return f"{d}: not an HGO run (summary.json has no b_i_mean; use launch.report for ByzSGDm runs)"
    return None


def table(groups: dict[str, list[str]]) -> list[str]:
    lines = ["| run | seeds | final accuracy | best accuracy | mean b_i | mean b_v | logical time | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, dirs in groups.items():
        s = [_summary(d) for d in dirs]
        mean = {k: statistics.mean(x[k] for x in s) for k in ("b_i_mean", "b_v_mean", "logical_time", "wall_seconds")}
        lines.append(
            f"| {label} | {len(s)} | {_mean_std([x['final_test_accuracy'] for x in s])} "
            f"| {_mean_std([x['best_test_accuracy'] for x in s])} "
            f"| {mean['b_i_mean']:.0f} | {mean['b_v_mean']:.0f} | {mean['logical_time']:.0f} "
            f"| {mean['wall_seconds']:.1f} |")
    return lines


def plot(groups: dict[str, list[str]], out: str, x: str, title: str, logx: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, dirs in groups.items():
        curves = [_curve(d, x) for d in dirs]
        n = min(len(c[1]) for c in curves)
        xs = [statistics.mean(c[0][i] for c in curves) for i in range(n)]
        ys = [[c[1][i] for c in curves] for i in range(n)]
        line, = ax.plot(xs, [statistics.mean(v) for v in ys], label=label)
        if len(curves) > 1:
            ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], alpha=0.2, color=line.get_color())
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel("test accuracy")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("groups", nargs="+", help="LABEL=RUN_DIR[,RUN_DIR...] (the last = splits)")
    p.add_argument("--x", default="round", choices=sorted(X_LABELS))
    p.add_argument("--title", default="")
    p.add_argument("--logx", action="store_true")
    a = p.parse_args(argv)
    from common.config import output_folder_problem

    if os.path.splitext(a.out)[1].lower() not in (".png", ".pdf", ".svg"):
        print(f"hgo_report: OUT={a.out!r} must end in .png, .pdf or .svg", file=sys.stderr)
        return 2
    problem = output_folder_problem(os.path.dirname(os.path.abspath(a.out)))
    if problem:
        print(f"hgo_report: OUT={a.out!r}: {problem}", file=sys.stderr)
        return 2
    groups = {}
    for item in a.groups:
        label, _, dirs = item.rpartition("=")
        groups[label] = [d for d in dirs.split(",") if d]
        problem = _check_group(label, groups[label])
        if problem:
            print(f"hgo_report: {problem}", file=sys.stderr)
            return 2
    plot(groups, a.out, a.x, a.title, a.logx)
    print("\n".join(table(groups)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
