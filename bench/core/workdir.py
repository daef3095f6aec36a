"""The work-folder service: one training run's output folder, for every engine (the shared
pretraining / classification engine, mmengine, detectron2). Each engine supplies only the names of
its checkpoint files and a loader; the rules below are the same for all.

API
---
``WorkDir(path, *, pattern, finals=(), settings="train_settings.json", manifest=None, writes=())``
    ``pattern``: a glob with one ``*`` standing for the step number (digits), e.g.
    ``"checkpoint-*.pth"``, ``"iter_*.pth"``, ``"model_*.pth"``. ``finals``: exact names that count as
    newer than every numbered one (detectron2's ``"model_final.pth"``). ``settings``: the JSON file
    that records the run's settings. ``manifest``: a ``sha256sum``-format file listing the
    checkpoints this engine wrote (digests checked on load; pruning deletes only listed files);
    None when the engine keeps none. ``writes``: the other names the run writes (``log.jsonl``,
    ``last_checkpoint``, ...): their temp files are cleaned, ``start_fresh`` moves them aside.

``wd.checkpoints() -> list[Path]``
    The engine's checkpoints (regular files matching ``pattern`` or ``finals``), newest first.
``wd.step_of(path) -> int | None``
    The step in a checkpoint's name (None for a final name).
``wd.check_files() -> None``
    BenchError (one line, nothing read) when the settings file, the manifest, a ``writes`` name or a
    checkpoint-named entry exists but is not a regular file (a FIFO would block a read forever).
``wd.guard(settings, *, resume) -> None``
    Before anything is loaded or written: ``check_files``; with ``resume`` and checkpoints present,
    the recorded settings must equal ``settings`` (JSON values), else BenchError
    ``<dir>/<settings>: this folder holds a run with other settings (<key> <old> -> <new>); <hint>``
    naming the first differing key; checkpoints without a record are refused too.
``wd.write_settings(settings) -> Path``
    Record the settings (atomically) when the run starts.
``wd.newest_readable(load, *, max_step=None, step_of_state=None) -> tuple[Path, Any] | None``
    Try the checkpoints newest first: the digest recorded in the manifest is checked, then
    ``load(path)`` (which must raise on an unreadable file); an unreadable checkpoint is skipped
    with a warning. The step of the one that loads (``step_of_state(state)`` or its name's) above
    ``max_step`` is refused: a checkpoint of a longer run never continues a shorter one.
``wd.start_fresh() -> Path | None``
    ``--no-resume``: moves the checkpoints, the manifest, the settings record and ``writes`` into
    ``<dir>/previous-<UTC time>/`` (returned; None when there was nothing to move). Nothing is
    deleted, and a later resume does not see them.
``wd.clean_temps() -> list[Path]``
    Removes the temp files a killed writer of *this* folder's files left: ``.<name>.<random>.tmp``
    whose ``<name>`` is one the run writes (checkpoint pattern, finals, settings, manifest,
    ``writes``) and last modified before this process started. Any other file (a user's
    ``.thesis.draft2.tmp``) is never touched.
``wd.prune(keep_last) -> list[Path]``
    Deletes all but the newest ``keep_last`` checkpoints *listed in the manifest* (and their lines).

Module functions:

``settings_diff(old, new) -> list[str]``: ``"key old -> new"`` per differing key, in key order.
``check_checkpoint_settings(path, recorded, settings) -> None``: refuse a checkpoint that recorded
    other settings than the run's (one line naming the first differing key).
``read_settings(path) -> dict | None``, ``check_settings_file(path, settings, *, hint)`` and
    ``write_settings_file(path, settings)``: the settings guard for a record file of another name.
``check_regular(path) -> bool``: exists? (BenchError when it exists but is not a regular file).
``check_steps(value, flag="--iters") -> int``: a positive integer, else one line naming ``flag``.
``scale_step(value, old_total, new_total) -> int`` and
``scale_milestones(milestones, old_total, new_total, *, distinct=False, flag="--iters") -> list[int]``:
    the one rule for fitting a schedule written for ``old_total`` steps into ``new_total``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.core.checkpoint import file_sha256, read_checksums, write_checksums
from bench.core.errors import BenchError, CheckpointError, first_line
from bench.core.io import atomic_write_json

RESUME_HINT = "use the same settings, another --out, or --no-resume"
PREVIOUS_PREFIX = "previous-"
_STARTED = time.time()  # a temp file last modified before this cannot belong to a write of this process


# ------------------------------------------------------------------------------------------------
# Settings records
# ------------------------------------------------------------------------------------------------
def plain_json(record: dict) -> dict:
    """``record`` as it reads back from JSON (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def settings_diff(old: dict, new: dict) -> list[str]:
    """``["key old -> new", ...]`` for every key whose value differs, in key order."""
    return [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new), key=str)
        if old.get(k) != new.get(k)
    ]


