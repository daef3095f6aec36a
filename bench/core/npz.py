"""Reading ``.npz`` files with their sizes checked first.

``np.load`` allocates each array at the shape its ``.npy`` header declares and then inflates the zip
member into it: a small compressed file can declare gigabytes. ``npz_sizes`` reads only the headers
(a few hundred bytes of each member) and ``check_npz`` refuses a file whose arrays would need more
than ``max_bytes`` or far more than the file's own size, before anything is inflated.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from bench.core.errors import DataError

MAX_NPZ_BYTES = 1 << 30  # the arrays of one per-example file: a COCO / ADE20K val run needs a few MB
MAX_NPZ_RATIO = 100  # declared array bytes per byte of file: np.savez stores uncompressed (ratio ~1)


def npz_sizes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} from the ``.npy`` headers of an ``.npz`` file, without reading
    the array data. One-line ``DataError`` naming the file (and member) when it is not a readable
    ``.npz``, a header is malformed or an array holds Python objects."""
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                with z.open(info) as f:
                    out[name] = _read_header(f, path, info.filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:100]})") from None
    return out


def _read_header(f, path: Path, member: str):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise DataError(f"{path}: member {member!r} is not a .npy array ({str(e)[:100]})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: member {member!r} holds Python objects (dtype {dtype}), which are not loaded")
    shape = tuple(int(n) for n in shape)
    if any(not 0 <= n < 2**48 for n in shape) or dtype.itemsize == 0:  # a negative or absurd dimension
        raise DataError(f"{path}: member {member!r} declares shape {shape} of {dtype}, which no array has")
    return shape, dtype


def check_npz(path: str | os.PathLike, max_bytes: int = MAX_NPZ_BYTES, max_ratio: float = MAX_NPZ_RATIO) -> int:
    """The bytes the arrays of ``path`` need once loaded, after refusing (one-line ``DataError``) a
    file whose headers declare more than ``max_bytes``, or more than ``max_ratio`` times the file's
    size (plus 1 MiB): a deflate bomb."""
    path = Path(path)
    sizes = npz_sizes(path)
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in sizes.values())
    file_size = path.stat().st_size
    if total > max_bytes or total > max_ratio * file_size + (1 << 20):
        name, (shape, dtype) = max(sizes.items(), key=lambda kv: math.prod(kv[1][0]) * kv[1][1].itemsize)
        raise DataError(
            f"{path}: its arrays declare {total} bytes (largest {name!r}: shape {shape} {dtype}) in a "
            f"{file_size}-byte file, over the limit ({max_bytes} bytes, {max_ratio:g} x the file size); "
            f"refused before inflating"
        )
    return total


def load_npz(path: str | os.PathLike, names=None, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """{name: array} of ``path`` (only ``names`` when given; absent names are left out), after
    ``check_npz``; pickled objects are never loaded. One-line ``DataError``s naming the file."""
    check_npz(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            wanted = data.files if names is None else [n for n in names if n in data.files]
            return {n: np.asarray(data[n]) for n in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError, OverflowError) as e:
        raise DataError(
            f"{path}: unreadable .npz file ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})"
        ) from None
