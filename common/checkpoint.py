"""Atomic per-rank checkpoints with a manifest that marks a round consistent (DESIGN.md "Reliability").

Layout::

    RUN_DIR/checkpoints/round_00000120/server.pt
    RUN_DIR/checkpoints/round_00000120/worker_3.pt
    RUN_DIR/checkpoints/manifest.json      {"complete": [60, 120], "ranks": [...]}

Every rank writes its own file (temp file + rename). The server adds a round to the manifest only after
every worker has written its file for that round, so startup loads the latest *consistent* round.
The checkpoint directory must be on storage shared by all nodes (a docker volume, NFS).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from typing import Any

import torch

log = logging.getLogger("byz")


def ckpt_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def _round_dir(run_dir: str, rnd: int) -> str:
    return os.path.join(ckpt_root(run_dir), f"round_{rnd:08d}")


def atomic_write(path: str, write) -> None:
    """`write(fh)` into a temporary file beside `path` (binary), fsync, then rename over `path`: a crash
    or a full disk leaves the old file or the new one, never half of one, and no temporary."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_rank(run_dir: str, rnd: int, name: str, state: dict[str, Any]) -> None:
    """Write one rank's state for round `rnd` atomically."""
    atomic_write(os.path.join(_round_dir(run_dir, rnd), f"{name}.pt"), lambda fh: torch.save(state, fh))


def load_rank(run_dir: str, rnd: int, name: str) -> dict[str, Any]:
    return torch.load(os.path.join(_round_dir(run_dir, rnd), f"{name}.pt"), map_location="cpu",
                      weights_only=False)


def _manifest_path(run_dir: str) -> str:
    return os.path.join(ckpt_root(run_dir), "manifest.json")


def read_manifest(run_dir: str) -> dict[str, Any]:
    """The manifest ({"complete": [rounds], ...}); none yet means no consistent round. A damaged one is an
    error, not "no checkpoint": starting over would drop the run's metrics (it is written atomically, so
    only something outside the run can damage it)."""
    path = _manifest_path(run_dir)
    try:
        with open(path) as fh:
            man = json.load(fh)
    except FileNotFoundError:
        return {"complete": []}
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{path} is unreadable ({e}); restore it or remove the checkpoints to start over") from None
    if not isinstance(man, dict) or not all(isinstance(r, int) for r in man.get("complete", [])):
        raise RuntimeError(f"{path} is not a checkpoint manifest; restore it or remove the checkpoints to start over")
    return man


def latest_round(run_dir: str) -> int | None:
    """The latest round that every rank has checkpointed, or None."""
    complete = consistent_rounds(run_dir)
    return complete[0] if complete else None


def mark_complete(run_dir: str, rnd: int, names: list[str], keep: int = 2) -> None:
    """Record round `rnd` as consistent (all `names` present) and prune older rounds beyond `keep`."""
    missing = [n for n in names if not os.path.exists(os.path.join(_round_dir(run_dir, rnd), f"{n}.pt"))]
    if missing:
        raise RuntimeError(f"checkpoint round {rnd} is missing {missing}")
    man = read_manifest(run_dir)
    complete = sorted(set(man.get("complete", [])) | {rnd})
    drop, complete = complete[:-keep], complete[-keep:]
    body = json.dumps({"complete": complete, "ranks": names}, indent=1).encode()
    atomic_write(_manifest_path(run_dir), lambda fh: fh.write(body))
    for r in drop:
        shutil.rmtree(_round_dir(run_dir, r), ignore_errors=True)


#: what torch.load raises for a file that is lost, torn or overwritten: the round is unreadable on this
#: rank. Other errors (an I/O error of the storage, memory, a signal) propagate: the restart tries again
#: rather than give up a round that may be intact.
UNREADABLE = (FileNotFoundError, IsADirectoryError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError)


def consistent_rounds(run_dir: str) -> list[int]:
    """The manifest's consistent rounds, newest first."""
    return sorted(read_manifest(run_dir).get("complete", []), reverse=True)


def resume(run_dir: str, name: str, load_state_dict, agree=None) -> int | None:
    """Load rank `name`'s state of the latest consistent round into `load_state_dict`, if there is one.

    Every role calls this first thing in `run()`, so a restarted group resumes without a special path.
    `agree` (common.dist.Agreement; None when this rank alone keeps state) makes the group decide
    together: every rank tries the server's list of rounds (a stale copy of the manifest elsewhere cannot
    split the group), and a round that some rank cannot read (a torn or lost file) is skipped, on every
    rank, for the next older consistent round (`checkpoint.keep` are kept), so one bad file does not fail
    every restart. When none loads, the error names the rounds and the ranks on every rank.
    """
    complete = agree.rounds(lambda: consistent_rounds(run_dir)) if agree else consistent_rounds(run_dir)
    tried, mine = [], []
    for rnd in complete:
        try:
            state = load_rank(run_dir, rnd, name)
        except UNREADABLE as e:
            state = None
            text = str(e).strip().splitlines()
            mine.append(f"round {rnd}: {name}.pt: {type(e).__name__}: {text[0] if text else ''}")
            log.warning("checkpoint %s is unreadable; trying an older consistent round", mine[-1])
        bad = agree.unreadable(state is not None) if agree else state is None
        if not bad:
            load_state_dict(state)
            return rnd
        tried.append(f"round {rnd} unreadable" + (f" on rank(s) {bad}" if agree else ""))
    if complete:
        raise RuntimeError(f"no consistent round in {ckpt_root(run_dir)} loads on every rank ({'; '.join(tried)}"
                           f"{'; here ' + '; '.join(mine) if mine else ''}): restore the files or remove the "
                           f"checkpoints to start over")
    return None


def forget_after(run_dir: str, rnd: int) -> list[int]:
    """Drop the rounds after `rnd` from the manifest (the server, once every rank has resumed from `rnd`
    because a newer round did not load on some rank) and set their folders aside as
    `round_NNNNNNNN.unreadable` for inspection; returns the dropped rounds."""
    man = read_manifest(run_dir)
    complete = man.get("complete", [])
    later = [r for r in complete if r > rnd]
    if later:
        body = json.dumps({**man, "complete": [r for r in complete if r <= rnd]}, indent=1).encode()
        atomic_write(_manifest_path(run_dir), lambda fh: fh.write(body))
        for r in later:
            aside = _round_dir(run_dir, r) + ".unreadable"
            shutil.rmtree(aside, ignore_errors=True)
            if os.path.isdir(_round_dir(run_dir, r)):
                os.replace(_round_dir(run_dir, r), aside)
    return later
