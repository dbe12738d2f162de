"""The server cannot learn which workers are Byzantine: it never imports `worker`, its code never names
the roster, and the config it runs with has no `byzantine` or `attack` section (reading one raises)."""
import ast
import os

import pytest
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from launch.node import compose, server_view
from launch.validate import validate

SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server")


def _sources():
    for root, _, files in os.walk(SERVER):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    yield path, fh.read()


def test_server_package_never_imports_worker_or_names_the_roster():
    sources = list(_sources())
    names = {os.path.relpath(p, SERVER) for p, _ in sources}
    assert len(sources) >= 10 and {"trainer.py", "hgo.py", os.path.join("aggregators", "registry.py")} <= names
    for path, text in sources:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "worker" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "worker", path
                assert "byzantine_ranks" not in [a.name for a in node.names], path
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("byzantine", "attack", "byzantine_ranks"), f"{path} reads .{node.attr}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in ("byzantine", "attack"), f"{path} names {node.value!r}"


def test_server_config_view_has_no_roster_and_refuses_to_invent_one():
    cfg = compose(["byzantine.ranks=[2,5]", "attack=alie"])
    validate(cfg, check_data=False)
    view = server_view(cfg)
    assert "byzantine" not in view and "attack" not in view
    assert view.aggregator.f == 2 and view.workers == 8  # the declared f and m are all it gets
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        _ = view.byzantine
