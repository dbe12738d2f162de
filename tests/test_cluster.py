"""The cluster path: two torchrun "nodes" on the loopback address, several processes per node."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

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
