"""Data: a dataset on disk, or the small generated one (made once per suite output)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench.runner.state import jsonable
from bench.suite import TaskEntry

# --------------------------------------------------------------------------------------------------
# Data: a dataset on disk, or the small generated one
# --------------------------------------------------------------------------------------------------


def data_dir(task: TaskEntry, out_dir: Path) -> Path:
    """Where the task reads its data: ``task.data``, or ``<out>/data/<task>-<hash of generate>``."""
    if task.data is not None:
        return task.data
    key = json.dumps({"task": task.task, **jsonable(task.generate)}, sort_keys=True)
    return out_dir / "data" / f"{task.task}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def dataset_root(task: TaskEntry, out_dir: Path) -> Path:
    """The data root to hand to the task, generating the small dataset first if needed. A
    generated set is built in a temporary folder and renamed into place, so it is all or nothing."""
    final = data_dir(task, out_dir)
    if task.data is not None:
        return final
    marker = final / ".generated.json"
    if not marker.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            print(f"generating {task.task} data in {final} ({task.generate})", flush=True)
            made = task.spec.generate(tmp / "d", **task.generate)
            (tmp / "d" / ".generated.json").write_text(
                json.dumps(
                    {"task": task.task, "generate": jsonable(task.generate), "root": str(made.relative_to(tmp / "d"))}
                ),
                encoding="utf-8",
            )
            try:
                os.replace(tmp / "d", final)
            except OSError:  # another job made it meanwhile (Slurm cells run side by side)
                if not marker.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / json.loads(marker.read_text(encoding="utf-8"))["root"]
