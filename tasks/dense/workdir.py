"""The work folder of an mmengine run (``bench seg``, the mmdet engine of ``bench det``):
``bench.core.workdir``'s one service with mmengine's file names (``iter_N.pth``, ``last_checkpoint``).

* ``resume_candidates``: the checkpoints to try, best first (``last_checkpoint``'s file, looked up in
  the folder itself, then ``iter_N.pth`` newest first);
* ``check_record``: the settings guard; a folder whose checkpoints belong to a run with other
  settings is refused, naming the first differing option a user sets before the effective config;
* ``start_fresh``: ``--no-resume`` moves the folder's checkpoints and record aside (nothing deleted);
* ``clean_temps``: removes only the temp files this folder's own writers left.

No mmengine here: ``tasks.dense.mm_runner`` (the runner) and the family modules both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.workdir import RESUME_HINT, WorkDir, check_settings_file, read_settings, write_settings_file

RUN_RECORD = "bench_dense_run.json"  # in the work dir: the settings its checkpoints belong to
LAST_CHECKPOINT = "last_checkpoint"  # mmengine's pointer to the newest checkpoint
# Settings a user sets by option; a resume with other values is refused naming them first (the
# effective config's hash, checked after, changes with most of them too).
EXPLICIT_KEYS = (
    "backbone",
    "checkpoint",
    "checkpoint_sha256",
    "label",
    "data",
    "seed",
    "iterations",
    "batch_size",
    "variant",
    "crop_size",
    "cfg_options",
    "select",
)


def dense_workdir(work_dir: str | os.PathLike) -> WorkDir:
    """The work-folder service for mmengine's file names."""
    return WorkDir(work_dir, pattern="iter_*.pth", settings=RUN_RECORD, writes=(LAST_CHECKPOINT,))


def resume_candidates(work_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of ``work_dir`` to try, best first: the file ``last_checkpoint`` names (by
    its file name, looked up in ``work_dir`` itself, so a copied or moved folder resumes from its
    own files), then every ``iter_N.pth`` newest first."""
    work_dir = Path(work_dir)
    found = dense_workdir(work_dir).checkpoints()
    try:
        named = (work_dir / LAST_CHECKPOINT).read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    first = work_dir / Path(named).name
    if named and first in found:
        found = [first] + [p for p in found if p != first]
    return found


def has_checkpoints(work_dir: str | os.PathLike) -> bool:
    return bool(dense_workdir(work_dir).checkpoints())


def check_record(work_dir: str | os.PathLike, record: dict, resume: bool) -> None:
    """Before anything is read or written: refuse a folder whose checkpoints belong to a run with
    other settings (the options a user sets named first, then the whole record)."""
    wd = dense_workdir(work_dir)
    wd.check_files()  # a FIFO named like our files would block a read forever
    if not resume or not wd.checkpoints():
        return  # nothing to continue: the record is rewritten
    old = read_settings(wd.settings_path)
    if old is None:
        wd.guard(record, resume=True)  # checkpoints without a record: refused, one line
    explicit = {k: v for k, v in record.items() if k in EXPLICIT_KEYS}
    check_settings_file(wd.settings_path, {**old, **explicit}, hint=RESUME_HINT)
    check_settings_file(wd.settings_path, record, hint=RESUME_HINT)


def write_record(work_dir: str | os.PathLike, record: dict) -> Path:
    return write_settings_file(dense_workdir(work_dir).settings_path, record)


def start_fresh(work_dir: str | os.PathLike) -> Path | None:
    """``--no-resume``: the folder's checkpoints, ``last_checkpoint`` and run record move into
    ``previous-<time>/`` (returned; None when there was nothing), so no later resume sees them."""
    return dense_workdir(work_dir).start_fresh()


def clean_temps(work_dir: str | os.PathLike) -> list[Path]:
    """Temp files a killed save of this folder left (``.iter_N.pth.tmp``, ...); nothing else."""
    return dense_workdir(work_dir).clean_temps()


__all__ = [
    "RUN_RECORD",
    "EXPLICIT_KEYS",
    "dense_workdir",
    "resume_candidates",
    "has_checkpoints",
    "check_record",
    "write_record",
    "start_fresh",
    "clean_temps",
]
