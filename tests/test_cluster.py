"""The cluster path: two torchrun "nodes" on the loopback address, several processes per node."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from launch.node import SHARED_STORE_OFF
from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_two_torchrun_nodes_on_loopback_train_with_an_omniscient_attack(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "two-nodes"
    overrides = ["workers=4", "byzantine.count=1", "aggregator=cm", "attack=alie", "max_rounds=6",
                 "log.progress=false", f"run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    procs = []
    try:
        for role, nproc in (("server", 2), ("worker", 3)):  # node A: server + 1 worker; node B: 3 workers
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc_per_node={nproc}",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
                   "--max-restarts=0", "-m", "launch.node", *overrides]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "BYZ_ROLE": role}, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 6 and summary["config"]["workers"] == 4
    assert summary["config"]["attack_params"]["z"] == pytest.approx(-0.4307, abs=1e-3)  # karimireddy z, n=4, f=1


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill_stopped_rank(marker) -> None:
    """The SIGSTOPped rank runs in a session of its own (torchrun starts ranks so) and a stopped process
    never notices that its agent died: kill it by the PID the fault marker holds."""
    try:
        os.kill(int(marker.read_text()), signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass


def test_a_node_whose_agent_is_replaced_alone_rejoins_and_the_run_resumes(tmp_path):
    """A restarted container: node B's agent dies with its rank, a new agent takes its place. The new
    agent's restart count starts at 0 while node A's agent counts its restart, so the two must not
    depend on that count to meet (a store prefix from it split the group until timeout_start_s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "replaced"
    overrides = ["workers=2", "byzantine.count=0", "aggregator=mean", "attack=none", "max_rounds=40",
                 "checkpoint.every=10", "log.every=5", "log.progress=false", "comm.timeout_start_s=40",
                 "fault.kind=stop", "fault.rank=2", "fault.round=25", f"run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": "1", SHARED_STORE_OFF: "1"})  # as the image and launch.run set it

    def agent(role, nproc, log):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc_per_node={nproc}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=replaced",
               "--max-restarts=2", "-m", "launch.node", *overrides]
        return subprocess.Popen(cmd, cwd=ROOT, env={**env, "BYZ_ROLE": role}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    logs = [open(tmp_path / f"agent{i}.log", "w") for i in range(3)]
    procs = []
    try:
        procs.append(agent("server", 2, logs[0]))  # node A: the server and worker 1
        # node A hosts the rendezvous (on a cluster: the agent on RDZV_HOST); node B must not, or killing
        # it would take the rendezvous down with it
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert time.monotonic() < deadline and procs[0].poll() is None, "node A never hosted the rendezvous"
            time.sleep(0.1)
        procs.append(agent("worker", 1, logs[1]))  # node B: worker 2, which hangs at round 25
        deadline = time.monotonic() + 120
        while not (run_dir / "FAULT_FIRED").exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "the fault never fired"
            time.sleep(0.2)
        os.killpg(procs[1].pid, signal.SIGKILL)  # node B's agent and its hung rank are gone
        procs[1].wait(timeout=30)
        procs.append(agent("worker", 1, logs[2]))  # the replacement agent (restart count 0)
        procs[0].wait(timeout=180)
        procs[2].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for log in logs:
            log.close()
        _kill_stopped_rank(run_dir / "FAULT_FIRED")
    texts = [(tmp_path / f"agent{i}.log").read_text()[-2000:] for i in range(3)]
    assert procs[0].returncode == 0 and procs[2].returncode == 0, "\n".join(texts)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 40
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(5, 41, 5))
