"""One rank of a run: `torchrun ... -m launch.node [hydra overrides]` (cluster entry), and the function
that `launch.run` starts on every local rank.

Every rank composes the same config; the run directory must come from config (`run.dir=...`), never
from a per-process timestamp. Only the server writes the run's outputs (config, metrics, summary,
TensorBoard); every rank writes its own checkpoint file.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.api import SignalException

from common import checkpoint
from common import dist as cdist
from common.config import ConfigError, byzantine_ranks, check_run_dir
from common.hgo import is_hgo

log = logging.getLogger("byz")
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def server_view(cfg: DictConfig) -> DictConfig:
    """The config the server gets: without the Byzantine roster and the attack (it must not know them)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("byzantine", None)
    c.pop("attack", None)
    view = OmegaConf.create(c)
    OmegaConf.set_struct(view, True)  # reading a missing key (the roster) raises instead of returning None
    return view


def run_summary_config(cfg: DictConfig) -> dict:
    """Key config values for summary.json (written on the server rank by launch, which may know them)."""
    from worker.attacks import AttackContext, get_attack

    att = OmegaConf.to_container(cfg.attack, resolve=True)
    name, knowledge = att.pop("name"), att.pop("knowledge", "omniscient")
    attack = get_attack(name, **att)
    m, byz = int(cfg.workers), byzantine_ranks(cfg)
    hgo = is_hgo(cfg)
    resolved = {}
    try:  # the attack's resolved parameters (e.g. ALIE's z) for this (m, f)
        ctx = AttackContext(n=m, f=len(byz), aggregator=OmegaConf.to_container(cfg.aggregator, resolve=True),
                            declared_f=int(cfg.aggregator.f))
        resolved = attack.resolved(ctx)
    except Exception as e:  # noqa: BLE001 - a summary detail must never fail the run
        resolved = {"error": str(e)}
    return {"attack": name, "attack_knowledge": knowledge, "attack_params": resolved,
            "byzantine_count": len(byz), "byzantine_fraction": len(byz) / m, "workers": m,
            "batch_size": int(cfg.batch_size), "lr": float(cfg.lr), "epochs": int(cfg.epochs),
            "momentum": 0.0 if hgo else float(cfg.momentum),  # paper B's update has no momentum
            "weight_decay": float(cfg.weight_decay),
            "weight_decay_placement": cfg.weight_decay_placement, "schedule": cfg.schedule.name,
            "dataset": cfg.dataset.name, "partition": cfg.dataset.partition, "model": cfg.model.name,
            "seed": int(cfg.seed)}


def _setup_logging(is_server: bool, level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper() if is_server else "WARNING", logging.INFO),
                        format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S", force=True)


#: torchrun agents otherwise share the first rendezvous round's store with their ranks for the whole run:
#: an agent that is replaced alone (a restarted container) then waits for a key of its round that no
#: other agent writes, and the ranks' per-attempt prefix follows each agent's own restart count. With it
#: set in every agent's environment (the image and `launch.run` do), each attempt's rank 0 hosts a fresh
#: store on a port announced in that rendezvous round.
SHARED_STORE_OFF = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def errors_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "errors")


def record_error(run_dir: str, rank: int, role: str, exc: BaseException, env=os.environ) -> None:
    """Write this rank's error to RUN_DIR/errors/rank_<rank>.json with a wall-clock time to the microsecond
    and the launcher's attempt number: the launcher itself keeps whole seconds and may report only the
    server that lost a crashed worker, so these records name the rank that failed first."""
    text = str(exc).strip().splitlines()
    rec = {"time": time.time(), "attempt": int(env.get("TORCHELASTIC_RESTART_COUNT", 0) or 0), "rank": rank,
           "role": role, "error": f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__}
    body = json.dumps(rec).encode()
    try:
        checkpoint.atomic_write(os.path.join(errors_dir(run_dir), f"rank_{rank}.json"), lambda fh: fh.write(body))
    except OSError:  # a full disk or a lost run.dir: the launcher still reports the error
        pass


def read_errors(run_dir: str, attempt: int | None = None) -> list[dict]:
    """The ranks' error records of launcher attempt `attempt` (None: the latest attempt that left any;
    earlier attempts' are stale), earliest first."""
    recs = []
    folder = errors_dir(run_dir)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, name)) as fh:
                rec = json.load(fh)
            if isinstance(rec, dict) and isinstance(rec.get("attempt"), int):
                recs.append(rec)
        except (OSError, ValueError):
            continue
    if attempt is None and recs:
        attempt = max(r["attempt"] for r in recs)
    return sorted((r for r in recs if r["attempt"] == attempt), key=lambda r: (r.get("time", 0), r.get("rank", 0)))


