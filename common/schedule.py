"""Learning-rate schedules, evaluated per epoch (paper A §5)."""
from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("cosine", "constant", "step")


def learning_rate(name: str, lr0: float, epoch: int, epochs: int, milestones: Sequence[int] = (),
                  gamma: float = 0.1) -> float:
    """Learning rate of epoch p (0-based), held constant within the epoch.

    cosine:   eta_p = eta_0 / 2 * (1 + cos(pi * p / epochs))   (paper A §5; p = 0..epochs-1), and 0 for
              p >= epochs (a run longer than its schedule never climbs back up the cosine)
    constant: eta_0
    step:     eta_0 * gamma ** (number of milestones <= p)
    """
    if name == "cosine":
        return lr0 / 2.0 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    if name == "constant":
        return lr0
    if name == "step":
        return lr0 * gamma ** sum(1 for m in milestones if epoch >= m)
    raise ValueError(f"schedule.name '{name}' is unknown; choose one of {list(SCHEDULES)}")
