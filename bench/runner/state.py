"""Cell state: what a cell depends on (``cell.json``), whether it is done, and the checks of a
suite's inputs before anything runs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.run_record import read_run_record, settings_diff
from bench.core.workdir import PREVIOUS_PREFIX, move_aside
from bench.runner.plan import Cell, row_ids
from bench.suite import Suite, TaskEntry

CONFIG_FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json")
# Config files inside the package are trusted; a .py config from elsewhere runs code when read.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "tasks"
PRETRAIN_DATA = ("embedded", "digits", "")  # bench.core.data.pretrain_dataset's built-in sources
CELL_FILE = "cell.json"
HELD_LOCKS: set[int] = set()  # descriptors of the output-folder locks this process holds


# --------------------------------------------------------------------------------------------------
# Cell settings (cell.json) and status
# --------------------------------------------------------------------------------------------------


def cell_settings(cell: Cell) -> dict:
    """What a cell's result depends on, as JSON (written to ``cell.json`` in its work dir)."""
    init = cell.init
    if cell.kind == "pretrain":
        return jsonable({"init": init.init, "arch": init.arch, **init.pretrain})
    t = cell.task
    if cell.kind == "floor":
        data = str(t.data) if t.data else None
        return jsonable({"floors": init.init, "task": t.task, "seed": cell.seed, "data": data, "generate": t.generate})
    weights = (
        {"pretrained by": cell.needs, **init.pretrain}
        if cell.needs
        else str(init.checkpoint)
        if init.checkpoint
        else None
    )
    settings = {
        "backbone": init.backbone,
        "weights": weights,
        "extra": init.extra,
        "task": t.task,
        "protocol": t.protocol,
        "k": cell.k,
        "seed": cell.seed,
        "data": str(t.data) if t.data else None,
        "generate": t.generate,
        "config": t.config_for(init.arch),
        "iters": t.iters,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "bf16": t.amp,  # the key cell.json files have always had (a rename would restart cells)
        "config_digest": config_digest(t, init.arch),
    }
    if cell.role == "candidate":
        settings.update(overrides=dict(cell.point), select=candidate_select(t))
    elif cell.role == "final":
        settings.update(search={"grid": search_grid(cell), "select_on": t.select_on})
    return jsonable(settings)


def config_digest(task: TaskEntry, arch: str) -> str:
    """12 hex of the config files a transfer cell reads: its family's shipped configs (protocol
    files and named configs, which a named config is merged onto) and a config file the suite names
    by path. Editing one of them makes the cells that read it cells with other settings."""
    shipped = SHIPPED_CONFIGS / task.spec.family / "configs"
    files = sorted(p for p in shipped.rglob("*") if p.suffix in CONFIG_FILE_SUFFIXES and p.name != "__init__.py")
    config = task.config_for(arch)
    if config and Path(config).is_file():
        files.append(Path(config))
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def same_settings(old: dict, new: dict) -> bool:
    """Whether a cell's recorded settings are ``new``; a record written before ``config_digest``
    existed is compared without it (it would otherwise refuse every unfinished cell of an older run)."""
    if "config_digest" not in old:
        new = {k: v for k, v in new.items() if k != "config_digest"}
    return old == new


def changed_cells(cells: list[Cell], out_dir: Path) -> dict[str, str]:
    """Cell name -> what changed, for each cell whose work folder records other settings. Strict:
    a record from before ``config_digest`` counts as changed (its config files are unknown)."""
    out = {}
    for cell in cells:
        old = _recorded_settings(out_dir / cell.work_dir)
        new = cell_settings(cell)
        if old is not None and old != new:
            out[cell.name] = ", ".join(settings_diff(old, new))
    return out


def set_aside(work: Path) -> Path:
    """Move everything in a cell's work folder (but earlier set-aside folders) into
    ``previous-<UTC time>/`` inside it: the cell starts again, nothing is deleted."""
    return move_aside(work, [p for p in work.iterdir() if not p.name.startswith(PREVIOUS_PREFIX)])


def candidate_select(task: TaskEntry) -> str | None:
    """What a candidate reports on: the held-out part of the training set, or the val split."""
    return "heldout" if task.select_on == "heldout" else None


def search_grid(cell: Cell) -> dict:
    """The grid of a final cell, rebuilt from its candidates' points (name -> list of values)."""
    return {name: list(values) for name, values in cell.init.search.get(cell.task.label, cell.task.search).items()}


def jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _recorded_settings(work: Path) -> dict | None:
    """The settings in ``cell.json`` (None when the cell never started)."""
    record = read_run_record(work / CELL_FILE)
    if record is None:
        return None
    if not isinstance(record.get("settings"), dict):
        raise BenchError(
            f"{work / CELL_FILE}: cell file without 'settings'; delete the folder {work} to start that cell again"
        )
    return record["settings"]


def cell_status(cell: Cell, out_dir: Path, done_ids: set[str]) -> str:
    """'done' (ok row / pretrain.pth exists), 'resume' (its work dir holds state) or 'todo'."""
    work = out_dir / cell.work_dir
    if cell.kind == "pretrain":
        if (work / "pretrain.pth").is_file():
            return "done"
    elif all(i in done_ids for i in row_ids(cell)):
        return "done"
    if work.is_dir() and any(p.name != CELL_FILE for p in work.iterdir()):
        return "resume"
    return "todo"


