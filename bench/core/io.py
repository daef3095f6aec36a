"""Atomic file writes: a temp file in the target's folder, flushed and fsynced, then renamed over
the target. A kill or an error leaves the previous file (or nothing) — never half a file."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **open_kwargs):
    """``with atomic_open(p, 'wb') as f: ...`` — ``p`` appears only if the block completes."""
    path = Path(path)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                from bench.core.errors import BenchError
                raise BenchError(f"cannot write {path}: {parent} is an existing file, not a folder")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(obj, path: str | Path, **dump_kwargs) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)
