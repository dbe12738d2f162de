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
import sys
import time
import uuid

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError, check_run_dir
from common.dist import free_port, port_in_use

log = logging.getLogger("byz")
#: absolute, so that hydra finds the tree from `python -m launch.run` and from the `byz-run` script alike
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def prepare(cfg: DictConfig, default_dir: str | None = None) -> str:
    """Validate, pick the run directory and the rendezvous port, save config.yaml; return the run dir."""
    from launch.validate import check_resume_config, validate

    validate(cfg)
    run_dir = str(cfg.run.dir or default_dir or os.path.join("runs", time.strftime("%Y-%m-%d_%H-%M-%S")))
    check_run_dir(run_dir)
    port = int(cfg.comm.master_port)
    if port and port_in_use(str(cfg.comm.master_addr), port):
        raise ConfigError(f"comm.master_port={port} is already in use on {cfg.comm.master_addr}")
    cfg.run.dir = os.path.abspath(run_dir)
    check_resume_config(cfg, run_dir)
    OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
    return cfg.run.dir


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
    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=int(cfg.workers) + 1,
        run_id=f"byz-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d", rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"timeout": int(cfg.comm.timeout_start_s)}, max_restarts=int(cfg.run.max_restarts),
        monitor_interval=0.2, start_method=os.environ.get("BYZ_START_METHOD", "forkserver"),
    )
    elastic_launch(lc, run_rank)(OmegaConf.to_container(cfg, resolve=True), run_dir)


def failure_line(err: BaseException) -> str:
    failures = getattr(err, "failures", None) or {}
    for _, f in sorted(failures.items()):
        msg = f.message if isinstance(f.message, str) else json.dumps(f.message)[:300]
        return f"rank {f.local_rank} failed (exit {f.exitcode}): {msg.strip().splitlines()[-1] if msg else ''}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        run_dir = prepare(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    try:
        launch_group(cfg, run_dir)
    except Exception as e:  # noqa: BLE001 - a failed job is reported in one line; a sweep goes on
        line = failure_line(e)
        print(f"error: run failed after {cfg.run.max_restarts} restart(s): {line}", file=sys.stderr)
        with open(os.path.join(run_dir, "FAILED"), "w") as fh:
            fh.write(line + "\n")
        if multirun:
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
    key = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if key:
        return f"{key[1]} is not a configuration field (see conf/config.yaml; new keys need +{key[1]}=...)"
    return "; ".join(lines[:2]) or type(e).__name__


def cli(argv: list[str] | None = None) -> None:
    """Check that plain overrides compose (one-line errors), then hand over to hydra's main."""
    args = list(sys.argv[1:] if argv is None else argv)
    plain = [a for a in args if not a.startswith("hydra.")]
    if not any(a.startswith("-") for a in args) and not any("," in a for a in plain):
        from launch.node import compose

        try:
            compose(plain)
        except Exception as e:  # noqa: BLE001 - hydra raises several exception types for user errors
            print(f"error: {composition_error(e)}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
