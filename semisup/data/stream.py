"""Index streams whose batch at step k is a pure function of (seed, k).

Exact resume and multi-process sharding then need no sampler state: step k always yields the same
global batch, each rank takes its slice, and a resumed run simply starts at k.
"""
from __future__ import annotations

import numpy as np
import torch


class IndexStream:
    """Endless shuffled passes over ``n`` items: epoch e is a permutation seeded by (seed, salt, e)."""

    def __init__(self, n: int, batch_size: int, seed: int, salt: int):
        if n <= 0:
            raise ValueError("an index stream needs at least one item")
        self.n, self.batch_size, self.seed, self.salt = n, batch_size, seed, salt
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._cache.get(epoch)
        if p is None:
            if len(self._cache) > 8:  # only the current epoch or two are ever needed
                self._cache.clear()
            p = np.random.default_rng([self.seed, self.salt, epoch]).permutation(self.n)
            self._cache[epoch] = p
        return p

    def batch(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Positions of step ``step``'s global batch, this rank's contiguous share. (b,) int64."""
        per_rank = self.batch_size // world
        start = step * self.batch_size + rank * per_rank
        pos = np.arange(start, start + per_rank, dtype=np.int64)  # global sample positions
        epochs, offs = np.divmod(pos, self.n)
        out = np.empty(per_rank, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offs[sel]]
        return out


class Unlabelled:
    """The unlabelled images: ``part`` (a uint8 (N, C, H, W) tensor, the train images the split leaves
    unlabelled) followed by ``extra`` (the dataset's own unlabelled images: an array in memory, a memory map,
    or a pool's :class:`~semisup.data.pool.DiskImages`). ``take`` reads only the images asked for, so a
    pool larger than memory is never loaded whole."""

    def __init__(self, part: torch.Tensor, extra=None):
        self.part, self.extra = part, extra

    def __len__(self) -> int:
        return len(self.part) + (0 if self.extra is None else len(self.extra))

    def take(self, idx) -> torch.Tensor:
        """Images at positions ``idx`` (B,) -> uint8 (B, C, H, W), in the order asked."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.extra is None:
            return self.part[idx]
        n = len(self.part)
        out = torch.empty((len(idx), *self.part.shape[1:]), dtype=torch.uint8)
        own = idx < n
        out[own] = self.part[idx[own]]
        if not bool(own.all()):
            out[~own] = torch.from_numpy(np.ascontiguousarray(self.extra[(idx[~own] - n).numpy()]))
        return out
