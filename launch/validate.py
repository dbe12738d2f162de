"""One `validate(cfg)` for every entry point: field checks (common.config), then the cross-field checks
that need the role packages: rule preconditions on (n, f), attack names, dataset availability."""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf, open_dict

from common.config import ConfigError, byzantine_ranks, check_fields
from common.data import DatasetUnavailable, load_dataset
from server.aggregators import get_aggregator
from worker.attacks import get_attack


def resolve(cfg: DictConfig) -> None:
    """Fill derived values in place: the declared f of the rule defaults to the number of Byzantine
    workers (byzantine.ranks when given, else byzantine.count)."""
    with open_dict(cfg):
        if cfg.aggregator.get("f") is None:
            cfg.aggregator.f = len(byzantine_ranks(cfg))


def validate(cfg: DictConfig, check_data: bool = True) -> None:
    """Raise ConfigError with one line naming the field and the limit."""
    check_fields(cfg)
    resolve(cfg)
    agg = OmegaConf.to_container(cfg.aggregator, resolve=True)
    name, f, pre = agg.pop("name"), agg.pop("f"), agg.pop("pre", []) or []
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ConfigError(f"aggregator.f={f!r} must be a non-negative integer")
    try:
        get_aggregator(name, int(cfg.workers), f, pre=pre, **agg)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    att = OmegaConf.to_container(cfg.attack, resolve=True)
    aname, knowledge = att.pop("name"), att.pop("knowledge", "omniscient")
    if knowledge not in ("omniscient", "colluders"):
        raise ConfigError(f"attack.knowledge={knowledge!r} is unknown; choose omniscient or colluders")
    try:
        get_attack(aname, **att).check(int(cfg.workers), len(byzantine_ranks(cfg)))
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    validate_hgo(cfg)
    if check_data and cfg.dataset.name != "synthetic":
        try:  # fails early for an absent offline dataset; warms the cache of the embedded one
            load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download))
        except DatasetUnavailable as e:
            raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------------------- HGO (paper B)

def quorum_for(rule: dict, q: int, f: int) -> int:
    """Default quorum from the declared f: 2f + 1 (1 when f = 0), raised until the rule's (n, f)
    precondition holds on v rows (the shortest segment of a quorum block has v senders)."""
    rule = dict(rule)
    name, pre = rule.pop("name"), rule.pop("pre", []) or []
    rule.pop("f", None)
    for v in range(2 * f + 1 if f > 0 else 1, q + 1):
        try:
            get_aggregator(name, v, f, pre=pre, **rule)
            return v
        except (ValueError, TypeError):
            continue
    raise ConfigError(f"no quorum hgo.v <= hgo.q={q} satisfies aggregator '{name}' with f={f}; raise hgo.q")


