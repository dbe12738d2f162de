"""One `validate(cfg)` for every entry point: field checks (common.config), then the cross-field checks
that need the role packages: rule preconditions on (n, f), attack names, dataset availability."""
from __future__ import annotations

import inspect
import logging
import math
import os

from omegaconf import DictConfig, OmegaConf, open_dict

from common.config import SEED_MAX, ConfigError, byzantine_ranks, check_fields
from common.data import DatasetUnavailable, load_dataset
from common.dist import P2P_NEEDS_GLOO
from common.models import is_binary
from server.aggregators import AGGREGATORS, PRE_AGGREGATORS, get_aggregator
from worker.attacks import ATTACKS, get_attack


def resolve(cfg: DictConfig) -> None:
    """Fill derived values in place: the declared f of the rule defaults to the number of Byzantine
    workers (byzantine.ranks when given, else byzantine.count)."""
    with open_dict(cfg):
        if cfg.aggregator.get("f") is None:
            cfg.aggregator.f = len(byzantine_ranks(cfg))


def check_params(section: str, cls: type, params: dict) -> None:
    """Each given parameter has the type of its default in `cls`'s constructor (numbers finite unless the
    default is inf): `aggregator.tau=abc` is named here instead of failing inside float()."""
    for key, value in params.items():
        # the first constructor along the class hierarchy that names the parameter (base: lie_length)
        p = next((sig[key] for c in cls.__mro__ if "__init__" in vars(c)
                  for sig in [inspect.signature(c.__init__).parameters] if key in sig), None)
        if p is None or p.default is inspect.Parameter.empty:
            continue
        default, field = p.default, f"{section}.{key}"
        if default is None:  # optional: the annotation says what a given value must be
            if value is None:
                continue
            note = str(p.annotation)
            default = {"bool": False, "int": 0, "float": 0.0}.get(note.split(" |")[0].strip())
            if default is None:
                continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) \
                and (math.isfinite(value) or math.isinf(default))
            if isinstance(default, int) and ok:
                ok = float(value).is_integer()
            kind = "an integer" if isinstance(default, int) else "a finite number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, (str, int, float)) and not isinstance(value, bool), "a string"
        elif isinstance(default, (list, tuple)):
            ok, kind = isinstance(value, (list, tuple)), "a list"
        else:
            continue
        if not ok:
            raise ConfigError(f"{field}={value!r} must be {kind}")
        if key == "seed" and not 0 <= value <= SEED_MAX:  # seeds feed 64-bit generators
            raise ConfigError(f"{field}={value} must be in [0, {SEED_MAX}]")


def _rule_params(agg: dict) -> None:
    """Types of the rule's parameters and of each pre-aggregator's (`aggregator.pre[i].key`)."""
    name, pre = agg.get("name"), agg.get("pre") or []
    if isinstance(pre, (str, bytes)) or not isinstance(pre, (list, tuple)):
        raise ConfigError(f"aggregator.pre={pre!r} must be a list, e.g. 'aggregator.pre=[nnm]' (quoted in the shell)")
    if name in AGGREGATORS:
        check_params("aggregator", AGGREGATORS[name].cls,
                     {k: v for k, v in agg.items() if k not in ("name", "f", "pre")})
    names = sorted(PRE_AGGREGATORS)
    for i, item in enumerate(pre):
        pname = item.get("name") if isinstance(item, dict) else item
        if not isinstance(pname, str) or pname not in PRE_AGGREGATORS:
            raise ConfigError(f"aggregator.pre[{i}]={item!r} must be a pre-aggregator name {names} or "
                              f"{{name: ..., parameter: value}}")
        if isinstance(item, dict):
            params = {k: v for k, v in item.items() if k != "name"}
            cls = PRE_AGGREGATORS[pname].cls
            takes = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.name not in ("self", "n", "f") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            unknown = sorted(set(params) - set(takes))
            if unknown:
                raise ConfigError(f"aggregator.pre[{i}] (pre-aggregator '{pname}') has no parameter(s) {unknown}; "
                                  f"it takes {takes}")
            check_params(f"aggregator.pre[{i}]", cls, params)


