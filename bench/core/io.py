"""Atomic file writes: a temp file in the target's folder, flushed and fsynced, then renamed over
the target. A kill or an error leaves the previous file (or nothing) — never half a file, nor an
empty folder made for it; a full disk is one ``WriteError`` line.

The file gets the mode a plain ``open`` would give it (0666 less the umask), not ``mkstemp``'s
0600. A temp file left by a killed process (``.<name>.<random>.tmp``, older than this process) is
removed the next time the same target is written, or by ``clean_stale_temps`` for a whole folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.core.errors import BenchError, DataError, WriteError

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


# errnos of a write that ran out of room: the message says so, the previous file is kept
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(path: Path, e: OSError) -> WriteError:
    """One line for a failed write of ``path``; an ``OSError`` too, with ``e``'s errno."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in _NO_ROOM:
        reason += "; the disk is full or over quota"
    err = WriteError(f"cannot write {path}: {reason} (nothing was changed there)")
    err.errno, err.strerror, err.filename = e.errno, e.strerror, str(path)
    return err


def _make_parents(folder: Path, path: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest first (removed again if the
    write fails, so a failed write leaves no empty folders)."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BenchError(f"cannot write {path}: {parent} is an existing file, not a folder")
            break
        missing.append(parent)
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stop at one that is not empty (someone else's files)
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, before_replace: Callable[[], None] | None = None, **open_kwargs):
    """``with atomic_open(p, 'wb') as f: ...`` — ``p`` appears only if the block completes.
    ``before_replace`` runs after the data is on disk and before the rename (e.g. to record a checksum).
    A failed write (a full disk, a read-only folder) removes the temp file and the folders this call
    created, keeps the previous ``p`` and raises one line (``WriteError``, also an ``OSError``); other
    errors raised inside the block pass through unchanged."""
    path = Path(path)
    created: list[Path] = []
    tmp = None
    in_block = False
    try:
        created = _make_parents(path.parent, path)
        clean_stale_temps(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            in_block = True
            yield f
            in_block = False
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _remove_empty(created)
        ours = isinstance(e, OSError) and not isinstance(e, BenchError) and (not in_block or e.errno in _NO_ROOM)
        if ours:
            raise _write_error(path, e) from None
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