def check_inputs(
    suite: Suite, cells: list[Cell], out_dir: Path, done_ids: set[str], rerun: frozenset[str] = frozenset()
) -> list[str]:
    """Everything a run needs from disk, checked before the first cell starts. Returns every
    problem at once (missing or empty checkpoints, data folders and config files; config files
    that would run as Python without trust), one line each, naming the suite key. Raises at once
    when an unfinished cell would resume with other settings. ``rerun``: names of the cells with
    other settings that ``--rerun-changed`` sets aside and runs again (not compared here)."""
    where = str(suite.path)
    problems: list[str] = []

    def problem(text: str) -> None:
        if text not in problems:
            problems.append(text)

    for cell in cells:
        status = cell_status(cell, out_dir, done_ids)
        work = out_dir / cell.work_dir
        old = None if cell.name in rerun else _recorded_settings(work)
        new = cell_settings(cell) if old is not None else None  # it reads and hashes config files
        if old is not None and not same_settings(old, new):
            change = ", ".join(settings_diff(old, new))
            if cell.kind != "pretrain" and status == "done":
                print(
                    f"note: {cell.name} is done with other settings ({change}); kept (--rerun-changed runs it again).",
                    file=sys.stderr,
                )
            else:
                what = "pretrained" if status == "done" else "started"
                raise BenchError(
                    f"{where}: cell {cell.name} was {what} in {work} with other "
                    f"settings ({change}); pass --rerun-changed to set it aside and run it "
                    "again, or use another --out"
                )
        if status == "done":
            continue
        init, task = cell.init, cell.task
        if init.checkpoint is not None and cell.needs is None:
            if not init.checkpoint.is_file():
                problem(f"key 'inits.{init.label}.checkpoint': file {init.checkpoint} not found")
            elif init.checkpoint.stat().st_size == 0:
                problem(f"key 'inits.{init.label}.checkpoint': file {init.checkpoint} is empty")
        if cell.kind == "pretrain":
            data = init.pretrain.get("data", "embedded")
            if data not in PRETRAIN_DATA:
                if not Path(data).is_dir():
                    problem(
                        f"key 'inits.{init.label}.pretrain.data': folder {data} not found "
                        f"(or use one of {', '.join(PRETRAIN_DATA)})"
                    )
                elif _is_empty_dir(Path(data)):
                    problem(f"key 'inits.{init.label}.pretrain.data': folder {data} is empty")
            continue
        if task.data is not None:
            if not task.data.exists():
                problem(f"key 'tasks.{task.label}.data': {task.data} not found")
            elif _is_empty_dir(task.data):
                problem(f"key 'tasks.{task.label}.data': folder {task.data} is empty")
        config = task.config_for(init.arch)
        if config and Path(config).suffix in CONFIG_FILE_SUFFIXES:
            path = Path(config)
            if not path.is_file():
                problem(f"key 'tasks.{task.label}.config': file {config} not found")
            elif path.stat().st_size == 0:
                problem(f"key 'tasks.{task.label}.config': file {config} is empty")
            elif path.suffix == ".py" and not task.trust_config and not path.resolve().is_relative_to(SHIPPED_CONFIGS):
                problem(
                    f"key 'tasks.{task.label}.config': {config} is outside the package and is "
                    f"run as Python when read; set 'tasks.{task.label}.trust_config: true' "
                    "(or pass --trust-config) if you trust it"
                )
    return problems


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def refuse(suite: Suite, problems: list[str]) -> None:
    """Stop on the problems ``check_inputs`` found: one is the error line; several are printed
    one a line ('problem: ...', stderr) before the error line that counts them."""
    if len(problems) == 1:
        raise BenchError(f"{suite.path}: {problems[0]}")
    if problems:
        for text in problems:
            print(f"problem: {text}", file=sys.stderr)
        raise BenchError(
            f"{suite.path}: {len(problems)} problems with the suite's inputs (listed above); the first: {problems[0]}"
        )


@contextlib.contextmanager
def out_dir_lock(out_dir: Path):
    """One ``bench run`` per output directory at a time (two would run the same cells). The lock's
    descriptor is in ``HELD_LOCKS`` while held: a forked cell closes its copy, so the lock goes
    with the runner that took it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"{out_dir}: another `bench run` is using this output directory (option --out)") from None
        HELD_LOCKS.add(fd)
        yield
    finally:
        HELD_LOCKS.discard(fd)
        os.close(fd)


def cell_checkpoint(cell: Cell, out_dir: Path) -> Path | None:
    """The weights a cell starts from: its pretraining cell's ``pretrain.pth``, the init's
    ``checkpoint`` file, or None (random init; and pretraining cells)."""
    if cell.needs:
        return out_dir / "work" / Path(*cell.needs.split("/")) / "pretrain.pth"
    return cell.init.checkpoint


def is_done(cell: Cell, out_dir: Path, done_ids: set[str]) -> bool:
    if cell.kind == "pretrain":
        return (out_dir / cell.work_dir / "pretrain.pth").is_file()
    return all(i in done_ids for i in row_ids(cell))