def check_device(cfg: DictConfig, local_ranks: int = 1) -> None:
    """On the machine that starts the ranks: device=cuda needs a visible GPU, comm.backend=nccl GPUs,
    one for each of the `local_ranks` ranks started here. (Not part of `validate`: a GPU preset
    validates anywhere, and is checked where it runs.)"""
    import torch

    if cfg.device == "cpu" and cfg.comm.backend != "nccl":
        return
    # ask NVML, not the CUDA driver: the launcher may fork the ranks afterwards (BYZ_START_METHOD=fork)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    gpu = torch.cuda.is_available()
    if cfg.device == "cuda" and not gpu:
        raise ConfigError("device=cuda but torch sees no CUDA device on this machine; use device=cpu or auto")
    if cfg.comm.backend == "nccl" and (cfg.device == "cpu" or not gpu):
        raise ConfigError("comm.backend=nccl needs device=cuda and one GPU per rank; use comm.backend=gloo or auto")
    if cfg.comm.backend == "nccl" and torch.cuda.device_count() < local_ranks:
        raise ConfigError(f"comm.backend=nccl needs one GPU per rank: {local_ranks} ranks here, "
                          f"{torch.cuda.device_count()} GPU(s); use comm.backend=gloo or auto")


def check_model(cfg: DictConfig) -> None:
    """Build the model once for the dataset's input shape: its options and the shape must fit."""
    from common.config import INPUT_SHAPES, NUM_CLASSES, model_kwargs
    from common.models import build_model

    if cfg.dataset.name == "synthetic":
        shape, classes = tuple(cfg.dataset.shape), int(cfg.dataset.num_classes)
    else:
        shape, classes = INPUT_SHAPES[cfg.dataset.name], NUM_CLASSES[cfg.dataset.name]
    kw = model_kwargs(cfg)
    try:
        build_model(cfg.model.name, shape, classes, **kw)
    except (ValueError, TypeError, RuntimeError) as e:
        opts = "".join(f" model.{k}={v}" for k, v in kw.items())
        raise ConfigError(f"model={cfg.model.name}{opts} on dataset={cfg.dataset.name} (inputs {shape}): "
                          f"{str(e).splitlines()[0]}") from None


def validate(cfg: DictConfig, check_data: bool = True) -> None:
    """Raise ConfigError with one line naming the field and the limit."""
    check_fields(cfg)
    if cfg.comm.backend == "nccl" and cfg.comm.pattern == "p2p":
        raise ConfigError(P2P_NEEDS_GLOO)
    resolve(cfg)
    agg = OmegaConf.to_container(cfg.aggregator, resolve=True)
    _rule_params(agg)
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
    if aname in ATTACKS:
        check_params("attack", ATTACKS[aname], att)
    quiet = logging.getLogger("worker.attacks")  # what an attack logs when it runs, not while checked
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        attack = get_attack(aname, **att)
        n, f_true = int(cfg.workers), len(byzantine_ranks(cfg))
        if f_true:  # with no Byzantine worker the attack never runs
            attack.check(n, f_true, known=n - f_true if knowledge == "omniscient" else f_true)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    finally:
        quiet.setLevel(level)
    check_model(cfg)
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
    from common.data import smallest_shard
    from common.hgo import is_hgo, parse_tau, task_labels
    from worker.profiles import RATE_TABLES, SCENARIOS

    binary = cfg.model.get("binary")
    if is_binary(binary):
        if not is_hgo(cfg) or cfg.model.name != "logreg":
            raise ConfigError(f"model.binary={binary!r} needs model=logreg and algorithm=hgo or sgd")
        try:
            task_labels(torch.zeros(1, dtype=torch.int64), binary)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        from common.config import NUM_CLASSES

        classes = NUM_CLASSES.get(cfg.dataset.name) or int(cfg.dataset.get("num_classes", 10))
        if str(binary) != "even_odd" and (isinstance(binary, bool) or not isinstance(binary, int)
                                          or not 0 <= binary < classes):
            raise ConfigError(f"model.binary={binary!r} must be even_odd or a class index in [0, {classes - 1}]")
    if not is_hgo(cfg):
        return
    if cfg.algorithm.get("normalize"):
        raise ConfigError(f"algorithm.normalize=true is ByzSGDnm's; algorithm={cfg.algorithm.name} updates with the "
                          f"aggregate itself (paper B, Alg. 1 line 13): set algorithm.normalize=false")
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (value <= lo if strict else value < lo):
            raise ConfigError(f"hgo.{key}={value!r} must be a finite number {'>' if strict else '>='} {lo}")
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
    stragglers = hg.get("stragglers") or []
    if isinstance(stragglers, (str, int, float)):
        raise ConfigError(f"hgo.stragglers={stragglers!r} must be a list of worker indices, e.g. "
                          f"'hgo.stragglers=[2]' (quoted in the shell)")
    for k in list(stragglers):
        integer("stragglers[]", k, 1, m)
    if len(set(stragglers)) != len(stragglers):
        raise ConfigError(f"hgo.stragglers={list(stragglers)} names a worker twice; list each straggler once")
    if cfg.log.get("oracle"):
        raise ConfigError("log.oracle=true compares whole-vector aggregates with the honest mean; "
                          f"algorithm={cfg.algorithm.name} aggregates blocks of coordinates: set log.oracle=false")
    sizes = hg.get("batch_sizes")
    if sizes is None:
        sizes = [int(cfg.batch_size)] * m
    else:
        if isinstance(sizes, (str, int, float)):
            raise ConfigError(f"hgo.batch_sizes={sizes!r} must be a list with one batch size per worker")
        sizes = list(sizes)
        if len(sizes) != m:
            raise ConfigError(f"hgo.batch_sizes has {len(sizes)} entries; it needs one per worker ({m})")
        for s in sizes:
            integer("batch_sizes[]", s, 1)
    kind = cfg.dataset.partition  # the smallest shard the partition cuts (shards: pieces differ by a few)
    shard = smallest_shard(kind, train_size(cfg), m, int(cfg.seed), int(cfg.dataset.classes_per_worker))
    if max(sizes) > shard:
        raise ConfigError(f"batch size {max(sizes)} exceeds the shard size {shard} "
                          f"({train_size(cfg)} training samples / {m} workers, partition {kind})")
    if cfg.model.name == "resnet20" and cfg.model.get("norm", "bn") == "bn":
        raise ConfigError("HGO aggregates parameters only: model=resnet20 needs model.norm=gn (no BatchNorm)")
    att = OmegaConf.to_container(cfg.attack, resolve=True)
    aname = att.pop("name")
    att.pop("knowledge", None)
    attack = get_attack(aname, **att)
    byz = len(byzantine_ranks(cfg))  # the roster: explicit byzantine.ranks or byzantine.count
    if hg.transport == "store" and attack.needs_honest and byz > 0:
        raise ConfigError(f"attack '{aname}' needs the honest vectors (a worker all-gather that couples the "
                          f"workers' rounds); use hgo.transport=collective")
    try:  # each round, between 1 and min(count, q) Byzantine workers may be among the q selected
        for fs in range(1, min(byz, q) + 1):
            attack.check(q, fs)
    except ValueError as e:
        raise ConfigError(f"{e} (HGO: n = hgo.q = {q})") from None
    with open_dict(cfg):
        cfg.hgo.q, cfg.hgo.v = q, v


