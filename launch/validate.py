"""One `validate(cfg)` for every entry point: field checks (common.config), then the cross-field checks
that need the role packages: rule preconditions on (n, f), attack names, dataset availability."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from common.config import ConfigError, check_fields
from common.data import DatasetUnavailable, load_dataset
from server.aggregators import get_aggregator
from worker.attacks import get_attack


def resolve(cfg: DictConfig) -> None:
    """Fill derived values in place: the declared f of the rule defaults to byzantine.count."""
    with open_dict(cfg):
        if cfg.aggregator.get("f") is None:
            cfg.aggregator.f = int(cfg.byzantine.count)


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
        get_attack(aname, **att)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    if check_data and cfg.dataset.name != "synthetic":
        try:  # fails early for an absent offline dataset; warms the cache of the embedded one
            load_dataset(cfg.dataset.name, cfg.dataset.root, bool(cfg.dataset.download))
        except DatasetUnavailable as e:
            raise ConfigError(str(e)) from None
