"""Fault injection for reliability tests and drills: `fault.kind=kill|stop|raise fault.rank=K fault.round=T`.

Rank 0 is the server, k >= 1 is worker k. The fault fires once per run directory, at the start of round
T: only in the first attempt of the group (torchrun's restart count is 0), and only if the run directory
holds no FAULT_FIRED marker yet (a new torchrun agent, e.g. a restarted container, counts from 0 again),
so the restarted group runs clean and must resume from its checkpoint. `kill` is a real SIGKILL, `stop`
a real SIGSTOP (a hung process that never answers), `raise` an exception (a crash with a traceback).
The marker holds the faulty process's PID: a stopped process outlives an agent killed from outside.
"""
from __future__ import annotations

import os
import signal


def fault_round(cfg, who: int) -> int:
    """The round at which a fault is planned for rank `who`, or -1 (round loops compare against it
    instead of reading the config every round)."""
    fault = cfg.get("fault") if hasattr(cfg, "get") else None
    if not fault or fault.get("kind", "none") == "none" or int(fault.get("rank", -1)) != who:
        return -1
    return int(fault.get("round", -1))


MARKER = "FAULT_FIRED"


def maybe_inject(cfg, who: int, t: int) -> None:
    if fault_round(cfg, who) != t or t < 0:
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) != 0:
        return
    run_dir = (cfg.get("run") or {}).get("dir")
    if run_dir:  # once per run: the marker survives new agents, whose restart count starts at 0 again
        try:
            fd = os.open(os.path.join(str(run_dir), MARKER), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as fh:  # the faulty process, for whoever must clean up a stopped one
            fh.write(f"{os.getpid()}\n")
    kind = cfg.get("fault")["kind"]
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "raise":
        raise RuntimeError(f"injected fault at round {t} on rank {who}")
    else:
        raise ValueError(f"fault.kind={kind!r} is unknown; choose none, kill, stop or raise")
