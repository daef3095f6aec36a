"""The engine's data order: deterministic, resumable and independent of the worker count.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; each sample's augmentation is
seeded by its position in that permutation (``SeededDataset``), so neither the worker count nor a
restart changes what a step sees. Rank ``r`` of ``world`` reads the r-th slice of every global batch.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from bench.core.errors import BenchError


def sample_seed(seed: int, epoch: int, position: int) -> int:
    h = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SeededDataset(Dataset):
    """Wraps a dataset so item ``(index, seed)`` is produced under the CPU torch generator, numpy's
    and Python's global RNG seeded with ``seed``, restoring the caller's states afterwards.

    Only the CPU generator is seeded (``torch.default_generator``, not ``torch.manual_seed``, which
    also re-seeds every CUDA generator): with 0 workers the items are made in the training process,
    and its CUDA stream (drop path, dropout) must not depend on the worker count."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochBatchSampler(Sampler):
    """Batches of ``(index, seed)`` for one epoch, from batch ``start``; rank ``r`` of ``world``
    takes the r-th slice of every global batch. The last incomplete global batch is dropped."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.n, self.bs, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.rank, self.world, self.shuffle = rank, world, shuffle

    def batches_per_epoch(self) -> int:
        return self.n // (self.bs * self.world)

    def __len__(self):
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        gb = self.bs * self.world
        for b in range(self.start, self.batches_per_epoch()):
            lo = b * gb + self.rank * self.bs
            yield [(perm[p], sample_seed(self.seed, self.epoch, p)) for p in range(lo, lo + self.bs)]


class RunBatchSampler(Sampler):
    """The whole run's micro-batches: ``EpochBatchSampler`` epochs back to back, from micro-batch
    ``start`` (counted from the run's beginning) for ``count`` micro-batches. One DataLoader over it
    serves the whole run, so its workers start once and keep prefetching across epoch boundaries
    (a loader per epoch would stall at every epoch start while new workers spawn)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        count: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.n, self.bs, self.seed, self.start, self.count = n, batch_size, seed, start, count
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.bpe = n // (batch_size * world)
        if self.bpe == 0:
            raise ValueError(f"{n} samples are fewer than one global batch of {batch_size * world}")

    def __len__(self):
        return max(0, self.count)

    def __iter__(self):
        epoch, first = divmod(self.start, self.bpe)
        left = self.count
        while left > 0:
            for batch in EpochBatchSampler(
                self.n, self.bs, self.seed, epoch, first, self.rank, self.world, self.shuffle
            ):
                yield batch
                left -= 1
                if left == 0:
                    return
            epoch, first = epoch + 1, 0


def micro_batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Micro-batches per epoch and rank; a dataset smaller than one global batch is a BenchError."""
    if n < batch_size * world:
        raise BenchError(f"dataset has {n} samples, fewer than one global batch of {batch_size * world}")
    return n // (batch_size * world)