def validate_hgo(cfg: DictConfig) -> None:
    """The keys of algorithm=hgo|sgd (ALGORITHMS.md §10); fills hgo.q and hgo.v when they are null.

    q <= m; v <= q; v > f (the declared aggregator.f, never the true count) when f > 0, so that f length
    lies cannot set b_v alone; the rule's precondition on v rows; tau > 0 (a number or inf).
    """
    import math

    import torch

    from common.config import train_size
    from common.hgo import is_hgo, parse_tau, task_labels
    from worker.profiles import RATE_TABLES, SCENARIOS

    binary = cfg.model.get("binary")
    if binary not in (None, False):
        if not is_hgo(cfg) or cfg.model.name != "logreg":
            raise ConfigError(f"model.binary={binary!r} needs model=logreg and algorithm=hgo or sgd")
        try:
            task_labels(torch.zeros(1, dtype=torch.int64), binary)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not is_hgo(cfg):
        return
    hg = cfg.get("hgo")
    if hg is None:
        raise ConfigError(f"algorithm={cfg.algorithm.name} needs the hgo section (conf/algorithm/hgo.yaml)")
    m, f = int(cfg.workers), int(cfg.aggregator.f)

    def integer(key, value, lo, hi=None):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            limit = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ConfigError(f"hgo.{key}={value!r} must be an integer {limit}")
        return value

    def number(key, lo, strict=True):
        value = hg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or (value <= lo if strict else value < lo):
            raise ConfigError(f"hgo.{key}={value!r} must be a number {'>' if strict else '>='} {lo}")
        return value

    q = hg.get("q")
    q = integer("q", math.ceil(0.8 * m) if q is None else q, 1, m)
    try:
        tau = parse_tau(hg.tau)
    except (TypeError, ValueError):
        tau = math.nan
    if not tau > 0:
        raise ConfigError(f"hgo.tau={hg.tau!r} must be a number > 0 or inf")
    rule = OmegaConf.to_container(cfg.aggregator, resolve=True)
    if rule["name"] == "cc":
        raise ConfigError("aggregator=cc keeps a (d,) centre across rounds; HGO aggregates a different block "
                          "each round: choose a stateless rule (cm, tm, meamed, mean, krum, aksel, ...)")
    v = hg.get("v")
    v = quorum_for(rule, q, f) if v is None else integer("v", v, 1, q)
    if f > 0 and v <= f:
        raise ConfigError(f"hgo.v={v} must be > aggregator.f={f}: otherwise f lengths claimed by Byzantine "
                          f"workers could set the quorum block b_v on their own")
    name, pre = rule.pop("name"), rule.pop("pre", []) or []
    rule.pop("f", None)
    try:
        get_aggregator(name, v, f, pre=pre, **rule)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"hgo.v={v} is too small for the rule: the shortest segment of a quorum block has "
                          f"v senders ({e})") from None
    for key, choices in (("scenario", list(SCENARIOS)), ("profiles", ["auto", *RATE_TABLES]),
                         ("rate", ["profile", "measured"]), ("clock", ["logical", "emulated"]),
                         ("transport", ["collective", "store"]), ("shard_sizes", ["equal", "dirichlet"])):
        if hg.get(key) not in choices:
            raise ConfigError(f"hgo.{key}={hg.get(key)!r} is unknown; choose one of {choices}")
    number("time_unit_s", 0)
    number("grace_s", 0, strict=False)
    number("size_alpha", 0)
    number("straggle_s", 0, strict=False)
    integer("eval_every", hg.get("eval_every"), 1)
    if hg.get("rounds") is not None:
        integer("rounds", hg.rounds, 1)
    stragglers = list(hg.get("stragglers") or [])
    for k in stragglers:
        integer("stragglers[]", k, 1, m)
    sizes = hg.get("batch_sizes")
    if sizes is None:
        sizes = [int(cfg.batch_size)] * m
    else:
        sizes = list(sizes)
        if len(sizes) != m:
            raise ConfigError(f"hgo.batch_sizes has {len(sizes)} entries; it needs one per worker ({m})")
        for s in sizes:
            integer("batch_sizes[]", s, 1)
    shard = train_size(cfg) // m
    if max(sizes) > shard:
        raise ConfigError(f"batch size {max(sizes)} exceeds the shard size {shard} "
                          f"({train_size(cfg)} training samples / {m} workers)")
    if cfg.model.name == "resnet20" and cfg.model.get("norm", "bn") == "bn":
        raise ConfigError("HGO aggregates parameters only: model=resnet20 needs model.norm=gn (no BatchNorm)")
    att = OmegaConf.to_container(cfg.attack, resolve=True)
    aname = att.pop("name")
    att.pop("knowledge", None)
    attack = get_attack(aname, **att)
    if hg.transport == "store" and attack.needs_honest and int(cfg.byzantine.count) > 0:
        raise ConfigError(f"attack '{aname}' needs the honest vectors (a worker all-gather that couples the "
                          f"workers' rounds); use hgo.transport=collective")
    try:  # each round, between 1 and min(count, q) Byzantine workers may be among the q selected
        for fs in range(1, min(int(cfg.byzantine.count), q) + 1):
            attack.check(q, fs)
    except ValueError as e:
        raise ConfigError(f"{e} (HGO: n = hgo.q = {q})") from None
    with open_dict(cfg):
        cfg.hgo.q, cfg.hgo.v = q, v


#: top-level keys a resumed run may change: length, logging, checkpoints, transport, drills, speed options
RESUMABLE_CHANGES = ("epochs", "max_rounds", "eval_every", "log", "checkpoint", "comm", "run", "fault", "device",
                     "perf")


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check_resume_config(cfg: DictConfig, run_dir: str) -> None:
    """A run directory with a consistent checkpoint resumes only with the configuration it was started
    with (apart from RESUMABLE_CHANGES): another model, rule, attack or seed would load state that does
    not belong to it. Raises ConfigError naming the first differing field; writes nothing."""
    from common import checkpoint

    saved = os.path.join(run_dir, "config.yaml")
    rnd = checkpoint.latest_round(run_dir)
    if rnd is None or not os.path.isfile(saved):
        return
    old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    diff = sorted(k for k in old.keys() | new.keys()
                  if k.split(".")[0] not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise ConfigError(f"run.dir={run_dir} holds a run checkpointed at round {rnd} with {k}={old.get(k)!r}, "
                          f"not {new.get(k)!r}{more}: resume with its settings or choose a new run.dir")
