"""The resume guard's file functions under their older names; the rules live in
``bench.core.workdir`` (the one work-folder service), which new code uses directly."""

from __future__ import annotations

from pathlib import Path

from bench.core.workdir import RESUME_HINT, check_settings_file, read_settings, settings_diff, write_settings_file

__all__ = ["check_run_record", "read_run_record", "settings_diff", "write_run_record"]


def read_run_record(path: str | Path) -> dict | None:
    """The recorded settings (None when the file does not exist); see ``workdir.read_settings``."""
    return read_settings(path)


def check_run_record(path: str | Path, record: dict, *, resume: bool = True, hint: str = RESUME_HINT) -> None:
    """Refuse to continue the run recorded at ``path`` with the settings ``record`` (only with
    ``resume``); see ``workdir.check_settings_file``."""
    if resume:
        check_settings_file(path, record, hint=hint)


def write_run_record(path: str | Path, record: dict) -> Path:
    """Write the settings atomically (sorted keys, one per line)."""
    return write_settings_file(path, record)
