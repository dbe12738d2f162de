"""One metrics sink for the rank that owns the numbers (the server): metrics.jsonl + TensorBoard.

Rows are keyed by `round` = the number of rounds completed. On resume from a checkpoint taken after t
rounds, rows with round > t are dropped from metrics.jsonl and TensorBoard purges its events from step
t + 1 on, so a restarted run has neither duplicated nor missing rounds.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from .checkpoint import atomic_write


class MetricsLogger:
    def __init__(self, run_dir: str, start_round: int = 0, tensorboard: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._truncate(start_round)
        self.fh = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge from the first round not yet done, also at 0: a restart without a checkpoint
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_round + 1)

    def _truncate(self, start_round: int) -> None:
        if not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash
                if row.get("round", 0) <= start_round:
                    keep.append(line if line.endswith("\n") else line + "\n")
        atomic_write(self.path, lambda fh: fh.write("".join(keep).encode()))

    def log(self, row: dict[str, Any], tb_prefix: dict[str, str] | None = None) -> None:
        """Append one row; numeric fields also go to TensorBoard at step = row['round']."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.fh.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = int(row["round"])
            for key, v in clean.items():
                if key == "round" or not isinstance(v, (int, float)) or isinstance(v, bool) or v is None:
                    continue
                self.tb.add_scalar((tb_prefix or {}).get(key, key), v, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


TB_NAMES = {
    "test_accuracy": "test/accuracy", "test_loss": "test/loss", "train_loss": "train/loss", "lr": "train/lr",
    "agg_norm": "train/aggregate_norm", "round_time": "time/round", "t_compute": "time/compute",
    "t_communication": "time/communication", "t_aggregation": "time/aggregation", "t_update": "time/update",
    "t_evaluation": "time/evaluation",
    "excluded_nonfinite": "inputs/excluded_nonfinite", "rows_zero": "inputs/zero_rows",
    "excluded_huge": "inputs/excluded_huge", "oracle_error": "oracle/aggregation_error",
}


def write_summary(run_dir: str, summary: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge `extra` into `summary` (dicts one level deep) and write RUN_DIR/summary.json atomically."""
    for key, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(summary.get(key), dict):
            summary[key].update(v)
        else:
            summary[key] = v
    atomic_write(os.path.join(run_dir, "summary.json"), lambda fh: fh.write(json.dumps(summary, indent=1).encode()))
    return summary
