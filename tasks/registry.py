"""Every transfer task, by name: the declarations of ``tasks/<family>/task.py`` in one dict.

A new family adds one line below (and its package to the layers in pyproject.toml); a new task of
an existing family is one more ``TaskSpec`` in that family's ``task.py``.
"""

from __future__ import annotations

from bench.core.errors import BenchError
from tasks.spec import Command, Table, TaskSpec

from tasks.detection.task import TASKS as DETECTION  # isort: skip
from tasks.segmentation.task import TASKS as SEGMENTATION  # isort: skip
from tasks.classification.task import TASKS as CLASSIFICATION  # isort: skip

TASKS: dict[str, TaskSpec] = {t.name: t for t in (*DETECTION, *SEGMENTATION, *CLASSIFICATION)}
# bench subcommands (det, seg, cls) and tables, in declaration order, each once
COMMANDS: tuple[Command, ...] = tuple(dict.fromkeys(t.command for t in TASKS.values() if t.command))
TABLES: tuple[Table, ...] = tuple(dict.fromkeys(tb for t in TASKS.values() for tb in t.tables.values()))


def runnable_tasks() -> tuple[str, ...]:
    """Names of the tasks a suite can run (those with a ``run``)."""
    return tuple(name for name, t in TASKS.items() if t.runnable)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise BenchError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]