def run_rank(container: dict, run_dir: str) -> None:
    """Entry of one process: join the group, take the server or worker role, train. An error is recorded
    in RUN_DIR/errors/ (`record_error`) before it propagates to the launcher."""
    who = {"rank": int(os.environ.get("RANK", 0)), "role": "rank before its role"}
    try:
        _run_rank(container, run_dir, who)
    except BaseException as e:  # recorded before the group's teardown, which may block or be cut short
        if not isinstance(e, SignalException):  # the launcher stopping this rank because another failed
            record_error(run_dir, who["rank"], who["role"], e)
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run_rank(container: dict, run_dir: str, who: dict) -> None:
    torch.set_num_threads(1)
    cfg = OmegaConf.create(container)
    topo = cdist.init(cfg)
    who["role"] = "server" if topo.is_server else f"worker {topo.worker_index}"
    _setup_logging(topo.is_server, str(cfg.log.level))
    if topo.is_server and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log.warning("the torchrun agents share their rendezvous store: an agent replaced alone (a restarted "
                    "container) cannot rejoin this run; set %s=1 in every agent's environment", SHARED_STORE_OFF)
    hgo = is_hgo(cfg)  # paper B's partial-gradient mode (server/hgo.py, worker/hgo.py)
    if topo.is_server:
        from server.trainer import Server

        os.makedirs(run_dir, exist_ok=True)
        cfg_path = os.path.join(run_dir, "config.yaml")
        if not os.path.exists(cfg_path):
            from launch.run import save_config

            save_config(cfg, cfg_path)
        extra = run_summary_config(cfg)
        if hgo:
            from server.hgo import HGOServer

            HGOServer(server_view(cfg), topo, run_dir).run({"config": extra})
        else:
            server = Server(server_view(cfg), topo, run_dir, observers=_observers(cfg))
            server.run({"config": extra})
    else:
        from worker.trainer import Worker

        byz = byzantine_ranks(cfg)
        cdist.join_colluders(topo, byz, float(cfg.comm.timeout_round_s))
        if hgo:
            from worker.hgo import HGOWorker

            HGOWorker(cfg, topo, run_dir, byz).run()
        else:
            Worker(cfg, topo, run_dir, byz).run()


def _observers(cfg: DictConfig) -> list:
    """Evaluation-only helpers handed to the server loop (they may know the roster; the loop does not)."""
    if not cfg.log.get("oracle", False):
        return []
    from launch.oracle import OracleError

    return [OracleError(byzantine_ranks(cfg), int(cfg.workers))]


def _check_experiment(overrides: list[str]) -> None:
    """The experiment group is optional in the defaults list, so hydra skips a name it cannot find (a
    typo would run the default job): refuse it here, worded as hydra's own missing-option error."""
    folder = os.path.join(CONF_DIR, "experiment")
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "experiment" and value not in ("", "null") \
                and not os.path.isfile(os.path.join(folder, f"{value}.yaml")):
            options = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
            raise ValueError(f"In 'config': Could not find 'experiment/{value}'\n\n"
                             f"Available options in 'experiment':\n" + "\n".join(f"\t{x}" for x in options))


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    _check_experiment(overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hcompose(config_name="config", overrides=overrides)


ROLES = ("", "auto", "server", "worker")


def group_problem(cfg: DictConfig, env=os.environ) -> str | None:
    """What makes this rank's torchrun group unfit for the config, or None: a BYZ_ROLE it does not know,
    or a world size other than 1 + workers (the roster, the data split and the summary count `workers`)."""
    role = env.get("BYZ_ROLE", "")
    if role not in ROLES:
        return f"BYZ_ROLE={role!r} is unknown; use server (on the server's node) or worker"
    world = env.get("WORLD_SIZE")
    if world is not None and int(world) != int(cfg.workers) + 1:
        return (f"workers={cfg.workers} but the group has {world} ranks (1 server + {int(world) - 1} workers): "
                f"set workers={int(world) - 1} or start 1 + {cfg.workers} ranks (--nnodes, --nproc_per_node)")
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m launch.node [overrides]` as torchrun's entry on every rank; `--check [overrides]` only
    validates (no process group), to run once before torchrun: a config error then costs no restarts."""
    from launch.validate import check_device, check_resume_config, validate

    overrides = list(sys.argv[1:] if argv is None else argv)
    check_only = bool(overrides) and overrides[0] == "--check"
    overrides = overrides[1:] if check_only else overrides
    try:
        cfg = compose(overrides)
    except Exception as e:  # noqa: BLE001 - hydra raises several exception types for user errors
        from launch.run import composition_error

        print(f"error: {composition_error(e)}", file=sys.stderr)
        return 2
    try:
        validate(cfg)
        if not cfg.run.dir:
            raise ConfigError("run.dir must be set for launch.node (every rank needs the same run directory)")
        check_device(cfg)
        problem = group_problem(cfg)
        if problem:
            raise ConfigError(problem)
        check_run_dir(str(cfg.run.dir))
        check_resume_config(cfg, str(cfg.run.dir))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if check_only:
        print(f"config ok: run.dir={cfg.run.dir}, 1 server + {cfg.workers} workers")
        return 0
    run_rank(OmegaConf.to_container(cfg, resolve=True), str(cfg.run.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
