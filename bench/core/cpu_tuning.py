"""CPU allocator tuning for training steps.

A ViT training step allocates and frees many multi-megabyte tensors (bf16 copies of every weight
under autocast, activations, gradients). glibc's malloc serves blocks above its mmap threshold with
fresh ``mmap`` calls and returns them with ``munmap``, so every step page-faults the same memory
in again (the effect on ``bench perf pretrain`` is in docs/). ``mallopt`` applies the settings below at run time
(the ``MALLOC_*_`` environment variables would need a restart): blocks up to 32 MiB come from the
heap, freed memory is kept (trimmed only beyond 1 GiB), and the heap grows 256 MiB at a time.
No-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}
_done = False


def tune_malloc() -> bool:
    """Apply ``SETTINGS`` once; True if glibc accepted all of them."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(k, v) == 1 for k, v in SETTINGS.items())
    return _done