#: keys (and sections) a resumed run may change: length, logging, checkpoints, transport, drills, speed
#: options, where the data lives
RESUMABLE_CHANGES = ("epochs", "max_rounds", "eval_every", "log", "checkpoint", "comm", "run", "fault", "device",
                     "perf", "hgo.rounds", "hgo.eval_every", "dataset.root", "dataset.download")


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check_resume_config(cfg: DictConfig, run_dir: str) -> None:
    """A run directory that holds a run (a checkpoint, metrics.jsonl or summary.json beside its config.yaml)
    takes only the configuration it was started with (apart from RESUMABLE_CHANGES): another model, rule,
    attack or seed would load a checkpoint that does not belong to it, or overwrite the metrics of another
    run. Raises ConfigError naming the first differing field; writes nothing."""
    from common import checkpoint

    saved = os.path.join(run_dir, "config.yaml")
    try:
        rnd = checkpoint.latest_round(run_dir)
    except RuntimeError as e:  # a damaged manifest: say so instead of starting the run over
        raise ConfigError(f"run.dir={run_dir}: {e}") from None
    ran = rnd is not None or any(os.path.exists(os.path.join(run_dir, f)) for f in ("metrics.jsonl", "summary.json"))
    if not ran or not os.path.isfile(saved):
        return
    try:
        old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    except Exception as e:  # noqa: BLE001 - a damaged file: yaml and omegaconf raise several types
        raise ConfigError(f"run.dir={run_dir} holds a run whose config.yaml is unreadable "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); choose a new run.dir") from None
    new = _flat(OmegaConf.to_container(cfg, resolve=True))

    def may_change(key: str) -> bool:
        return any(key == c or key.startswith(c + ".") for c in RESUMABLE_CHANGES)

    diff = sorted(k for k in old.keys() | new.keys() if not may_change(k) and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        held = f"checkpointed at round {rnd}" if rnd is not None else "(not checkpointed)"
        raise ConfigError(f"run.dir={run_dir} holds a run {held} with {k}={old.get(k)!r}, not {new.get(k)!r}"
                          f"{more}: rerun it with its settings or choose a new run.dir")
    limit = new.get("max_rounds")
    if rnd is not None and isinstance(limit, int) and limit < rnd:  # a run cannot go back to an earlier round
        raise ConfigError(f"max_rounds={limit} is below round {rnd}, where run.dir={run_dir} is checkpointed: "
                          f"a resumed run can only go on (raise max_rounds or choose a new run.dir)")
