"""Experiment presets (conf/experiment/*.yaml): every preset composes with hydra's compose API and
passes the project's validate; the sweep documented at the top of each paper preset composes and
validates every value; paper A's presets carry the paper's settings (ResNet-20 / CIFAR-10, 8 workers,
160 epochs, cosine, CC radius 0.1) and their CPU twins the embedded data set."""
from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from launch.node import CONF_DIR
from launch.validate import validate

EXPERIMENTS = Path(CONF_DIR) / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
PAPER_A = [p for p in PRESETS if p.startswith("paperA_")]
PAPER_A_FULL = [p for p in PAPER_A if not p.endswith("_cpu")]
PAPER_A_CPU = [p for p in PAPER_A if p.endswith("_cpu")]
PAPER_B = [p for p in PRESETS if p.startswith("paperB_")]
IGNORED_AXES = ("hydra.", "log.", "run.", "checkpoint.")
GROUPS = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}  # algorithm, aggregator, attack, ...


@pytest.fixture(scope="module")
def make():
    """make(preset, *overrides): the composed config (a fresh copy; each distinct composition is done
    once per module, inside one hydra context)."""
    cache: dict[tuple, DictConfig] = {}

    def _make(preset: str, *overrides: str) -> DictConfig:
        key = (preset, *overrides)
        if key not in cache:
            cache[key] = compose(config_name="config", overrides=[f"experiment={preset}", *overrides])
        return copy.deepcopy(cache[key])

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        yield _make
    GlobalHydra.instance().clear()


