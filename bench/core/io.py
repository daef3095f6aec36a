"""Atomic file writes: a temp file in the target's folder, flushed and fsynced, then renamed over
the target. A kill or an error leaves the previous file (or nothing) — never half a file.

The file gets the mode a plain ``open`` would give it (0666 less the umask), not ``mkstemp``'s
0600. A temp file left by a killed process (``.<name>.<random>.tmp``, older than this process) is
removed the next time the same target is written, or by ``clean_stale_temps`` for a whole folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

_START = time.time()  # a temp file last modified before this cannot belong to a write of this process
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def process_umask() -> int:
    """The umask, read without changing it where /proc allows (``os.umask`` can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def clean_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temp files of ``atomic_open`` in ``folder`` (only those for target ``name`` when
    given) that were last modified before this process started: a killed writer's leftovers."""
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(folder) as entries:
            for e in entries:
                m = _TEMP.match(e.name)
                if not m or (name is not None and m["name"] != name) or not e.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    if e.stat(follow_symlinks=False).st_mtime < _START:
                        os.unlink(e.path)
                        removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, before_replace: Callable[[], None] | None = None, **open_kwargs):
    """``with atomic_open(p, 'wb') as f: ...`` — ``p`` appears only if the block completes.
    ``before_replace`` runs after the data is on disk and before the rename (e.g. to record a checksum)."""
    path = Path(path)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                from bench.core.errors import BenchError

                raise BenchError(f"cannot write {path}: {parent} is an existing file, not a folder")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
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


def load_json(path: str | Path, what: str = "file"):
    """``json.load`` of ``path`` with one-line ``DataError``s naming it: ``<path>: <what> not found``,
    ``<path>: not valid JSON (<reason> at line L column C)``, ``<path>: cannot read (<reason>)``."""
    from bench.core.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:  # "Unterminated string starting at" already ends in "at"
        raise DataError(
            f"{path}: not valid JSON ({e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.reason})") from None
    except (RecursionError, ValueError) as e:  # nesting too deep, or an int over Python's digit limit
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