def _other_settings(where: str | Path, diff: list[str], hint: str) -> BenchError:
    more = f" and {len(diff) - 1} more" if len(diff) > 1 else ""
    return BenchError(f"{where}: this folder holds a run with other settings ({diff[0]}{more}); {hint}")


def check_regular(path: Path) -> bool:
    """Whether ``path`` exists; a BenchError when it exists but is not a regular file (a FIFO, a
    folder, a device): reading it could block forever or fail deep inside an engine."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise BenchError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise BenchError(f"{path}: not a regular file; move it away or use another --out")
    return True


def read_settings(path: str | Path) -> dict | None:
    """The recorded settings (None when the file does not exist); an unreadable record, or one that
    is not a regular file, is a BenchError naming the file."""
    path = Path(path)
    if not check_regular(path):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BenchError(
            f"{path}: unreadable run record ({e.__class__.__name__}); delete it or use another output folder"
        ) from None
    if not isinstance(record, dict):
        raise BenchError(f"{path}: run record is not a JSON object; delete it or use another output folder")
    return record


def check_settings_file(path: str | Path, settings: dict, *, hint: str = RESUME_HINT) -> None:
    """Refuse to continue the run recorded at ``path`` with ``settings`` (nothing to check without
    a record): BenchError naming the file and the first differing key with both values."""
    old = read_settings(path)
    if old is not None:
        diff = settings_diff(old, plain_json(settings))
        if diff:
            raise _other_settings(path, diff, hint)


def write_settings_file(path: str | Path, settings: dict) -> Path:
    """Write the settings atomically (sorted keys, one per line)."""
    return atomic_write_json(plain_json(settings), path, indent=1, sort_keys=True)


def check_checkpoint_settings(path: str | Path, recorded: dict | None, settings: dict, *, hint: str = RESUME_HINT):
    """Refuse checkpoint ``path`` when the settings it recorded (``recorded``; None: it recorded
    none, nothing to check) differ from the run's ``settings``."""
    if recorded is None:
        return
    diff = settings_diff(plain_json(recorded), plain_json(settings))
    if diff:
        more = f" and {len(diff) - 1} more" if len(diff) > 1 else ""
        raise CheckpointError(f"{path}: checkpoint of a run with other settings ({diff[0]}{more}); {hint}")