def sweep_axes(preset: str) -> dict[str, list[str]]:
    """The `key=v1,v2,...` overrides of the first `python -m launch.run --multirun` command in the
    preset's header comment (its lines joined over backslash continuations; hydra, log, run and
    checkpoint keys left out)."""
    lines = []
    for line in (EXPERIMENTS / f"{preset}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if lines or text.startswith("python -m launch.run --multirun "):
            lines.append(text.removesuffix("\\").strip())
            if not text.endswith("\\"):
                break
    assert lines, f"{preset}: no `python -m launch.run --multirun ...` command in the header comment"
    axes = {}
    for tok in shlex.split(" ".join(lines))[4:]:
        key, sep, value = tok.partition("=")
        if sep and not key.startswith(IGNORED_AXES):
            axes[key] = value.split(",")
    assert axes.get("experiment") == [preset], f"{preset}: the documented sweep must use experiment={preset}"
    del axes["experiment"]
    return axes


def test_every_paper_table_has_a_full_scale_preset_and_a_cpu_twin():
    full = {"paperA_table1", "paperA_table2_3", "paperA_table4_5", "paperA_table6"}
    assert full <= set(PAPER_A_FULL)
    assert {f"{p}_cpu" for p in full} <= set(PAPER_A_CPU)
    assert "paperB_fig3" in PAPER_B


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(make, preset):
    cfg = make(preset)
    validate(cfg, check_data=False)


def sweep_jobs(axes: dict[str, list[str]]):
    """A thinned sweep: job i takes value i (cyclically) of every axis, so each value of each axis is
    used at least once, in varied combinations, plus the corner of last values (the largest batch, the
    largest count, ...). Yields (config-group overrides, scalar overrides)."""
    n = max(len(vs) for vs in axes.values())
    for i in [*range(n), -1]:
        job = [f"{k}={vs[i % len(vs)]}" for k, vs in axes.items()]
        yield [o for o in job if o.split("=")[0] in GROUPS], [o for o in job if o.split("=")[0] not in GROUPS]


@pytest.mark.parametrize("preset", PAPER_A + PAPER_B)
def test_documented_sweep_composes_and_validates_every_value(make, preset):
    """Config groups are composed; plain values go through hydra's own override parser into the composed
    config (the same value a sweep job gets, without one composition per value)."""
    axes = sweep_axes(preset)
    assert axes, f"{preset}: the documented sweep has no axis"
    parser = OverridesParser.create()
    for groups, scalars in sweep_jobs(axes):
        cfg = make(preset, *groups)
        for ov in parser.parse_overrides(scalars):
            assert OmegaConf.select(cfg, ov.key_or_group) is not None, f"{preset}: {ov.key_or_group} is unknown"
            OmegaConf.update(cfg, ov.key_or_group, ov.value(), merge=False)
        validate(cfg, check_data=False)


@pytest.mark.parametrize("preset", PAPER_A_FULL)
def test_paper_a_full_scale_settings(make, preset):
    cfg = make(preset)
    assert (cfg.dataset.name, cfg.model.name, cfg.device) == ("cifar10", "resnet20", "cuda")
    assert cfg.workers == 8 and cfg.epochs == 160 and cfg.momentum == 0.9
    assert cfg.schedule.name == "cosine"
    assert cfg.model.shortcut == "A" and cfg.dataset.augment is True
    assert cfg.algorithm.name in ("byzsgdm", "byzsgdnm")
    axes = sweep_axes(preset)
    assert [int(b) for b in axes["batch_size"]] == [32, 64, 128, 256, 512, 1024]
    if "lr" in axes:
        assert [float(v) for v in axes["lr"]] == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
        assert axes["aggregator"] == ["krum", "gm", "cm", "cc"]


@pytest.mark.parametrize("preset", PAPER_A)
def test_paper_a_cc_radius_is_the_papers(make, preset):
    cfg = make(preset, "aggregator=cc")
    assert cfg.aggregator.name == "cc" and cfg.aggregator.tau == 0.1


def test_paper_a_byzantine_fractions_and_attacks(make):
    t1 = sweep_axes("paperA_table1")
    assert [int(c) for c in t1["byzantine.count"]] == [0, 1, 3]  # delta = 0, 1/8, 3/8 of 8 workers
    cfg = make("paperA_table1")
    assert (cfg.algorithm.name, cfg.attack.name) == ("byzsgdm", "alie")
    t23 = sweep_axes("paperA_table2_3")
    assert [int(c) for c in t23["byzantine.count"]] == [0, 3]
    cfg = make("paperA_table2_3")
    assert cfg.attack.name == "bitflip" and cfg.attack.scale == 10.0
    t45 = sweep_axes("paperA_table4_5")
    assert t45["attack"] == ["alie", "foe"] and t45["algorithm"] == ["byzsgdm", "byzsgdnm"]
    cfg = make("paperA_table4_5", "attack=foe")
    assert cfg.byzantine.count == 3 and cfg.attack.epsilon == 0.1
    cfg = make("paperA_table6")
    assert (cfg.aggregator.name, cfg.attack.name, cfg.byzantine.count) == ("cc", "none", 0)


@pytest.mark.parametrize("preset", PAPER_A_CPU)
def test_paper_a_cpu_twins_run_on_the_embedded_data(make, preset):
    cfg = make(preset)
    assert (cfg.dataset.name, cfg.model.name, cfg.device) == ("mnist5k", "cnn", "cpu")
    assert cfg.workers == 8 and cfg.schedule.name == "cosine" and cfg.momentum == 0.9
    full = make(preset.removesuffix("_cpu"))
    assert (cfg.algorithm.name, cfg.attack.name, cfg.byzantine.count) == \
        (full.algorithm.name, full.attack.name, full.byzantine.count)
    shard = 4000 // cfg.workers
    assert all(int(b) <= shard for b in sweep_axes(preset)["batch_size"])


@pytest.mark.parametrize("model", ["logreg", "ffn"])
def test_paper_b_fig4_deadline_lets_sgd_follow_the_device_classes(make, model):
    """Fig. 4 compares HGO with SGD across scenarios: SGD's full gradient must fit within tau on every
    powerful device and on no weak one, for both models (and on few average ones: none for the network)."""
    from common.config import INPUT_SHAPES, NUM_CLASSES, model_kwargs
    from common.models import build_model, num_parameters
    from worker.profiles import assign_profiles, draw_rate, rate_table, sgd_length

    cfg = make("paperB_fig4", f"model={model}")
    d = num_parameters(build_model(cfg.model.name, INPUT_SHAPES["mnist"], NUM_CLASSES["mnist"], **model_kwargs(cfg)))
    table, tau, s, m = rate_table("auto", dict(cfg.model)), float(cfg.hgo.tau), int(cfg.batch_size), int(cfg.workers)
    capable, total = {}, {}
    for scenario in ("C_weak", "default", "C_powerful"):
        for k, p in enumerate(assign_profiles(m, scenario, 0)):
            fits = sgd_length(tau, draw_rate(p, table, 0, k + 1), s, d) == d
            capable[p], total[p] = capable.get(p, 0) + fits, total.get(p, 0) + 1
    assert capable["weak"] == 0 and capable["powerful"] == total["powerful"], capable
    assert capable["average"] <= (0 if model == "ffn" else 0.2 * total["average"]), capable


@pytest.mark.parametrize("preset", PAPER_B)
def test_paper_b_full_scale_settings(make, preset):
    cfg = make(preset)
    assert cfg.dataset.name == "mnist" and cfg.algorithm.name == "hgo" and cfg.byzantine.count == 0
    assert cfg.hgo.q == int(0.8 * cfg.workers) and cfg.workers in (50, 100)
