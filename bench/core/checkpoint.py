"""Reading and writing checkpoints safely.

* Loading uses ``torch.load(weights_only=True)`` (tensors and plain containers only). A file that
  needs arbitrary unpickling is refused with a message naming ``--trust-checkpoint``; only then is
  it loaded with ``weights_only=False``. ``.safetensors`` files are read with safetensors.
* Saving writes a temp file in the target folder, fsyncs it and renames it over the target, after
  checking there is room: a kill or a full disk never leaves a half-written checkpoint.
* Checksums: ``save_atomic(..., checksums=FILE)`` records the file's sha256 in ``FILE``
  (``sha256sum`` format, so ``sha256sum -c FILE`` checks it too) before the rename, and
  ``load_checkpoint_file(..., sha256=...)`` refuses a file whose bytes changed: ``torch.load`` does not
  check the zip CRCs, so flipped bytes inside a tensor would otherwise load as wrong weights.
* Sizes first: ``torch.load`` allocates each zip record at the size the archive declares and inflates
  into it. ``torch.save`` stores records uncompressed, so a file whose records declare far more bytes
  than the file holds (a deflate bomb) is refused before ``torch.load`` (``check_zip_records``).
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from bench.core.errors import CheckpointError, first_line
from bench.core.io import atomic_open

KNOWN_CONTAINERS = ("model", "state_dict", "module", "model_ema")


ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save: a zip archive (>= 1.6) or a pickle
# Declared record bytes allowed per byte of file (+ MAX_INFLATE_SLACK): torch.save's records are stored, so
# a real checkpoint declares about its own size; a deflate bomb declares thousands of times more.
MAX_INFLATE_RATIO = 2
MAX_INFLATE_SLACK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checksums(path: str | Path) -> dict[str, str]:
    """{file name: sha256} from a ``sha256sum``-format file (empty when it does not exist; lines
    that are not ``<64 hex>  <name>`` are ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and name:
            out[name] = digest
    return out


def write_checksums(path: str | Path, sums: dict[str, str]) -> None:
    from bench.core.io import atomic_write_text

    atomic_write_text(path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def _check_format(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return
    kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a zip archive or a pickle"
    raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint ({kind}; it starts with {head[:12]!r})")


def check_zip_records(path: Path) -> None:
    """Refuse (one-line ``CheckpointError``) a zip checkpoint whose records declare more than
    ``MAX_INFLATE_RATIO`` times the file's size (+ ``MAX_INFLATE_SLACK``) once inflated. Only the
    zip's central directory is read; a file Python's zipfile cannot parse is left to ``torch.load``."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        return
    declared = sum(i.file_size for i in infos)
    if declared > MAX_INFLATE_RATIO * size + MAX_INFLATE_SLACK:
        big = max(infos, key=lambda i: i.file_size)
        raise CheckpointError(
            f"checkpoint {path} declares {declared} bytes of records in a {size}-byte file (largest "
            f"{big.filename!r}: {big.file_size} bytes compressed to {big.compress_size}); torch.save stores "
            f"records uncompressed, so this is refused before inflating"
        )


def load_checkpoint_file(path: str | Path, trust: bool = False, sha256: str | None = None):
    """The object stored in ``path`` (CPU tensors). Raises CheckpointError, one line, naming the file.
    ``sha256``: the digest recorded at save time; a file whose bytes differ is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its sha256 differs from the one recorded when it was saved"
        )
    if path.suffix != ".safetensors":
        _check_format(path)
        check_zip_records(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file: {first_line(e, limit=300)}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only load failed" not in str(e):
            raise CheckpointError(f"checkpoint {path} is corrupt: {first_line(e, limit=300)}") from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects that need arbitrary code to load; "
                f"if you trust its source, pass --trust-checkpoint"
            ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        OverflowError,
        MemoryError,
        RecursionError,
    ) as e:
        # a flipped byte in the pickle stream: the weights-only unpickler fails in any of these ways
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: {type(e).__name__}: {first_line(e, limit=300)}"
        ) from None
    try:  # trusted by the user
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} could not be loaded even with --trust-checkpoint: {first_line(e, limit=300)}"
        ) from None


def unwrap_state_dict(obj, path="checkpoint", containers=KNOWN_CONTAINERS) -> tuple[dict, str]:
    """(state_dict, container key) from ``{'model': sd}``, ``{'state_dict': sd}``, … or a bare sd."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    for key in containers:
        if key in obj and isinstance(obj[key], dict):
            return obj[key], key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, ""
    keys = list(obj)[:10]
    raise CheckpointError(
        f"checkpoint {path}: unknown layout, top-level keys {keys}; expected a state dict or one of {list(containers)}"
    )


def load_state_dict_checked(model: torch.nn.Module, sd: dict, path="checkpoint", allow_missing=(), strict=True):
    """``model.load_state_dict`` with one-line errors: the first mismatched key and both shapes,
    or the missing / unexpected keys. ``allow_missing``: key prefixes that may be absent."""
    own = model.state_dict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: key {k!r} holds a {type(v).__name__}, not a tensor")
        if k in own and own[k].is_floating_point() and not v.is_floating_point():
            # load_state_dict would copy_() it: complex drops its imaginary part, ints become floats
            raise CheckpointError(
                f"checkpoint {path}: key {k!r} holds {v.dtype} values where the model has {own[k].dtype} weights"
            )
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint {path} is for another architecture: key {k!r} has shape "
                f"{tuple(v.shape)} in the file but {tuple(own[k].shape)} in the model"
            )
    missing = [k for k in own if k not in sd and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        what = []
        if missing:
            what.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            what.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"checkpoint {path} does not match the model: {'; '.join(what)}")
    model.load_state_dict(sd, strict=False)
    return missing, unexpected


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _ntensors(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_ntensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_ntensors(v) for v in obj)
    return 0


def file_size_bound(obj) -> int:
    """An upper bound of the bytes ``torch.save(obj)`` writes: the tensor data, plus per tensor its
    zip records and 64-byte alignment (< 1 KiB), plus 1 MiB for the pickled rest."""
    return _nbytes(obj) + 1024 * _ntensors(obj) + (1 << 20)


def check_disk_space(folder: Path, need_bytes: int):
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise CheckpointError(
            f"not enough disk space in {folder} to write a checkpoint: need about "
            f"{need_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free"
        )


class _HashingWriter:
    """A write-only file that hashes what passes through."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data):
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def save_atomic(obj, path: str | Path, *, checksums: str | Path | None = None) -> Path:
    """``torch.save`` (or safetensors for ``.safetensors``) to a temp file + fsync + rename.
    ``checksums``: a ``sha256sum``-format file in which the new file's digest is recorded (before the
    rename, so every file written this way is listed)."""
    path = Path(path)
    # the folder is made by atomic_open (and removed again if the write fails); measure where it will be
    existing = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), Path("."))
    check_disk_space(existing, file_size_bound(obj))
    writer = None

    def record():
        if checksums is not None:
            write_checksums(checksums, {**read_checksums(checksums), path.name: writer.sha256.hexdigest()})

    with atomic_open(path, "wb", before_replace=record) as f:
        writer = _HashingWriter(f)
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            writer.write(save({k: v.contiguous() for k, v in obj.items()}))
        else:
            torch.save(obj, writer)
    return path
