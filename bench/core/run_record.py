"""The one resume guard: a run folder remembers the settings it was started with, and continuing it
with other settings is refused (it would mix two runs in one set of checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.io import atomic_write_json


def settings_diff(old: dict, new: dict) -> list[str]:
    """``["key old -> new", ...]`` for every key whose value differs, in key order."""
    return [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new), key=str)
        if old.get(k) != new.get(k)
    ]


def read_run_record(path: str | Path) -> dict | None:
    """The recorded settings (None when the file does not exist); an unreadable record is a
    BenchError naming the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BenchError(
            f"{path}: unreadable run record ({e.__class__.__name__}); delete it or use another output folder"
        ) from None
    if not isinstance(record, dict):
        raise BenchError(f"{path}: run record is not a JSON object; delete it or use another output folder")
    return record


def check_run_record(
    path: str | Path,
    record: dict,
    *,
    resume: bool = True,
    hint: str = "use the same settings, another output folder, or --no-resume",
) -> None:
    """Refuse to continue the run recorded at ``path`` with the settings ``record`` (JSON values).

    Nothing to check without ``resume`` or without a record. A difference is a BenchError naming
    the file and the first differing key with both values."""
    if not resume:
        return
    old = read_run_record(path)
    if old is None:
        return
    new = json.loads(json.dumps(record, sort_keys=True, default=str))
    diff = settings_diff(old, new)
    if diff:
        raise BenchError(
            f"{path}: this folder holds a run with other settings ({diff[0]}"
            f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); {hint}"
        )


def write_run_record(path: str | Path, record: dict) -> Path:
    """Write the settings atomically (sorted keys, one per line)."""
    return atomic_write_json(
        json.loads(json.dumps(record, sort_keys=True, default=str)), path, indent=1, sort_keys=True
    )
