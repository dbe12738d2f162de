"""Deployment files in docker/: the compose files' structure (1 server + 8 workers, one GPU each, one
image, rendezvous on the server service), the CPU override, the Dockerfile's entry command against the
documented cluster command, and `docker-compose config` where that tool is installed.

No docker engine is needed: the files are read with PyYAML, and `docker-compose config` only parses
and resolves them.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.node import SHARED_STORE_OFF

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
RANKS = ["server"] + [f"worker{i}" for i in range(1, 9)]
MARKER = "# cluster command"


# --- reading the files ------------------------------------------------------------------------------

class _Reset:
    """compose's `!reset` tag: the key is removed from the merged model."""


RESET = _Reset()


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: ("!override", loader.construct_object(node, deep=True)))


def load_compose(path: Path) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader with two extra tags


def merge(base, override):
    """compose's override-file merge, for what these files use: mappings merge key by key, `!reset`
    removes a key, `!override` and every other value replaces it."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override[1] if isinstance(override, tuple) and override[:1] == ("!override",) else override
    out = dict(base)
    for key, value in override.items():
        if value is RESET:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = merge({}, value) if isinstance(value, dict) else value
    return out


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []) or []


def parse_mount(spec: str) -> tuple[str, str, str]:
    """A short-syntax volume `SOURCE:TARGET[:MODE]` whose SOURCE may be a `${VAR:-default}`."""
    m = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\w+))?", spec)
    assert m, spec
    return m.group(1), m.group(2), m.group(3) or "rw"


def join_continuations(text: str) -> list[str]:
    """Logical lines: a line ending in a backslash goes on in the next one."""
    lines, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            lines.append(cur + line)
            cur = ""
    if cur:
        lines.append(cur)
    return lines


def fenced_blocks(markdown: str) -> list[str]:
    return re.findall(r"^ *```[^\n]*\n(.*?)^ *```", markdown, flags=re.S | re.M)


def marked_command(markdown: str) -> list[str]:
    """The command on the line after `# cluster command` in a fenced block, as shell words."""
    for block in fenced_blocks(markdown):
        lines = [ln.strip() for ln in join_continuations(block)]
        if MARKER in lines:
            return shlex.split(lines[lines.index(MARKER) + 1])
    raise AssertionError(f"no fenced block with a {MARKER!r} line")


def torchrun_commands(markdown: str) -> list[list[str]]:
    """Every torchrun command in the fenced blocks that mention `-m launch.node`, as shell words."""
    out = []
    for block in fenced_blocks(markdown):
        if "-m launch.node" not in block:
            continue
        for line in join_continuations(block):
            words = shlex.split(line, comments=True)
            if "torchrun" in words:
                out.append(words[words.index("torchrun"):])
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    out = []
    for line in join_continuations(text):
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def entrypoint_script() -> list[str]:
    [args] = [a for i, a in dockerfile_instructions() if i == "ENTRYPOINT"]
    entry = json.loads(args)
    assert entry[:2] == ["/bin/bash", "-c"], "the entry point runs its command through bash -c"
    return shlex.split(entry[2])


def entry_command() -> list[str]:
    """The torchrun command that the container runs, without the forwarded container arguments."""
    words = entrypoint_script()
    start = words.index("torchrun")
    assert words[-1] == "$@", "container arguments are forwarded as further overrides"
    return words[start:-1]


# --- compose.yaml -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def cpu(gpu) -> dict:
    return merge(gpu, load_compose(COMPOSE_CPU))


def test_compose_defines_one_server_and_eight_workers(gpu):
    assert list(gpu["services"]) == RANKS


def test_every_service_reserves_its_own_gpu(gpu):
    ids = []
    for name, svc in gpu["services"].items():
        [dev] = gpu_devices(svc)
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"], name
        assert len(dev["device_ids"]) == 1 and "count" not in dev, name
        ids += dev["device_ids"]
    assert ids == [str(i) for i in range(9)]  # distinct, 0..8, server on GPU 0


def test_every_service_runs_the_same_image(gpu):
    services = gpu["services"].values()
    assert len({s["image"] for s in services}) == 1
    assert len({json.dumps(s["build"], sort_keys=True) for s in services}) == 1
    assert all(s["build"]["dockerfile"] == "docker/Dockerfile" for s in services)
    # no entry point or command override: every container runs the Dockerfile's cluster command
    assert not any("entrypoint" in s or "command" in s for s in services)


def test_rendezvous_address_is_the_server_service(gpu):
    services = gpu["services"]
    envs = {name: s["environment"] for name, s in services.items()}
    [host] = {e["RDZV_HOST"] for e in envs.values()}
    assert host in services and services[host]["hostname"] == host  # the agent there hosts the store
    assert [n for n, e in envs.items() if e["BYZ_ROLE"] == "server"] == [host]
    assert all(e["BYZ_ROLE"] == "worker" for n, e in envs.items() if n != host)
    assert all(services[n]["depends_on"] == [host] for n in envs if n != host)


def test_every_rank_gets_the_same_run_and_overrides(gpu):
    envs = [s["environment"] for s in gpu["services"].values()]
    for key in ("NNODES", "RUN_NAME", "RUNS_DIR", "BYZ_OVERRIDES"):
        assert len({e[key] for e in envs}) == 1, key
    env = envs[0]
    assert int(env["NNODES"]) == len(envs) == 9
    overrides = env["BYZ_OVERRIDES"].split()
    assert f"workers={len(envs) - 1}" in overrides and "device=cuda" in overrides
    assert "dataset.root=/data" in overrides
    assert overrides[-1] == "${BYZ_ARGS:-}"  # the user's overrides come last, so they win
    assert "now" not in env["RUN_NAME"]  # one name for all ranks, not a per-process timestamp


def test_runs_and_data_are_shared_volumes_and_failures_restart(gpu):
    for name, svc in gpu["services"].items():
        mounts = {target: (source, mode) for source, target, mode in map(parse_mount, svc["volumes"])}
        assert set(mounts) == {"/runs", "/data"}, name
        assert mounts["/data"][1] == "ro"
        assert mounts["/runs"][0] == "${BYZ_RUNS:-runs}"  # a named volume unless a host folder is given
        assert svc["restart"].startswith("on-failure"), name  # a finished run (exit 0) stays down
    assert len({json.dumps(s["volumes"]) for s in gpu["services"].values()}) == 1
    assert "runs" in gpu["volumes"]


def test_cpu_override_runs_the_same_nine_containers_on_gloo(gpu, cpu):
    assert list(cpu["services"]) == RANKS
    assert list(load_compose(COMPOSE_CPU)["services"]) == RANKS
    for name, svc in cpu["services"].items():
        assert gpu_devices(svc) == [], name
        assert svc["image"] == gpu["services"][name]["image"]
        overrides = svc["environment"]["BYZ_OVERRIDES"].split()
        assert {"device=cpu", "comm.backend=gloo", "workers=8"} <= set(overrides), name
        assert overrides[-1] == "${BYZ_ARGS:-}"
        rest = {k: v for k, v in svc["environment"].items() if k != "BYZ_OVERRIDES"}
        assert rest == {k: v for k, v in gpu["services"][name]["environment"].items() if k != "BYZ_OVERRIDES"}


# --- Dockerfile and the documented cluster command -------------------------------------------------

def test_dockerfile_builds_on_a_cuda_pytorch_runtime_as_a_non_root_user():
    instr = dockerfile_instructions()
    base = [a for i, a in instr if i == "ARG" and a.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base[0])
    assert ("FROM", "${BASE_IMAGE}") in instr
    [user] = [a for i, a in instr if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    runs = " ".join(a for i, a in instr if i == "RUN")
    assert "-c /tmp/build/constraints.txt" in runs  # the base image's torch is kept
    assert "pip install --no-deps -e /app" in runs


def test_dockerfile_entry_command_is_the_docker_readme_cluster_command():
    readme = (DOCKER / "README.md").read_text()
    documented = marked_command(readme)
    assert documented[0] == "torchrun"
    assert entry_command() == documented
    # the examples (2 hosts) use the same command
    assert all(cmd == documented for cmd in torchrun_commands(readme))


def test_top_readme_cluster_command_is_the_dockerfile_entry_command():
    readme = ROOT / "README.md"
    commands = torchrun_commands(readme.read_text()) if readme.exists() else []
    if not commands:
        pytest.skip("README.md has no fenced torchrun block with -m launch.node")
    expected = entry_command()
    assert expected in commands, f"README.md should show the cluster command: {shlex.join(expected)}"


def test_image_agents_meet_in_a_fresh_store_each_attempt():
    """An agent replaced alone can rejoin only without the shared rendezvous store
    (tests/test_cluster.py runs that case)."""
    assert dockerfile_env()[SHARED_STORE_OFF] == "1"
    for doc in (DOCKER / "README.md", ROOT / "README.md"):
        assert SHARED_STORE_OFF in doc.read_text(), doc


def test_cluster_command_is_one_agent_per_rank_on_a_c10d_rendezvous():
    cmd = entry_command()
    assert "--nproc_per_node=1" in cmd and "--rdzv-backend=c10d" in cmd
    assert "--rdzv-endpoint=${RDZV_HOST}:29400" in cmd and "--rdzv-id=${RUN_NAME}" in cmd
    assert cmd[cmd.index("-m") + 1] == "launch.node"
    assert "run.dir=${RUNS_DIR}/${RUN_NAME}" in cmd  # the same directory on every rank


def test_every_variable_of_the_entry_command_is_set(gpu):
    names = set(re.findall(r"\$\{(\w+)\}", " ".join(entry_command())))
    assert names == {"NNODES", "RDZV_HOST", "RUN_NAME", "RUNS_DIR", "BYZ_OVERRIDES"}
    assert names <= set(dockerfile_env())
    for name, svc in gpu["services"].items():
        assert names | {"BYZ_ROLE"} <= set(svc["environment"]), name


def test_requirements_script_keeps_the_preinstalled_torch(tmp_path):
    script = DOCKER / "requirements.py"
    subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), str(tmp_path)], check=True)
    requirements = (tmp_path / "requirements.txt").read_text().split()
    assert "hydra-core>=1.3" in requirements and any(r.startswith("torch") for r in requirements)
    constraints = (tmp_path / "constraints.txt").read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in constraints


def test_dockerignore_keeps_the_sources_and_drops_local_state():
    patterns = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "data", "runs"} <= patterns
    assert not patterns & {"pyproject.toml", "README.md", "conf", "docker", "launch", "*"}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_docker_up_passes_args_and_one_run_name_to_compose():
    # COMPOSE is replaced by a command that prints what compose would get from make.
    cmd = ["make", "-s", "-f", "docker/docker.mk", "docker-up", "ARGS=dataset=cifar10 epochs=2",
           "COMPOSE=printenv BYZ_ARGS RUN_NAME; true"]
    env = {k: v for k, v in os.environ.items() if k != "RUN_NAME"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    banner, args, run_name = out.splitlines()
    assert args == "dataset=cifar10 epochs=2"
    assert re.fullmatch(r"[\w.-]+", run_name) and f"/runs/{run_name}" in banner
    dry = subprocess.run(["make", "-n", "-f", "docker/docker.mk", "docker-up", "CPU=1"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "-f docker/compose.yaml -f docker/compose.cpu.yaml up" in dry


# --- docker-compose config ---------------------------------------------------------------------------

def _compose_tool() -> tuple[str, tuple[int, int]]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed; the files were checked with PyYAML only")
    out = subprocess.run([tool, "version", "--short"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return tool, (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _config(tool: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BYZ_", "COMPOSE_")) and k != "RUN_NAME"}
    env.update(BYZ_ARGS="dataset=cifar10 epochs=2", RUN_NAME="r1")
    res = subprocess.run([tool, *args, "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, f"docker-compose config rejected the files:\n{res.stderr}"
    return yaml.safe_load(res.stdout)


def test_docker_compose_config_accepts_the_gpu_file():
    tool, _ = _compose_tool()
    model = _config(tool, "-f", str(COMPOSE))
    assert sorted(model["services"]) == sorted(RANKS)
    for svc in model["services"].values():
        [dev] = gpu_devices(svc)
        assert dev["driver"] == "nvidia"
        assert svc["environment"]["RUN_NAME"] == "r1"
        assert svc["environment"]["BYZ_OVERRIDES"].split()[-2:] == ["dataset=cifar10", "epochs=2"]


def test_docker_compose_config_accepts_the_cpu_override(cpu, tmp_path):
    tool, version = _compose_tool()
    if version >= (2, 24):
        model = _config(tool, "-f", str(COMPOSE), "-f", str(COMPOSE_CPU))
    else:
        # Older docker-compose cannot read `!reset`: check the model that compose >= 2.24 builds.
        merged = tmp_path / "compose.merged.yaml"
        merged.write_text(yaml.safe_dump(cpu, sort_keys=False))
        model = _config(tool, "--project-directory", str(DOCKER), "-f", str(merged))
    assert sorted(model["services"]) == sorted(RANKS)
    for svc in model["services"].values():
        assert gpu_devices(svc) == []
        assert "comm.backend=gloo" in svc["environment"]["BYZ_OVERRIDES"].split()


# --- the cluster command, run -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_documented_cluster_command_trains_with_three_agents_on_one_host(tmp_path):
    """docker/README.md's cluster command, word for word, as 3 agents (1 server + 2 workers) on CPU;
    only the rendezvous port is a free one instead of 29400."""
    env = {"NNODES": "3", "RDZV_HOST": "127.0.0.1", "RUN_NAME": "cluster-e2e", "RUNS_DIR": str(tmp_path),
           "BYZ_OVERRIDES": "workers=2 byzantine.count=0 aggregator=mean attack=none device=cpu "
                            "max_rounds=2 epochs=1 log.progress=false"}
    port = _free_port()
    argv = []
    for word in marked_command((DOCKER / "README.md").read_text()):
        if word == "${BYZ_OVERRIDES}":  # unquoted in the command: one word per override
            argv += env["BYZ_OVERRIDES"].split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word).replace(":29400", f":{port}"))
    torchrun = Path(sys.executable).with_name("torchrun")
    argv[:1] = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    dist_env = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    base = {k: v for k, v in os.environ.items() if k not in dist_env}
    base.update(env, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE=dockerfile_env()[SHARED_STORE_OFF])
    agents, logs = [], [tmp_path / f"agent{i}.log" for i in range(3)]
    try:
        for role, log in zip(("server", "worker", "worker"), logs):
            with open(log, "w") as out:
                agents.append(subprocess.Popen(argv, cwd=ROOT, env={**base, "BYZ_ROLE": role},
                                               stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        for a in agents:
            a.wait(timeout=240)
    finally:
        for a in agents:  # an agent and the rank it started share a process group
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
    assert [a.returncode for a in agents] == [0, 0, 0], logs[0].read_text()[-3000:]
    summary = json.loads((tmp_path / "cluster-e2e" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