# ------------------------------------------------------------------------------------------------
# The folder
# ------------------------------------------------------------------------------------------------
class WorkDir:
    """One run's output folder (see the module docstring for the API)."""

    def __init__(
        self,
        path: str | Path,
        *,
        pattern: str,
        finals: Iterable[str] = (),
        settings: str = "train_settings.json",
        manifest: str | None = None,
        writes: Iterable[str] = (),
    ):
        if pattern.count("*") != 1 or any(c in pattern for c in "?[]/"):
            raise ValueError(f"pattern {pattern!r}: one '*' for the step number, no other wildcards")
        self.path, self.pattern, self.finals = Path(path), pattern, tuple(finals)
        head, tail = pattern.split("*")
        self._step_re = re.compile(rf"^{re.escape(head)}(\d+){re.escape(tail)}$")
        self.settings_name, self.manifest_name, self.writes = settings, manifest, tuple(writes)

    # -- names ---------------------------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.path / self.settings_name

    @property
    def manifest_path(self) -> Path | None:
        return None if self.manifest_name is None else self.path / self.manifest_name

    def step_of(self, path: str | Path) -> int | None:
        m = self._step_re.match(Path(path).name)
        return int(m[1]) if m else None

    def is_checkpoint_name(self, name: str) -> bool:
        return name in self.finals or self._step_re.match(name) is not None

    def _entries(self) -> list[os.DirEntry]:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            with os.scandir(self.path) as it:
                return list(it)
        return []

    def checkpoints(self) -> list[Path]:
        found = []
        for e in self._entries():
            if self.is_checkpoint_name(e.name) and e.is_file(follow_symlinks=False):
                step = self.step_of(e.name)
                # finals first (in the order given), then numbered ones by step
                key = (float("inf"), -self.finals.index(e.name)) if step is None else (step, 0)
                found.append((key, e.name))
        return [self.path / name for _, name in sorted(found, reverse=True)]

    def own_names(self) -> list[str]:
        """The fixed names of the files the run writes (checkpoint names aside)."""
        return [n for n in (self.settings_name, self.manifest_name, *self.writes) if n]

    # -- guard ---------------------------------------------------------------------------------
    def check_files(self) -> None:
        for name in self.own_names():
            check_regular(self.path / name)
        for e in self._entries():
            if self.is_checkpoint_name(e.name):
                check_regular(Path(e.path))

    def guard(self, settings: dict, *, resume: bool, hint: str = RESUME_HINT) -> None:
        self.check_files()
        if not (resume and self.checkpoints()):
            return
        if not self.settings_path.exists():
            raise BenchError(
                f"{self.path}: holds checkpoints but no run record ({self.settings_name}), so what they "
                f"belong to is unknown; use another --out or --no-resume"
            )
        check_settings_file(self.settings_path, settings, hint=hint)

    def write_settings(self, settings: dict) -> Path:
        return write_settings_file(self.settings_path, settings)

    # -- resume --------------------------------------------------------------------------------
    def newest_readable(
        self,
        load: Callable[[Path], Any],
        *,
        max_step: int | None = None,
        step_of_state: Callable[[Any], int | None] | None = None,
    ) -> tuple[Path, Any] | None:
        sums = self._sums()
        for p in self.checkpoints():
            try:
                if p.name in sums and file_sha256(p) != sums[p.name]:
                    raise CheckpointError(
                        f"checkpoint {p} is corrupt: its sha256 differs from the one recorded when it was saved"
                    )
                state = load(p)
            except Exception as e:  # any unreadable file: the one before is tried
                warnings.warn(f"skipping unreadable checkpoint {p}, falling back to the previous one: {first_line(e)}")
                continue
            step = step_of_state(state) if step_of_state is not None else self.step_of(p)
            if max_step is not None and step is not None and step > max_step:
                raise CheckpointError(
                    f"{p}: checkpoint at step {step} of a longer run than this one ({max_step} steps); "
                    f"use --no-resume or another --out"
                )
            return p, state
        return None

    def _sums(self) -> dict[str, str]:
        if self.manifest_path is None or not check_regular(self.manifest_path):
            return {}
        return read_checksums(self.manifest_path)

    # -- fresh start, clean-up, pruning ----------------------------------------------------------
    def start_fresh(self) -> Path | None:
        moving = [*self.checkpoints(), *(self.path / n for n in self.own_names())]
        moving = [p for p in moving if p.is_file() or p.is_symlink()]
        return move_aside(self.path, moving) if moving else None

    def clean_temps(self) -> list[Path]:
        own = set(self.own_names())
        removed = []
        for e in self._entries():
            if not (e.name.startswith(".") and e.name.endswith(".tmp")):
                continue
            # '.<target>.<random>.tmp' (bench.core.io.atomic_open) or '.<target>.tmp'
            inner = e.name[1:-4]
            targets = (inner, inner.rpartition(".")[0])
            if not any(t in own or self.is_checkpoint_name(t) for t in targets if t):
                continue
            if not e.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if e.stat(follow_symlinks=False).st_mtime < _STARTED:
                    os.unlink(e.path)
                    removed.append(Path(e.path))
        return removed

    def prune(self, keep_last: int) -> list[Path]:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if self.manifest_path is None:
            return []
        sums = self._sums()
        listed = [p for p in self.checkpoints() if p.name in sums]
        removed = []
        for old in listed[keep_last:]:
            old.unlink(missing_ok=True)
            removed.append(old)
        kept = {p.name for p in listed[:keep_last]}
        left = {n: d for n, d in sums.items() if n in kept or not self.is_checkpoint_name(n)}
        if left != sums:
            write_checksums(self.manifest_path, left)
        return removed


# ------------------------------------------------------------------------------------------------
# Schedule scaling: the one rule for every engine
# ------------------------------------------------------------------------------------------------
def move_aside(folder: Path, paths: Iterable[Path]) -> Path:
    """Move ``paths`` (entries of ``folder``) into a new ``folder/previous-<UTC time>/``: a fresh
    start that deletes nothing. Returns that folder."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = Path(folder) / f"{PREVIOUS_PREFIX}{stamp}"
    aside.mkdir()
    for p in paths:
        os.replace(p, aside / p.name)
    return aside


def check_steps(value, flag: str = "--iters") -> int:
    """``value`` as a positive int, else a one-line BenchError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise BenchError(f"{flag} {value!r}: must be a positive integer")
    return int(value)


def scale_step(value: int, old_total: int, new_total: int) -> int:
    """A step boundary of an ``old_total``-step schedule moved to keep its fraction of a
    ``new_total``-step run: 0 (the start) stays 0, the end (``>= old_total``) becomes ``new_total``,
    any other boundary is rounded and at least 1."""
    if value <= 0:
        return 0
    if value >= old_total:
        return new_total
    return max(1, int(round(value * new_total / old_total)))


def scale_milestones(
    milestones: Iterable[int], old_total: int, new_total: int, *, distinct: bool = False, flag: str = "--iters"
) -> list[int]:
    """``scale_step`` of each milestone. ``distinct``: keep them strictly increasing and below
    ``new_total`` (fvcore's multi-step schedule wants ``0 < m1 < m2 < ... < total``), one step
    apart at least; a run too short for that is a BenchError naming ``flag``."""
    ms = [scale_step(int(m), old_total, new_total) for m in milestones]
    if not distinct:
        return ms
    n = len(ms)
    if new_total < n + 1:
        raise BenchError(
            f"{flag} {new_total}: the step schedule has {n} milestones and needs at least {n + 1} iterations"
        )
    out, prev = [], 0
    for i, m in enumerate(ms):
        prev = min(max(prev + 1, m), new_total - (n - i))
        out.append(prev)
    return out
