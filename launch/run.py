"""Local entry: `python -m launch.run [hydra overrides]` (and `--multirun` sweeps).

Composes and validates the config in this process, creates the run directory, saves the resolved
config, then starts 1 + m processes through torchrun's launcher API (c10d rendezvous on the loopback
address, `max_restarts` from config). Validation errors print one line and exit non-zero before any
process starts.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import atomic_write
from common.config import ConfigError, check_run_dir
from common.dist import free_port, port_in_use
from launch.node import SHARED_STORE_OFF, errors_dir, read_errors

log = logging.getLogger("byz")
#: absolute, so that hydra finds the tree from `python -m launch.run` and from the `byz-run` script alike
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def prepare(cfg: DictConfig, default_dir: str | None = None) -> str:
    """Validate, pick the run directory and the rendezvous port, save config.yaml; return the run dir."""
    from launch.validate import check_device, check_resume_config, validate

    validate(cfg)
    check_device(cfg, local_ranks=int(cfg.workers) + 1)
    run_dir = str(cfg.run.dir or default_dir or os.path.join("runs", time.strftime("%Y-%m-%d_%H-%M-%S")))
    addr, port = str(cfg.comm.master_addr), int(cfg.comm.master_port)
    try:
        socket.getaddrinfo(addr, None)
    except OSError as e:
        raise ConfigError(f"comm.master_addr={addr!r} does not resolve ({e.strerror or e})") from None
    if port and port_in_use(addr, port):
        raise ConfigError(f"comm.master_port={port} is already in use on {addr}")
    check_run_dir(run_dir)
    cfg.run.dir = os.path.abspath(run_dir)
    check_resume_config(cfg, run_dir)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    return cfg.run.dir


def save_text(path: str, text: str) -> None:
    """Write a small text file atomically (`common.checkpoint.atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def save_config(cfg: DictConfig, path: str) -> None:
    """Write the resolved config atomically."""
    save_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def launch_group(cfg: DictConfig, run_dir: str) -> None:
    """Start 1 + m local processes with torchrun's elastic launcher; restarts resume from checkpoints."""
    import multiprocessing

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from launch.node import run_rank

    # Children fork from a server process that has imported torch and the trainers once: starting
    # 9 ranks costs about a second instead of 9 interpreters importing torch on 2 cores.
    multiprocessing.set_forkserver_preload(["launch.node", "server.trainer", "worker.trainer", "server.hgo",
                                            "worker.hgo"])

    addr = str(cfg.comm.master_addr)
    port = int(cfg.comm.master_port) or free_port(addr)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault(SHARED_STORE_OFF, "1")  # each attempt's ranks meet in a fresh store (launch.node)
    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=int(cfg.workers) + 1,
        run_id=f"byz-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d", rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"timeout": int(cfg.comm.timeout_start_s)}, max_restarts=int(cfg.run.max_restarts),
        monitor_interval=0.2, start_method=os.environ.get("BYZ_START_METHOD", "forkserver"),
    )
    elastic_launch(lc, run_rank)(OmegaConf.to_container(cfg, resolve=True), run_dir)


#: seconds by which a rank killed by a signal (no record of its own; the launcher's whole-second time of
#: noticing it) may follow the earliest recorded error and still count as having failed first
SIGNAL_SLACK_S = 2.0


def failure_line(err: BaseException, records: list[dict] = ()) -> str:
    """One line for FAILED and the terminal: the first failed rank with its error, then the ranks that
    failed after it. `records` are the ranks' own error records of the last attempt
    (`launch.node.read_errors`: microsecond times, so a crashed worker comes before the server that lost
    it; each rank's full error stays in RUN_DIR/errors/); a rank without one is taken from the launcher's
    error record ({"message": ..., "extraInfo": {traceback}}), whose times are whole seconds of when the
    launcher noticed it. Such a rank killed by a signal (a negative exit code: SIGKILL, the OOM killer, a
    segfault) counts as first when it was noticed within SIGNAL_SLACK_S of the earliest record."""
    failures = getattr(err, "failures", None) or {}
    entries = [(r.get("time", 0), r.get("rank", 0), f"{r.get('role')} (rank {r.get('rank')})", r.get("error"))
               for r in records]
    own = {r.get("rank") for r in records}
    first = min((e[0] for e in entries), default=None)
    for rank, f in failures.items():
        if rank in own:
            continue
        msg = f.message
        if isinstance(msg, dict):
            msg = msg.get("message") or json.dumps(msg)[:300]
        lines = [ln.strip() for ln in str(msg or "").splitlines() if ln.strip()]
        when = getattr(f, "timestamp", 0)
        if first is not None and (f.exitcode or 0) < 0 and when <= first + SIGNAL_SLACK_S:
            when = first - 1e-6  # died before the ranks that recorded losing it
        entries.append((when, rank, f"rank {f.local_rank} failed (exit {f.exitcode})",
                        lines[-1] if lines else "no message"))
    if entries:  # the first failure in full; of the later ones, recorded errors by name (RUN_DIR/errors/)
        (_, _, who, error), *later = sorted(entries, key=lambda e: (e[0], e[1]))
        rest = [w if r in own else f"{w}: {e}" for _, r, w, e in later]
        return f"{who}: {error}" + (f" | then: {', '.join(rest)}" if rest else "")
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        run_dir = prepare(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            FAILED_JOBS.append(str(HydraConfig.get().job.num))
            return None
        sys.exit(2)
    failed = os.path.join(run_dir, "FAILED")
    for stale in (failed, os.path.join(run_dir, "summary.json")):  # an earlier attempt's verdict or
        if os.path.exists(stale):  # result: this attempt writes its own (a resumed run rewrites the summary)
            os.remove(stale)
    shutil.rmtree(errors_dir(run_dir), ignore_errors=True)  # and its ranks' error records
    try:
        launch_group(cfg, run_dir)
    except Exception as e:  # noqa: BLE001 - a failed job is reported in one line; a sweep goes on
        # the launcher gives up at attempt max_restarts; any other error (a rendezvous that failed) may
        # come earlier: then the latest attempt that left records
        attempt = int(cfg.run.max_restarts) if getattr(e, "failures", None) else None
        line = failure_line(e, read_errors(run_dir, attempt))
        print(f"error: run failed after {cfg.run.max_restarts} restart(s): {line}", file=sys.stderr)
        try:
            save_text(failed, line + "\n")
        except OSError as err:  # a full disk or a lost run.dir: the line above is the record
            print(f"error: could not write {failed} ({err.strerror or err})", file=sys.stderr)
        if multirun:
            FAILED_JOBS.append(str(HydraConfig.get().job.num))
            return None
        sys.exit(1)
    with open(os.path.join(run_dir, "summary.json")) as fh:
        s = json.load(fh)
    print(f"final test accuracy {s['final_test_accuracy']:.4f} (best {s['best_test_accuracy']:.4f}) after "
          f"{s['rounds_completed']} rounds in {s['wall_seconds']:.1f} s")
    print(f"run directory: {run_dir}")
    print(f"TensorBoard:   tensorboard --logdir {os.path.join(run_dir, 'tb')}")
    return float(s["final_test_accuracy"])


def composition_error(e: Exception) -> str:
    """Hydra's multi-line composition errors as one line naming the field and the choices."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Config search path:" in lines:
        lines = lines[:lines.index("Config search path:")]
    found = re.match(r"In '[^']*': Could not find '([^']+)/([^']+)'", lines[0]) if lines else None
    if found:
        options = [ln for ln in lines[1:] if not ln.startswith("Available options")]
        return f"{found[1]}={found[2]!r} is unknown; choose one of [{', '.join(options)}]"
    group = re.match(r"Config group override must be a string or a list\. Got (float|int|bool)", lines[0]) \
        if lines else None
    if group:  # attack=nan, attack=inf: hydra parsed the option's name as a number
        return ("a config group option was read as a number: quote it, e.g. attack='nan' "
                "(in the shell: \"attack='nan'\")")
    key = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if key:
        return f"{key[1]} is not a configuration field (see conf/config.yaml; new keys need +{key[1]}=...)"
    return "; ".join(lines[:2]) or type(e).__name__


def _probe_jobs(args: list[str]) -> list[list[str]]:
    """Override lists that together use every value of a sweep once: the first job (key=a,b -> key=a,
    also for choice(...) and range(...)), then that job with each further value of one key swapped in,
    so that a typo in any value shows up before the first job starts. Values come from hydra's own
    override parser; glob(...) sweeps need hydra's config loader and are left to hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, items = OverridesParser.create(), []
    for a in args:
        o = parser.parse_overrides([a])[0]
        if not o.is_sweep_override():
            items.append([a])
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - glob(): resolved by hydra against the config groups
            continue
        key = a.partition("=")[0]
        items.append([f"{key}={v}" for v in values])
    first = [alts[0] for alts in items]
    jobs = [first]
    for i, alts in enumerate(items):
        for alt in alts[1:]:
            jobs.append([*first[:i], alt, *first[i + 1:]])
    return jobs


#: sweep jobs refused by validation or failed; a sweep with any exits non-zero
FAILED_JOBS: list[str] = []


def cli(argv: list[str] | None = None) -> None:
    """Check that the overrides compose (one-line errors; for a sweep, every value of its grid, see
    `_probe_jobs`, also through the field checks), then hand over to hydra's main. A sweep exits 1 when
    any job was refused or failed."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("-")]
    sweep = any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)
    if not flags or flags == [a for a in args if a in ("-m", "--multirun")]:
        from launch.node import compose
        from launch.validate import validate

        plain = [a for a in args if not a.startswith("-") and not a.startswith("hydra.")]
        for job in _probe_jobs(plain) if sweep else [plain]:
            try:
                cfg = compose(job)
            except Exception as e:  # noqa: BLE001 - hydra raises several exception types for user errors
                print(f"error: {composition_error(e)}", file=sys.stderr)
                sys.exit(2)
            if sweep:  # every value of the grid passes the field checks before the first job starts
                try:
                    validate(cfg)
                except ConfigError as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.exit(2)
    main()
    if FAILED_JOBS:
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep were refused or failed: {', '.join(FAILED_JOBS)}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
