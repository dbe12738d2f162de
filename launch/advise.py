"""Batch-size advisor: paper A's optimal batch sizes for the configured job.

    python -m launch.advise [--out PATH] [--c C] [--samples N] [--hvp-batch N] [--f-star X]
                            [--deltas 0,0.125,...] [hydra overrides ...]

Composes the job's hydra config (same overrides as `launch.run`), builds the model at its initial point
(torch.manual_seed(seed)) and the training set, estimates sigma^2, L and F0 there (common.estimate),
takes c for the configured aggregation rule, and prints for each delta of a grid (0, 1/8, 1/4, 3/8 and
the configured byzantine.count / workers): c of the rule set for f = delta m Byzantine workers
(common.estimate.robustness_c; one value for every row with --c), B* (eq. 10) with its best integer,
T = C / (B* m (1 - delta)), U(B*) (eq. 11), and ByzSGDnm's B~* (Proposition 2) with its bound (eq. 17).
The budget is C = epochs x (shard size x m) x (1 - delta), shards being the training set split i.i.d.
over the m workers. A PNG of U(B) (and of eq. 16's bound)
per delta goes to --out.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_DELTAS = (0.0, 0.125, 0.25, 0.375)


def compose_config(overrides: Sequence[str]):
    """The job's config from conf/ with hydra's compose API, as every rank of a run composes it."""
    from launch.node import compose

    return compose(list(overrides))


def _parse(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(prog="python -m launch.advise", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "advise.png"), help="PNG path for the U(B) plot")
    p.add_argument("--c", type=float, default=None, help="robustness constant c (default: per-rule table)")
    p.add_argument("--samples", type=int, default=256, help="samples for the per-sample gradient variance")
    p.add_argument("--hvp-batch", type=int, default=512, help="batch for Hessian-vector power iteration")
    p.add_argument("--f-star", type=float, default=0.0, help="lower bound F* of the loss (F0 = F(w0) - F*)")
    p.add_argument("--deltas", default=None,
                   help="comma-separated Byzantine fractions (default 0,1/8,1/4,3/8)")
    p.add_argument("--seed", type=int, default=None, help="seed of the estimators (default: config seed)")
    p.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model=logreg epochs=20")
    return p.parse_args(argv)


def _cfg_get(cfg, path, default=None):
    node = cfg
    for part in path.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return node


def measure(cfg, samples: int = 256, hvp_batch: int = 512, f_star: float = 0.0, seed: int | None = None):
    """sigma^2, L, F0 at the configured model's initial point on the configured training set."""
    import torch

    from common.config import dataset_kwargs, model_kwargs
    from common.data import load_dataset
    from common.estimate import estimate_F0, estimate_L, estimate_sigma2
    from common.models import build_model

    data = load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download), int(cfg.seed),
                        **dataset_kwargs(cfg))
    torch.manual_seed(int(cfg.seed))  # the trainer's initial point: same seed, then build_model
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, **model_kwargs(cfg))
    name = str(_cfg_get(cfg, "device", "cpu"))
    device = torch.device("cuda" if name in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    model = model.to(device)
    wd = float(_cfg_get(cfg, "weight_decay", 0.0) or 0.0)
    if str(_cfg_get(cfg, "weight_decay_placement", "worker")) == "none":
        wd = 0.0
    seed = int(cfg.seed) if seed is None else seed
    x, y = data.x_train.to(device), data.y_train.to(device)
    return dict(
        sigma2=estimate_sigma2(model, x, y, n_samples=samples, seed=seed),
        L=estimate_L(model, x, y, batch=hvp_batch, weight_decay=wd, seed=seed),
        F0=estimate_F0(model, x, y, f_star=f_star, weight_decay=wd),
        n_train=len(y), weight_decay=wd, device=str(device),
    )


def row_faults(delta: float, m: int) -> int:
    """The Byzantine count a row of fraction delta stands for: round(delta m), at least 1 (c is a
    property of the rule; at delta = 0 it multiplies 0) and at most (m - 1) // 2."""
    return min(max(1, round(delta * m)), max(1, (m - 1) // 2))


def advise_rows(sigma2: float, L: float, F0: float, c: float | None | Callable[[float], float | None], m: int,
                samples_per_epoch: int, epochs: float, deltas: Sequence[float]) -> list[dict]:
    """One row per delta: c, C, B*, best integer B, T, U(B*), B~*, eq. 17. `c` is one value for every
    row or a function of delta (Definition 1's constant depends on the f the rule is set for); rows
    with delta > 0 are skipped where c is None: a non-robust rule has no bound."""
    from common import theory

    rows = []
    for d in deltas:
        c_d = c(d) if callable(c) else c
        if c_d is None and d > 0:
            continue
        cc = 1.0 if c_d is None else c_d  # c multiplies delta = 0: any positive value
        C = epochs * samples_per_epoch * (1.0 - d)
        b = theory.b_star(sigma2, L, F0, cc, d, m, C)
        cand = [k for k in (math.floor(b), math.floor(b) + 1) if k >= 1]
        b_int = min(cand, key=lambda k: theory.U(k, sigma2, L, F0, cc, d, m, C))
        rows.append(dict(
            delta=d, c=c_d, C=C, b_star=b, b_int=b_int, T=theory.T_of(b_int, m, d, C),
            U_star=theory.U_at_b_star(sigma2, L, F0, cc, d, m, C),
            b_tilde=theory.b_tilde_star(sigma2, L, F0, cc, d, m),
            U_tilde=theory.U_tilde_at_b_tilde_star(sigma2, L, F0, cc, d, m, C),
        ))
    return rows


def _frac(d: float) -> str:
    for den in (1, 2, 4, 8, 16, 10, 100):
        if abs(d * den - round(d * den)) < 1e-9:
            num = int(round(d * den))
            return "0" if num == 0 else f"{num}/{den}"
    return f"{d:.4g}"


def format_table(rows: list[dict], shard: int, batch_cfg: int) -> str:
    """The rows as a fixed-width text table."""
    head = (f"{'delta':>7} {'C':>11} {'B*':>10} {'B int':>6} {'T':>9} {'U(B*)':>11} "
            f"{'B~*':>10} {'eq.17':>10} {'c':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = "" if r["b_int"] <= shard else "  (> shard)"
        lines.append(f"{_frac(r['delta']):>7} {r['C']:>11.4g} {r['b_star']:>10.4g} {r['b_int']:>6d} "
                     f"{r['T']:>9.4g} {r['U_star']:>11.4g} {r['b_tilde']:>10.4g} {r['U_tilde']:>10.4g} "
                     f"{'n/a' if r['c'] is None else format(r['c'], '.4g'):>8}{flag}")
    lines.append(f"(configured batch_size = {batch_cfg}; shard size = {shard}; B is per worker)")
    return "\n".join(lines)


def plot(path: str, sigma2: float, L: float, F0: float, m: int, rows: list[dict], batch_cfg: int,
         shard: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common import theory

    hi = max([shard, batch_cfg] + [4 * r["b_star"] for r in rows] + [4 * r["b_tilde"] for r in rows])
    grid = np.logspace(0, math.log10(max(hi, 10.0)), 200)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        d, C = r["delta"], r["C"]
        cc = 1.0 if r["c"] is None else r["c"]
        u = [theory.U(b, sigma2, L, F0, cc, d, m, C) for b in grid]
        line, = axes[0].plot(grid, u, label=f"δ = {_frac(d)}")
        if r["b_star"] >= grid[0]:
            axes[0].plot([r["b_star"]], [r["U_star"]], "o", color=line.get_color())
        ut = [theory.U_tilde(b, sigma2, L, F0, cc, d, m, C) for b in grid]
        axes[1].plot(grid, ut, color=line.get_color(), label=f"δ = {_frac(d)}")
        if r["b_tilde"] >= grid[0]:
            axes[1].plot([r["b_tilde"]], [r["U_tilde"]], "o", color=line.get_color())
    titles = ("ByzSGDm: U(B), eq. 8 (dots: B*, eq. 10)", "ByzSGDnm: RHS of eq. 16 (dots: B~*, Prop. 2)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(batch_cfg, color="grey", ls=":", lw=1, label=f"batch_size = {batch_cfg}")
        ax.axvline(shard, color="grey", ls="--", lw=1, label=f"shard = {shard}")
        ax.set_xlabel("batch size B per worker")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    c_txt = ", ".join(f"{_frac(r['delta'])}: {r['c']:.3g}" for r in rows if r["c"] is not None) or "n/a"
    fig.suptitle(f"σ² = {sigma2:.3g}, L = {L:.3g}, F0 = {F0:.3g}, m = {m}, c per δ ({c_txt})", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_args(args) -> str | None:
    """One line naming the first bad command-line option, or None."""
    if args.c is not None and not (math.isfinite(args.c) and args.c > 0):
        return f"--c={args.c} must be a finite number > 0"
    if args.samples < 2:
        return f"--samples={args.samples} must be >= 2 (a variance needs two samples)"
    if args.hvp_batch < 1:
        return f"--hvp-batch={args.hvp_batch} must be >= 1"
    if not math.isfinite(args.f_star):
        return f"--f-star={args.f_star} must be a finite number"
    from common.config import output_folder_problem

    problem = output_folder_problem(os.path.dirname(os.path.abspath(args.out)))
    if problem or os.path.isdir(args.out):
        return f"--out={args.out!r}: {problem or 'a directory, not a file path'}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        cfg = compose_config(args.overrides)
    except Exception as e:  # hydra's errors (unknown group member, bad override) as one line
        from launch.run import composition_error

        print(f"advise: config error: {composition_error(e)}", file=sys.stderr)
        return 2
    from common.config import ConfigError, byzantine_ranks, check_fields
    from common.estimate import robustness_c

    problem = _check_args(args)
    try:
        check_fields(cfg)  # the run's own field checks: workers, batch_size, epochs, byzantine.*
    except ConfigError as e:
        problem = problem or str(e)
    if problem:
        print(f"advise: {problem}", file=sys.stderr)
        return 2

    m = int(cfg.workers)
    f_cfg = len(byzantine_ranks(cfg))
    f_decl = _cfg_get(cfg, "aggregator.f")
    f_decl = f_cfg if f_decl is None else int(f_decl)
    delta_cfg = f_cfg / m
    try:
        deltas = ([float(eval_frac(s)) for s in args.deltas.split(",")] if args.deltas
                  else list(DEFAULT_DELTAS))
    except (ValueError, ZeroDivisionError):
        print(f"advise: --deltas={args.deltas!r} must be comma-separated numbers", file=sys.stderr)
        return 2
    deltas = sorted({round(d, 12) for d in [*deltas, delta_cfg] if 0.0 <= d < 0.5})
    rule = str(_cfg_get(cfg, "aggregator.name"))
    if args.c is not None:
        c, c_note = args.c, "given with --c"
        c_rows = args.c
    else:
        try:
            c, c_note = robustness_c(rule, m, f_decl)
        except ValueError as e:
            print(f"advise: {e}", file=sys.stderr)
            return 2

        def c_rows(delta: float) -> float | None:
            return robustness_c(rule, m, row_faults(delta, m))[0]

        if c is not None:
            c_note += "; each row's c is the rule's at f = delta m"

    try:
        est = measure(cfg, args.samples, args.hvp_batch, args.f_star, args.seed)
    except Exception as e:  # dataset absent offline, unknown model: one line
        print(f"advise: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}", file=sys.stderr)
        return 2
    shard = est["n_train"] // m
    samples_per_epoch = shard * m
    epochs = float(cfg.epochs)
    rows = advise_rows(est["sigma2"], est["L"], est["F0"], c_rows, m, samples_per_epoch, epochs, deltas)

    pre = list(_cfg_get(cfg, "aggregator.pre", []) or [])
    print(f"config: dataset={cfg.dataset.name} model={cfg.model.name} algorithm={cfg.algorithm.name} "
          f"aggregator={rule}{'+' + '+'.join(map(str, pre)) if pre else ''} workers m={m} "
          f"byzantine={f_cfg} (delta={_frac(delta_cfg)}) epochs={cfg.epochs} batch_size={cfg.batch_size}")
    print(f"sigma^2 = {est['sigma2']:.6g}   (per-sample gradient variance at w0, "
          f"{min(args.samples, est['n_train'])} samples)")
    print(f"L       = {est['L']:.6g}   (|lambda|_max of the Hessian at w0, Lanczos on Hessian-vector "
          f"products, batch {min(args.hvp_batch, est['n_train'])}; "
          f"weight decay {est['weight_decay']:g} included)")
    print(f"F0      = {est['F0']:.6g}   (F(w0) - F*, F* = {args.f_star:g})")
    c_txt = "none" if c is None else f"{c:.6g}"
    print(f"c       = {c_txt}   ({rule} at n={m}, f={f_decl}: {c_note})")
    if pre:
        print(f"note: pre-aggregators {pre} are not reflected in c")
    if str(_cfg_get(cfg, "dataset.partition", "iid")) != "iid":
        print("note: paper A's bounds assume i.i.d. shards; the configured partition is not i.i.d.")
    print(f"budget C = epochs x {samples_per_epoch} samples x (1 - delta)")
    print(format_table(rows, shard, int(cfg.batch_size)))
    here = [r for r in rows if abs(r["delta"] - delta_cfg) < 1e-12 and r["delta"] > 0]
    if here:
        from common import theory

        r, b = here[0], int(cfg.batch_size)
        u = theory.U(b, est["sigma2"], est["L"], est["F0"], r["c"], r["delta"], m, r["C"])
        print(f"at the configured delta = {_frac(delta_cfg)}: U({b}) = {u:.4g}, "
              f"{100 * (u / r['U_star'] - 1):.1f}% above U(B*) = {r['U_star']:.4g} at B* = {r['b_star']:.4g}")
    if c is None:
        print("note: rows with delta > 0 are omitted: the mean has no robustness constant (pass --c)")
    plot(args.out, est["sigma2"], est["L"], est["F0"], m, rows, int(cfg.batch_size), shard)
    print(f"plot: {args.out}")
    return 0


def eval_frac(text: str) -> float:
    """'3/8' or '0.375' -> 0.375."""
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


if __name__ == "__main__":
    sys.exit(main())
