"""A worker's view of its shard: the mini-batch of round t, derived from (seed, worker, epoch) alone,
so that the data order needs no state of its own and a resumed run draws exactly the same batches."""
from __future__ import annotations

import torch
from torch import Tensor

from common.data import augment_crop_flip


class ShardSampler:
    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, worker: int, augment: bool = False,
                 fill: tuple[float, ...] | None = None):
        """`fill`: the stored value of a black pixel per channel, which the random crop pads with."""
        self.x, self.y, self.B = x, y, batch_size
        self.seed, self.worker, self.augment = seed, worker, augment
        # made once, on the data's device (a tensor built from Python floats is a copy to the device)
        self.fill = torch.tensor(fill, dtype=x.dtype, device=x.device) if fill and any(fill) else None
        self.rounds_per_epoch = len(y) // batch_size
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.worker * 10_007 + epoch)
            self._perm = torch.randperm(len(self.y), generator=g).to(self.x.device)
            self._epoch = epoch
        return self._perm

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        """Batch of round t: slice t mod R of epoch t div R's permutation (drop_last)."""
        epoch, j = divmod(t, self.rounds_per_epoch)
        idx = self._permutation(epoch)[j * self.B:(j + 1) * self.B]
        x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)  # = x[idx], without advanced indexing
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 7_919 + self.worker * 104_729 + t)
            x = augment_crop_flip(x, g, fill=self.fill)
        return x, y
