"""Field-level validation of the run configuration (one clear line per error, naming field and limit).

Cross-field checks that need the role packages (rule preconditions, attack names) live in
`launch.validate`, which calls `check_fields` first; `launch.run` and `launch.node` both call it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .data import DATASETS, smallest_shard
from .models import MODELS
from .schedule import SCHEDULES

ALGORITHMS = ("byzsgdm", "byzsgdnm", "hgo", "sgd")
TRAIN_SIZES = {"mnist5k": 4000, "digits": 1437, "mnist": 60000, "cifar10": 50000}
NUM_CLASSES = {"mnist5k": 10, "digits": 10, "mnist": 10, "cifar10": 10}
INPUT_SHAPES = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
FAULTS = ("none", "kill", "stop", "raise")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: seeds feed torch.manual_seed and numpy's generators (64-bit); timeouts become C ints of milliseconds
SEED_MAX, TIMEOUT_MAX_S = 2**63 - 1, 10**6


class ConfigError(ValueError):
    """A user error in the configuration; printed as one line, never with a traceback."""


def _get(cfg: Mapping, path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return node


def _int(cfg, path, lo=None, hi=None, optional=False):
    v = _get(cfg, path)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{path}={v!r} must be an integer")
    if lo is not None and v < lo:
        raise ConfigError(f"{path}={v} must be >= {lo}")
    if hi is not None and v > hi:
        raise ConfigError(f"{path}={v} must be <= {hi}")
    return v


def _num(cfg, path, lo=None, hi=None, lo_open=False, hi_open=False, optional=False, allow_inf=False):
    v = _get(cfg, path)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}={v!r} must be a number")
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{path}={v} must be a finite number")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(f"{path}={v} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(f"{path}={v} must be {'<' if hi_open else '<='} {hi}")
    return v


def _bool(cfg, path):
    v = _get(cfg, path)
    if not isinstance(v, bool):
        raise ConfigError(f"{path}={v!r} must be true or false")
    return v


def _int_list(cfg, path, lo=None, hi=None, increasing=False):
    """A list of integers in [lo, hi] (strictly increasing if asked)."""
    v = _get(cfg, path)
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ConfigError(f"{path}={v!r} must be a list of integers, e.g. {path}=[1,2] (quoted in the shell)")
    v = list(v)
    limit = " ".join(x for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if x)
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or (lo is not None and x < lo) \
                or (hi is not None and x > hi):
            raise ConfigError(f"{path}={v} must hold integers{' ' + limit if limit else ''}")
    if increasing and any(b <= a for a, b in zip(v, v[1:])):
        raise ConfigError(f"{path}={v} must be strictly increasing")
    return v


def _choice(cfg, path, choices):
    v = _get(cfg, path)
    if v not in choices:
        raise ConfigError(f"{path}={v!r} is unknown; choose one of {list(choices)}")
    return v


def train_size(cfg: Mapping) -> int:
    name = _get(cfg, "dataset.name")
    if name == "synthetic":
        return int(_get(cfg, "dataset.n_train", 4000))
    return TRAIN_SIZES[name]


def byzantine_ranks(cfg: Mapping) -> list[int]:
    """Worker indices (1..m) that behave Byzantine: explicit `byzantine.ranks`, else `byzantine.count`
    placed on the last ranks or at random with the seed. Only workers and evaluation helpers call this."""
    import random

    m = int(cfg["workers"])
    ranks = _get(cfg, "byzantine.ranks")
    if ranks is not None:
        return sorted(int(r) for r in ranks)
    count = int(_get(cfg, "byzantine.count", 0))
    if _get(cfg, "byzantine.placement", "last") == "random":
        return sorted(random.Random(int(cfg["seed"])).sample(range(1, m + 1), count))
    return list(range(m - count + 1, m + 1))


def check_fields(cfg: Mapping) -> None:
    """Validate every field on its own and the simple cross-field limits; raise ConfigError."""
    m = _int(cfg, "workers", 1, 4096)
    count = _int(cfg, "byzantine.count", 0)
    if count >= m:
        raise ConfigError(f"byzantine.count={count} must be < workers={m} (at least one honest worker)")
    if _get(cfg, "byzantine.ranks") is not None:
        try:
            ranks = _int_list(cfg, "byzantine.ranks", 1, m)
        except ConfigError:
            raise ConfigError(f"byzantine.ranks={_get(cfg, 'byzantine.ranks')!r} must be a list of worker "
                              f"indices in [1, {m}], e.g. 'byzantine.ranks=[2,5]'") from None
        if len(set(ranks)) != len(ranks) or len(ranks) >= m:
            raise ConfigError(f"byzantine.ranks={ranks} must be distinct and fewer than workers={m}")
    _choice(cfg, "byzantine.placement", ("last", "random"))
    _choice(cfg, "algorithm.name", ALGORITHMS)
    if _get(cfg, "algorithm.normalize") is not None:
        _bool(cfg, "algorithm.normalize")
    if _get(cfg, "algorithm.eps") is not None:
        _num(cfg, "algorithm.eps", 0, lo_open=True)
    _choice(cfg, "dataset.name", DATASETS)
    root = _get(cfg, "dataset.root")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"dataset.root={root!r} must be a path")
    _choice(cfg, "dataset.partition", ("iid", "dirichlet", "shards"))
    _num(cfg, "dataset.alpha", 0, lo_open=True)
    if _get(cfg, "dataset.name") == "synthetic":
        _int(cfg, "dataset.num_classes", 2)
        _int(cfg, "dataset.n_train", 1)
        _int(cfg, "dataset.n_test", 1)
        _int_list(cfg, "dataset.shape", 1)
    # shards: pieces per worker; more pieces than samples per worker cannot be cut
    _int(cfg, "dataset.classes_per_worker", 1, max(1, train_size(cfg) // m))
    for key in ("dataset.augment", "dataset.download"):
        if _get(cfg, key) is not None:
            _bool(cfg, key)
    _choice(cfg, "model.name", MODELS)
    if _get(cfg, "model.hidden") is not None:
        if not _int_list(cfg, "model.hidden", 1):
            raise ConfigError("model.hidden=[] must name at least one hidden width")
    b = _int(cfg, "batch_size", 1)
    _int(cfg, "epochs", 1)
    _int(cfg, "max_rounds", 1, optional=True)
    _num(cfg, "lr", 0, lo_open=True)
    _num(cfg, "momentum", 0, 1, hi_open=True)
    _num(cfg, "weight_decay", 0)
    _choice(cfg, "weight_decay_placement", ("worker", "server", "none"))
    _choice(cfg, "schedule.name", SCHEDULES)
    _num(cfg, "schedule.gamma", 0, lo_open=True)
    if _get(cfg, "schedule.milestones") is not None:
        _int_list(cfg, "schedule.milestones", 0, increasing=True)
    _int(cfg, "seed", 0, SEED_MAX)
    _choice(cfg, "device", ("cpu", "cuda", "auto"))
    _int(cfg, "eval_every", 1)
    _choice(cfg, "comm.backend", ("auto", "gloo", "nccl"))
    _choice(cfg, "comm.pattern", ("auto", "p2p", "collective"))
    addr = _get(cfg, "comm.master_addr")
    if not isinstance(addr, str) or not addr.strip():
        raise ConfigError(f"comm.master_addr={addr!r} must be a host name or an IP address")
    _int(cfg, "comm.master_port", 0, 65535)
    _num(cfg, "comm.timeout_start_s", 1, TIMEOUT_MAX_S)
    _num(cfg, "comm.timeout_round_s", 1, TIMEOUT_MAX_S)
    run_dir = _get(cfg, "run.dir")
    if run_dir is not None and not isinstance(run_dir, str):
        raise ConfigError(f"run.dir={run_dir!r} must be a path")
    _int(cfg, "run.max_restarts", 0)
    _int(cfg, "checkpoint.every", 0)
    _int(cfg, "checkpoint.keep", 1)
    _int(cfg, "log.every", 1)
    for key in ("log.tensorboard", "log.progress", "log.oracle"):
        _bool(cfg, key)
    level = _get(cfg, "log.level")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log.level={level!r} is unknown; choose one of {list(LOG_LEVELS)}")
    _num(cfg, "filter.max_abs", 0, lo_open=True, optional=True, allow_inf=True)
    _choice(cfg, "fault.kind", FAULTS)
    _int(cfg, "fault.rank", 0, m)
    fault_round = _int(cfg, "fault.round", 0)
    limit = _get(cfg, "max_rounds")
    if _get(cfg, "fault.kind") != "none" and isinstance(limit, int) and fault_round >= limit:
        raise ConfigError(f"fault.round={fault_round} is never reached: rounds are 0..{limit - 1} (max_rounds={limit})")
    if _get(cfg, "perf") is not None:
        _choice(cfg, "perf.autocast", ("none", "bf16"))
        _bool(cfg, "perf.channels_last")
        _bool(cfg, "perf.worker_batch")
        slots = _get(cfg, "perf.compute_slots", "auto")
        if slots != "auto" and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 0):
            raise ConfigError(f"perf.compute_slots={slots!r} must be auto or an integer >= 0 (0: off)")
    if _get(cfg, "algorithm.name") in ("byzsgdm", "byzsgdnm"):
        kind = _get(cfg, "dataset.partition")
        shard = smallest_shard(kind, train_size(cfg), m, int(_get(cfg, "seed", 0)),
                               int(_get(cfg, "dataset.classes_per_worker", 2)))
        if b > shard:
            raise ConfigError(f"batch_size={b} exceeds the shard size {shard} "
                              f"({train_size(cfg)} training samples / {m} workers, partition {kind})")


def output_folder_problem(folder: str) -> str | None:
    """Why files cannot be written into `folder` (created if missing), or None."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return f"cannot create {folder!r} ({e.strerror})"
    return None if os.access(folder, os.W_OK) else f"{folder!r} is not writable"


def check_run_dir(path: str) -> None:
    """The run directory must be creatable and writable."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")  # ranks of one node probe at once
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"run.dir={path!r} is not writable ({e.strerror})") from None


def model_kwargs(cfg: Mapping) -> dict:
    """The model group's options other than its name (e.g. hidden, shortcut, norm)."""
    return {k: v for k, v in cfg["model"].items() if k != "name"}


def dataset_kwargs(cfg: Mapping) -> dict:
    """Extra loader arguments (only the synthetic set has any)."""
    ds = cfg["dataset"]
    if ds["name"] != "synthetic":
        return {}
    return {"shape": tuple(ds["shape"]), "num_classes": int(ds["num_classes"]),
            "n_train": int(ds["n_train"]), "n_test": int(ds["n_test"])}
