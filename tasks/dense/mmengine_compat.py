"""Let mmengine 0.10.7 resume from its own checkpoints under torch >= 2.6, without trusting pickles.

mmengine loads checkpoints with a bare ``torch.load(filename, map_location=...)``. Since torch 2.6
the default is ``weights_only=True``, which only rebuilds tensors and plain containers, and a
checkpoint written by mmengine's ``Runner`` also holds its ``MessageHub`` state: ``HistoryBuffer``
objects with numpy arrays and numpy scalars. So ``resume=True`` fails with "Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer".

``enable_mmengine_checkpoints()`` adds exactly what such a checkpoint contains to torch's
weights-only allowlist (``torch.serialization.add_safe_globals``), found by saving one and reading
the errors (``tests/test_mmengine_compat.py`` keeps it that way):

* ``HistoryBuffer`` (mmengine.logging), rebuilt through its own ``__setstate__``;
* numpy arrays and scalars: ``numpy._core.multiarray._reconstruct``, ``scalar``, ``ndarray``,
  ``dtype`` and the numeric dtype classes (``numpy.dtypes.Float64DType``, ``Int64DType``, ...);
* ``builtins.getattr``: HistoryBuffer's ``__getstate__`` stores its statistics functions
  (``HistoryBuffer.min`` ...), which torch's pickle protocol 2 writes as
  ``getattr(HistoryBuffer, 'min')``. A real ``getattr`` would let a file reach any attribute
  (and from there ``os.system``), so the allowlist maps that name to ``history_buffer_statistic``,
  which returns only ``min``/``max``/``current``/``mean`` of the class ``HistoryBuffer`` and
  refuses everything else.

Everything else (a ``__reduce__`` calling ``os.system``, an ``argparse.Namespace``, any other
class) is still refused by torch. Nothing in site-packages is changed; the allowlist is
process-wide and idempotent.
"""

from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The statistics HistoryBuffer registers for itself (HistoryBuffer._set_default_statistics).
HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")

# numpy dtypes a checkpoint's logs and arrays can have.
_NUMPY_DTYPES = (
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
)


def history_buffer_statistic(obj, name):
    """Stand-in for ``getattr`` while unpickling: ``getattr(HistoryBuffer, name)`` for one of its
    default statistics, an UnpicklingError for anything else."""
    if obj is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    what = obj.__name__ if isinstance(obj, type) else type(obj).__name__ + " instance"
    raise pickle.UnpicklingError(
        f"checkpoint calls getattr({what}, {name!r}); only getattr(HistoryBuffer, s) for s in "
        f"{HISTORY_BUFFER_STATISTICS} is allowed"
    )


def mmengine_safe_globals() -> list:
    """The allowlist entries (classes, functions, or (function, pickled name) pairs)."""
    array_rebuild = np.zeros(1).__reduce__()[0]  # numpy._core.multiarray._reconstruct
    scalar_rebuild = np.float64(0).__reduce__()[0]  # numpy._core.multiarray.scalar
    dtype_classes = sorted({type(np.dtype(t)) for t in _NUMPY_DTYPES}, key=lambda c: c.__name__)
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        array_rebuild,
        scalar_rebuild,
        *dtype_classes,
        (history_buffer_statistic, "builtins.getattr"),
    ]


def enable_mmengine_checkpoints() -> None:
    """Allow ``torch.load(weights_only=True)`` (mmengine's resume) to read mmengine checkpoints."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())
