"""Seeding. Every entry point calls ``seed_everything(seed)`` *before* it builds a model, so the
initial weights — not only the data order — follow from the seed.

What is deterministic: on CPU, the same seed on the same hardware and software gives identical
weights, logs and metrics (tested), and a resumed run repeats the uninterrupted one bit for bit.
On GPU, cuDNN/cuBLAS kernel selection and atomics in some backward kernels (e.g. index_add, scatter,
the ROI-align backward of detection) can differ run to run; set ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
and ``torch.use_deterministic_algorithms(True)`` for bitwise repeatability at some speed cost.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from bench.core.errors import BenchError

SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed


def check_seed(seed) -> int:
    """``seed`` as an int in [0, 2**63): a one-line error for what torch cannot seed with."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise BenchError(f"--seed must be an integer in 0..{SEED_MAX}, got {seed!r}")
    return seed


def seed_everything(seed: int) -> None:
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
