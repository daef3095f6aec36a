"""``bench run SUITE``: run every cell of a suite that is not done yet, then write the tables.

A suite (``bench/suites/*.yaml``, read by ``bench.suite.load_suite``) expands into *cells*:

* one **pretraining cell** ``<init>/pretrain`` per init that says ``pretrain: {...}``. It runs the
  pretrainer (``backbones.pretrainers.mae.pretrain_mae`` or ``backbones.pretrainers.PRETRAINERS[method]``) in
  ``<out>/work/<init>/pretrain`` and yields ``pretrain.pth``. Pretraining is done once per init and
  shared by all seeds (the seeds vary the transfer runs, as the paper's error bars do);
* one **transfer cell** per init x task (x k for partial fine-tuning) x seed, named
  ``<init>/<task>/seed<s>`` (``<init>/<task>/k<k>/seed<s>``). It calls the task's declared
  ``run`` (``tasks.registry``; e.g. ``tasks.detection.run.run_detection``), which builds
  ``build_backbone(f'{init}_{arch}', checkpoint)``, with ``<out>/work/<cell name>`` as its work dir,
  and appends the task's row to ``<out>/runs.jsonl``. The cell id is that row's ``run_id``
  (``bench.core.results.default_run_id`` of suite, task, protocol, k, init, arch, seed and the init's
  identity extras such as MAE's ``mask_ratio``).

Running a suite again continues where it stopped:

* a transfer cell whose id has an 'ok' row is skipped; a pretraining cell whose ``pretrain.pth``
  exists is skipped;
* an interrupted cell (killed, out of time, requeued) is started again with the same work dir and
  ``resume=True``: the engine and mmengine continue from the last checkpoint there;
* a cell that raises is recorded as a 'failed' row (the error's first line; the traceback is in its
  ``error.log``) and the other cells still run. Cells that need a failed pretraining are recorded as
  failed too. Failed cells are tried again by the next ``bench run``.
* Each cell writes its settings to ``cell.json`` in its work dir. If the suite file was edited so
  that an unfinished (or pretraining) cell would continue with other settings, ``bench run`` stops
  before doing anything and says which folder to delete.

Generated datasets (``generate:`` in a task) are made once in ``<out>/data/<task>-<hash>``.
At the end, ``bench.tables.run_table`` writes the tables (CSV, LaTeX, Markdown) and plots of this
suite's rows into ``<out>`` and the Markdown tables are printed.

Where cells run: here, one after the other (``--local``, the default), or as Slurm jobs
(``--slurm partition=...,gpus-per-node=8,...``) through submitit: one job per cell, pretraining
jobs first, then the transfer jobs; a preempted or timed-out job is requeued (``CellJob.checkpoint``)
and its cell resumes from its work dir. ``bench run`` waits for the jobs, then writes the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import fnmatch
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.core.distributed import is_main
from bench.core.errors import BenchError, first_line
from bench.core.results import ResultsStore, default_run_id, make_row
from bench.core.run_record import read_run_record, settings_diff, write_run_record
from bench.progress import Eta
from bench.suite import InitEntry, Suite, TaskEntry, load_suite, pretrainer_fn
from tasks.spec import TransferRun

CONFIG_FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json")
# Config files inside the package are trusted; a .py config from elsewhere runs code when read.
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "tasks"
PRETRAIN_DATA = ("embedded", "digits", "")  # bench.core.data.pretrain_dataset's built-in sources
CELL_FILE = "cell.json"
ERROR_LOG = "error.log"
SMOKE_NOTE = (
    "These are smoke-scale numbers: a tiny ViT pretrained for minutes on CPU and transferred "
    "to small sets (scikit-learn's digits, or generated data). They are NOT comparable to the "
    "paper's full-scale numbers (He et al. 2021); a table shows the paper's numbers only for "
    "its own datasets and models."
)
FULL_NOTE = (
    "Full-scale suite: compare with the 'paper' columns only if the datasets, schedules "
    "and checkpoints match the paper's (see the suite file)."
)


@dataclass(frozen=True)
class Cell:
    """One unit of work. ``name`` is what ``--only``/``--skip`` match and where it works
    (``<out>/work/<name>``); ``id`` is the results store ``run_id`` of its row."""

    name: str
    kind: str  # 'pretrain' | 'transfer'
    id: str
    init: InitEntry
    task: TaskEntry | None = None  # transfer cells
    seed: int = 0
    k: int | None = None  # protocol 'partial'
    needs: str | None = None  # name of the pretraining cell whose pretrain.pth it uses
    # A search (``search:`` in the suite): 'candidate' cells train one grid point each and report
    # on the selection split; the 'final' cell (named and identified like a plain cell) runs the
    # best point on the reported split. ``point``: the candidate's (name, value) pairs.
    role: str | None = None
    point: tuple = ()
    candidates: tuple = ()  # final: its candidate Cells

    @property
    def work_dir(self) -> Path:
        """Relative to the suite's output directory."""
        return Path("work", *self.name.split("/"))


@dataclass
class RunSummary:
    cells: list[Cell]
    ran: list[str]  # cell names that finished now
    skipped: list[str]  # already done
    failed: dict[str, str]  # cell name -> one-line error
    tables: list[Path]


# --------------------------------------------------------------------------------------------------
# Plan: suite -> cells
# --------------------------------------------------------------------------------------------------


def plan(suite: Suite, only=None, skip=None) -> list[Cell]:
    """The suite's cells, pretraining first, then inits x tasks (x k) x seeds.

    ``only``/``skip`` are glob patterns (a string, comma-separated, or a list) on cell names such
    as ``mae/coco/seed0``, ``*/ade20k/*`` or ``mae/pretrain``. A kept transfer cell always keeps
    the pretraining cell it needs (a no-op when that is done already)."""
    only, skip = _patterns(only), _patterns(skip)
    pretrain_cells: dict[str, Cell] = {}
    transfer: list[Cell] = []
    for init in suite.inits:
        if init.pretrain is not None:
            p = init.pretrain
            cell = Cell(
                name=f"{init.label}/pretrain",
                kind="pretrain",
                init=init,
                seed=int(p.get("seed", 0)),
                id=default_run_id(
                    suite.name, "pretrain", p["method"], None, init.init, init.arch, int(p.get("seed", 0)), init.extra
                ),
            )
            pretrain_cells[init.label] = cell
    for init in suite.inits:
        needs = pretrain_cells[init.label].name if init.label in pretrain_cells else None
        for task in suite.tasks:
            grid = suite.grid(init, task)
            identity = dict(init.extra)  # what makes the run id; a task with engines: which one
            if task.spec.engines:
                identity["engine"] = task.engine or task.spec.engines[0]
            for k in task.k or (None,):
                for seed in suite.seeds:
                    part = f"/k{k}" if k is not None else ""
                    cell = Cell(
                        name=f"{init.label}/{task.label}{part}/seed{seed}",
                        kind="transfer",
                        init=init,
                        task=task,
                        seed=seed,
                        k=k,
                        needs=needs,
                        id=default_run_id(
                            suite.name, task.task, task.protocol, k, init.init, init.arch, seed, identity
                        ),
                    )
                    if grid:
                        candidates = [
                            dataclasses.replace(
                                cell,
                                role="candidate",
                                point=point,
                                name=f"{init.label}/{task.label}{part}/search/seed{seed}/{point_name(point)}",
                                id=_candidate_id(cell.id, point),
                            )
                            for point in grid_points(grid)
                        ]
                        transfer += candidates
                        cell = dataclasses.replace(cell, role="final", candidates=tuple(candidates))
                    transfer.append(cell)
    _check_unique_ids(suite, transfer)
    everything = list(pretrain_cells.values()) + transfer
    for option, patterns in (("--only", only), ("--skip", skip)):
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(c.name, pat) for c in everything):
                raise BenchError(
                    f"option {option}: pattern {pat!r} matches no cell of suite "
                    f"{suite.name!r} (cells look like {transfer[0].name}; see "
                    "--dry-run)"
                )

    def wanted(name: str) -> bool:
        if only and not any(fnmatch.fnmatchcase(name, p) for p in only):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in skip)

    # a kept final cell keeps its search's candidates (no-ops when done)
    keep = {name for c in transfer if wanted(c.name) for name in (c.name, *(k.name for k in c.candidates))}
    transfer = [c for c in transfer if c.name in keep]
    needed = {c.needs for c in transfer}
    pre = [c for c in pretrain_cells.values() if c.name in needed or wanted(c.name)]
    return pre + transfer


def grid_points(grid: dict) -> list[tuple]:
    """The points of a grid ``{name: values}`` as tuples of (name, value) pairs, in the order the
    suite lists them (the last name varies fastest)."""
    names = list(grid)
    return [tuple(zip(names, values)) for values in itertools.product(*grid.values())]


def point_name(point: tuple) -> str:
    """``(('lr', 0.001), ('weight_decay', 0.05))`` -> ``lr=0.001_weight_decay=0.05`` (a folder)."""
    return "_".join(f"{name}={value}" for name, value in point)


def _candidate_id(run_id: str, point: tuple) -> str:
    text = json.dumps([run_id, "search", [list(p) for p in point]], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _patterns(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [p.strip() for item in value for p in str(item).split(",") if p.strip()]


def _check_unique_ids(suite: Suite, cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for c in cells:
        other = seen.setdefault(c.id, c)
        if other is not c:
            raise BenchError(
                f"{suite.path}: cells {other.name} and {c.name} would write rows with the same run "
                "id (made of suite, task, protocol, k, init, arch, seed and extra mask_ratio / "
                "img_size, all equal here); change one of them or move it to another suite"
            )


# --------------------------------------------------------------------------------------------------
# Cell settings (cell.json) and status
# --------------------------------------------------------------------------------------------------


def cell_settings(cell: Cell) -> dict:
    """What a cell's result depends on, as JSON (written to ``cell.json`` in its work dir)."""
    init = cell.init
    if cell.kind == "pretrain":
        return _jsonable({"init": init.init, "arch": init.arch, **init.pretrain})
    t = cell.task
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
        "bf16": t.bf16,
    }
    if cell.role == "candidate":
        settings.update(overrides=dict(cell.point), select=_candidate_select(t))
    elif cell.role == "final":
        settings.update(search={"grid": _search_grid(cell), "select_on": t.select_on})
    return _jsonable(settings)


def _candidate_select(task: TaskEntry) -> str | None:
    """What a candidate reports on: the held-out part of the training set, or the val split."""
    return "heldout" if task.select_on == "heldout" else None


def _search_grid(cell: Cell) -> dict:
    """The grid of a final cell, rebuilt from its candidates' points (name -> list of values)."""
    return {name: list(values) for name, values in cell.init.search.get(cell.task.label, cell.task.search).items()}


def _jsonable(obj):
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
    elif cell.id in done_ids:
        return "done"
    if work.is_dir() and any(p.name != CELL_FILE for p in work.iterdir()):
        return "resume"
    return "todo"


# --------------------------------------------------------------------------------------------------
# Data: a dataset on disk, or the small generated one
# --------------------------------------------------------------------------------------------------


def data_dir(task: TaskEntry, out_dir: Path) -> Path:
    """Where the task reads its data: ``task.data``, or ``<out>/data/<task>-<hash of generate>``."""
    if task.data is not None:
        return task.data
    key = json.dumps({"task": task.task, **_jsonable(task.generate)}, sort_keys=True)
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
                    {"task": task.task, "generate": _jsonable(task.generate), "root": str(made.relative_to(tmp / "d"))}
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


# --------------------------------------------------------------------------------------------------
# Running one cell
# --------------------------------------------------------------------------------------------------


def run_pretrain_cell(cell: Cell, out_dir: Path) -> Path:
    """Pretrain (resuming from ``<out>/work/<init>/pretrain``); returns ``pretrain.pth``."""
    kwargs = dict(cell.init.pretrain)
    method = kwargs.pop("method")
    return Path(
        pretrainer_fn(method)(
            cell.init.arch, out_dir / cell.work_dir, resume=True, progress=sys.stderr.isatty(), **kwargs
        )
    )


def run_transfer_cell(
    suite: Suite, cell: Cell, out_dir: Path, checkpoint: Path | None, overrides: dict | None = None
) -> dict:
    """Run the task of ``cell`` (resuming from its work dir) and return its row (not yet stored).
    A search candidate runs its grid point on the selection split; ``overrides``: the point a
    final cell chose."""
    t, init = cell.task, cell.init
    if cell.role == "candidate":
        overrides, select = dict(cell.point), _candidate_select(t)
    else:
        overrides, select = dict(overrides or {}), None
    return t.spec.run(
        TransferRun(
            task=t.task,
            protocol=t.protocol,
            backbone=init.backbone,
            checkpoint=checkpoint,
            data_root=dataset_root(t, out_dir),
            work_dir=out_dir / cell.work_dir,
            seed=cell.seed,
            suite=suite.name,
            k=cell.k,
            config=t.config_for(init.arch),
            iters=t.iters,
            epochs=t.epochs,
            batch_size=t.batch_size,
            amp=t.bf16,
            trust_checkpoint=init.trust_checkpoint,
            trust_config=t.trust_config,
            progress=sys.stderr.isatty(),
            overrides=overrides,
            select=select,
            engine=t.engine,
        )
    )


def select_point(cell: Cell, out_dir: Path) -> tuple[dict, dict | None, dict]:
    """The best grid point of a final cell's search, by the task's headline metric
    (``TaskSpec.metrics[0]``, higher is better; the first listed point wins a tie) over its
    candidates' ok rows. Returns (chosen overrides, the best candidate's row, the row's
    ``extra['search']``). Raises when a candidate has no row yet, or none succeeded."""
    metric = cell.task.spec.metrics[0]
    latest: dict[str, dict] = {}
    for row in ResultsStore(out_dir).rows():
        if row["status"] == "ok" or row["run_id"] not in latest:
            latest[row["run_id"]] = row  # an ok row wins over a failed try of the same cell
    points = {c.id: c for c in cell.candidates}
    missing = [c.name for cid, c in points.items() if cid not in latest]
    if missing:
        raise RuntimeError(f"search candidates not run yet: {', '.join(missing)}")
    scores, failed = [], []
    for cid, c in points.items():
        row = latest[cid]
        if row["status"] == "ok" and metric in row["metrics"]:
            scores.append((row["metrics"][metric], c, row))
        else:
            failed.append(point_name(c.point))
    if not scores:
        raise RuntimeError(f"every search candidate of {cell.name} failed")
    best = max(scores, key=lambda s: s[0])  # max keeps the first of equal scores
    chosen = dict(best[1].point)
    search = {
        "grid": _search_grid(cell),
        "chosen": chosen,
        "select_on": cell.task.select_on,
        "metric": metric,
        "scores": [{"overrides": dict(c.point), metric: v} for v, c, _ in scores],
        "failed": failed,
    }
    return chosen, best[2], search


def suite_deviations(suite: Suite, cell: Cell) -> list[str]:
    """How the suite makes a cell depart from the paper's protocol (the task adds its own)."""
    out = []
    if suite.scale == "smoke":
        out.append("smoke scale")
    if cell.task.generate is not None:
        out.append(cell.task.spec.generated)
    if cell.role == "final" and cell.task.select_on == "val":
        out.append("selected on val")
    return out


def _finish_row(row: dict, suite: Suite, cell: Cell) -> dict:
    """The task's row, checked against the cell and given the cell's id and extras."""
    t = cell.task
    expected = {
        "task": t.task,
        "protocol": t.protocol,
        "k": cell.k,
        "init": cell.init.init,
        "backbone": cell.init.arch,
        "seed": cell.seed,
    }
    for key, value in expected.items():
        if row.get(key) != value:
            raise RuntimeError(
                f"the task returned a row with {key}={row.get(key)!r}, expected {value!r} for cell {cell.name}"
            )
    row = dict(row, run_id=cell.id, suite=suite.name)
    row["extra"] = {**row.get("extra", {}), **cell.init.extra, "cell": cell.name, **_search_extra(cell)}
    row["deviations"] = list(dict.fromkeys([*row.get("deviations", []), *suite_deviations(suite, cell)]))
    return row


def _search_extra(cell: Cell) -> dict:
    """What a search cell's row says about it (a final cell's 'search' is added when chosen).
    Tables leave out rows with ``extra['search_role'] == 'candidate'``."""
    if cell.role == "candidate":
        return {"search_role": "candidate", "overrides": dict(cell.point)}
    return {}


def _failed_row(suite: Suite, cell: Cell, checkpoint: Path | None, error: str, wall: float) -> dict:
    t = cell.task
    return make_row(
        task=t.task,
        protocol=t.protocol,
        init=cell.init.init,
        backbone=cell.init.arch,
        seed=cell.seed,
        k=cell.k,
        metrics={},
        suite=suite.name,
        checkpoint=checkpoint if checkpoint is not None and checkpoint.is_file() else None,
        config=cell_settings(cell),
        wall_time_s=wall,
        status="failed",
        error=error,
        extra={**cell.init.extra, "cell": cell.name, **_search_extra(cell)},
        run_id=cell.id,
        deviations=suite_deviations(suite, cell),
    )


def _write_cell_file(cell: Cell, work: Path) -> None:
    write_run_record(work / CELL_FILE, {"name": cell.name, "id": cell.id, "settings": cell_settings(cell)})


def _log_error(work: Path, exc: BaseException) -> None:
    try:
        work.mkdir(parents=True, exist_ok=True)
        with open(work / ERROR_LOG, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError as e:  # a full disk must cost the traceback, not the failed row or the other cells
        print(f"note: could not write {work / ERROR_LOG} ({first_line(e)})", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Running a suite
# --------------------------------------------------------------------------------------------------


def check_inputs(suite: Suite, cells: list[Cell], out_dir: Path, done_ids: set[str]) -> list[str]:
    """Everything a run needs from disk, checked before the first cell starts. Returns every
    problem at once (missing or empty checkpoints, data folders and config files; config files
    that would run as Python without trust), one line each, naming the suite key. Raises at once
    when an unfinished cell would resume with other settings."""
    where = str(suite.path)
    problems: list[str] = []

    def problem(text: str) -> None:
        if text not in problems:
            problems.append(text)

    for cell in cells:
        status = cell_status(cell, out_dir, done_ids)
        work = out_dir / cell.work_dir
        old = _recorded_settings(work)
        if old is not None and old != cell_settings(cell):
            change = ", ".join(settings_diff(old, cell_settings(cell)))
            if cell.kind == "transfer" and status == "done":
                print(
                    f"note: {cell.name} is done with other settings ({change}); kept. Delete "
                    f"its row from {ResultsStore(out_dir).path} and {work} to run it again.",
                    file=sys.stderr,
                )
            else:
                what = "pretrained" if status == "done" else "started"
                raise BenchError(
                    f"{where}: cell {cell.name} was {what} in {work} with other "
                    f"settings ({change}); delete that folder (and the rows of its "
                    "cells) or use another --out"
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
def _out_dir_lock(out_dir: Path):
    """One ``bench run`` per output directory at a time (two would run the same cells)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"{out_dir}: another `bench run` is using this output directory (option --out)") from None
        yield
    finally:
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
    return cell.id in done_ids


def execute_cell(suite: Suite, cell: Cell, out_dir: Path, *, pretrain_error: str | None = None) -> tuple[bool, str]:
    """Run one cell now (resuming from its work dir) and record it. Returns ``(True, summary)`` or
    ``(False, one-line error)``; a failed transfer cell gets a 'failed' row. ``pretrain_error``:
    why the pretraining this cell needs failed (the cell then fails without running)."""
    work = out_dir / cell.work_dir
    checkpoint = cell_checkpoint(cell, out_dir)
    store = ResultsStore(out_dir)
    start = time.perf_counter()
    try:
        if cell.needs and (pretrain_error or not checkpoint.is_file()):
            raise RuntimeError(
                f"pretraining cell {cell.needs} failed: {pretrain_error or f'{checkpoint} was not written'}"
            )
        if is_main():
            _write_cell_file(cell, work)
        if cell.kind == "pretrain":
            return True, f"-> {run_pretrain_cell(cell, out_dir)}"
        search = None
        if cell.role == "final":
            chosen, best, search = select_point(cell, out_dir)
            if cell.task.select_on == "val":  # the best candidate ran on val already: its row
                row = {k: v for k, v in best.items() if k not in ("run_id", "suite")}
                row["extra"] = {k: v for k, v in best["extra"].items() if k not in ("search_role", "overrides", "cell")}
            else:
                row = run_transfer_cell(suite, cell, out_dir, checkpoint, overrides=chosen)
        else:
            row = run_transfer_cell(suite, cell, out_dir, checkpoint)
        if not is_main():  # under torch.distributed rank 0 records the row
            return True, "done (rank > 0)"
        row = _finish_row(row, suite, cell)
        if search is not None:
            row["extra"]["search"] = search
        store.append(row)
        return True, ", ".join(f"{k} {v:.2f}" for k, v in row["metrics"].items())
    except Exception as exc:  # a failed cell is recorded; the others still run
        error = first_line(exc, with_type=True)
        _log_error(work, exc)
        if cell.kind == "transfer" and is_main():
            store.append(_failed_row(suite, cell, checkpoint, error, time.perf_counter() - start))
        return False, error


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike,
    *,
    dry_run: bool = False,
    only=None,
    skip=None,
    tables: bool = True,
    executor=None,
) -> RunSummary:
    """Run the cells of ``suite`` that are not done yet into ``out_dir``, then write the tables.

    ``dry_run`` prints the plan (with each cell's status) and runs nothing. ``executor``: a
    submitit executor (``--slurm``): each cell becomes a job, pretraining jobs first; without one
    the cells run here, one after the other."""
    out_dir = Path(out_dir)
    cells = plan(suite, only=only, skip=skip)
    done_ids = ResultsStore(out_dir).done_ids()
    problems = check_inputs(suite, cells, out_dir, done_ids)
    if dry_run:  # the plan, then every problem at once
        print(format_plan(suite, cells, out_dir, done_ids))
        refuse(suite, problems)
        return RunSummary(cells, [], [], {}, [])
    refuse(suite, problems)

    summary = RunSummary(cells, [], [], {}, [])
    with _out_dir_lock(out_dir):
        print(f"suite {suite.name} ({suite.path}): {len(cells)} cells -> {out_dir}", flush=True)
        todo = []
        for number, cell in enumerate(cells, start=1):
            if is_done(cell, out_dir, done_ids):
                summary.skipped.append(cell.name)
                print(f"[{number}/{len(cells)}] {cell.name}: done", flush=True)
            else:
                todo.append((number, cell))
        if executor is None:
            eta = Eta([_eta_kind(c) for _, c in todo])
            for number, cell in todo:
                head = f"[{number}/{len(cells)}] {cell.name}"
                state = "resuming" if cell_status(cell, out_dir, done_ids) == "resume" else "starting"
                print(f"{head}: {state} in {out_dir / cell.work_dir}", flush=True)
                start, cpu = time.perf_counter(), time.process_time()
                ok, text = execute_cell(suite, cell, out_dir, pretrain_error=summary.failed.get(cell.needs))
                _report(summary, head, cell, out_dir, ok, text, time.perf_counter() - start, time.process_time() - cpu)
                print(eta.finished(_eta_kind(cell), time.perf_counter() - start), flush=True)
        else:
            _run_with_executor(suite, todo, len(cells), out_dir, executor, summary)
        if tables:
            summary.tables = write_suite_tables(suite, out_dir)
    print(
        f"suite {suite.name}: {len(summary.ran)} cells ran, {len(summary.skipped)} were done, "
        f"{len(summary.failed)} failed" + (f" ({', '.join(summary.failed)})" if summary.failed else ""),
        flush=True,
    )
    return summary


def _eta_kind(cell: Cell) -> str:
    """Cells that cost about the same: a pretraining method, or a task and protocol."""
    if cell.kind == "pretrain":
        return f"pretrain:{cell.init.pretrain['method']}"
    return f"{cell.task.task}:{cell.task.protocol}"


def _report(
    summary: RunSummary,
    head: str,
    cell: Cell,
    out_dir: Path,
    ok: bool,
    text: str,
    seconds: float,
    cpu_seconds: float | None = None,
) -> None:
    took = f"{seconds:.0f} s" + (f", {cpu_seconds:.0f} CPU-s" if cpu_seconds is not None else "")
    if ok:
        summary.ran.append(cell.name)
        print(f"{head}: ok in {took} ({text})", flush=True)
    else:
        summary.failed[cell.name] = text
        print(f"{head}: FAILED after {took} ({text}); traceback in {out_dir / cell.work_dir / ERROR_LOG}", flush=True)


# --------------------------------------------------------------------------------------------------
# Slurm (submitit): one job per cell, requeued on preemption / timeout, resuming from its work dir
# --------------------------------------------------------------------------------------------------


class CellJob:
    """One cell as a submitit job. submitit calls ``checkpoint`` when the job is preempted or
    reaches its time limit and requeues what it returns: the same cell, which resumes from the
    checkpoints in its work dir. With several tasks per job (GPUs) every task runs the cell under
    torch.distributed; only rank 0 writes the row."""

    def __init__(
        self,
        suite_path: Path,
        seeds: tuple[int, ...],
        out_dir: Path,
        cell_name: str,
        pretrain_error: str | None = None,
        trust_config: bool = False,
    ):
        self.suite_path, self.seeds, self.out_dir = Path(suite_path), tuple(seeds), Path(out_dir)
        self.cell_name, self.pretrain_error = cell_name, pretrain_error
        self.trust_config = trust_config

    def __call__(self) -> tuple[bool, str]:
        import submitit

        suite = load_suite(self.suite_path).with_seeds(self.seeds)
        if self.trust_config:
            suite = suite.with_trust_config()
        cell = next(c for c in plan(suite) if c.name == self.cell_name)
        if submitit.JobEnvironment().num_tasks > 1:
            from bench.core.distributed import init_distributed

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            init_distributed()
        result = execute_cell(suite, cell, self.out_dir, pretrain_error=self.pretrain_error)
        from bench.core.distributed import leave_process_group

        leave_process_group()  # submitit still has to return the result: leave together, keep the process
        return result

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _run_with_executor(suite: Suite, todo: list, total: int, out_dir: Path, executor, summary: RunSummary) -> None:
    """Submit the pretraining cells and wait for them, then the search candidates, then the other
    transfer cells (a search's final cell needs its candidates' rows)."""

    def phase(cell: Cell) -> int:
        return 0 if cell.kind == "pretrain" else 1 if cell.role == "candidate" else 2

    for number in (0, 1, 2):
        batch = [(n, c) for n, c in todo if phase(c) == number]
        jobs = []
        for number, cell in batch:
            executor.update_parameters(name=f"{suite.name}:{cell.name}")
            job = executor.submit(
                CellJob(
                    suite.path,
                    suite.seeds,
                    out_dir,
                    cell.name,
                    summary.failed.get(cell.needs),
                    trust_config=all(t.trust_config for t in suite.tasks),
                )
            )
            print(f"[{number}/{total}] {cell.name}: submitted as job {job.job_id}", flush=True)
            jobs.append((number, cell, job, time.perf_counter()))
        for number, cell, job, start in jobs:
            try:
                ok, text = job.results()[0]  # rank 0's answer
            except Exception as exc:  # the job died outside execute_cell (node failure, OOM kill)
                ok, text = False, f"job {job.job_id}: {first_line(exc, with_type=True)}"
                if cell.kind == "transfer":
                    ResultsStore(out_dir).append(_failed_row(suite, cell, cell_checkpoint(cell, out_dir), text, 0.0))
            _report(summary, f"[{number}/{total}] {cell.name}", cell, out_dir, ok, text, time.perf_counter() - start)


SLURM_KEYS = {
    "partition": ("slurm_partition", str),
    "nodes": ("nodes", int),
    "gpus-per-node": ("gpus_per_node", int),
    "tasks-per-node": ("tasks_per_node", int),
    "cpus-per-task": ("cpus_per_task", int),
    "time": ("timeout_min", int),
    "mem-gb": ("mem_gb", int),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
}


def parse_slurm(spec: str) -> dict:
    """``partition=gpu,nodes=1,gpus-per-node=8,time=4320`` -> submitit ``update_parameters``
    keywords. ``tasks-per-node`` defaults to ``gpus-per-node`` (one process per GPU); ``time`` is
    in minutes."""
    params = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in SLURM_KEYS or not value:
            raise BenchError(f"option --slurm: {item!r} is not KEY=VALUE with KEY one of {', '.join(SLURM_KEYS)}")
        name, kind = SLURM_KEYS[key]
        try:
            params[name] = kind(value)
        except ValueError:
            raise BenchError(f"option --slurm: {key} must be an integer, got {value!r}") from None
    if "gpus_per_node" in params:
        params.setdefault("tasks_per_node", params["gpus_per_node"])
    return params


def slurm_executor(spec: str, out_dir: Path):
    """A submitit Slurm executor writing its logs to ``<out>/slurm``."""
    import submitit

    params = parse_slurm(spec)
    try:
        executor = submitit.AutoExecutor(folder=out_dir / "slurm" / "%j", cluster="slurm")
    except Exception as e:  # no sbatch here
        raise BenchError(
            f"option --slurm: cannot submit Slurm jobs from this machine ({first_line(e, with_type=True)}); use --local"
        ) from None
    executor.update_parameters(slurm_max_num_timeout=20, **params)
    return executor


def write_suite_tables(suite: Suite, out_dir: Path) -> list[Path]:
    """Tables + plots of this suite's rows into ``out_dir``; prints the Markdown tables."""
    from bench.tables import run_table

    try:
        written = run_table(ResultsStore(out_dir).path, out_dir, suite=suite.name)
    except BenchError as e:  # e.g. no finished run yet: nothing to tabulate
        print(f"no tables: {e}", flush=True)
        return []
    print("\n" + (SMOKE_NOTE if suite.scale == "smoke" else FULL_NOTE) + "\n")
    for path in written:
        if path.suffix == ".md":
            print(path.read_text(encoding="utf-8"))
    print(f"tables and plots in {out_dir}: {', '.join(p.name for p in written)}", flush=True)
    return written


def format_plan(suite: Suite, cells: list[Cell], out_dir: Path, done_ids: set[str]) -> str:
    """The plan as a text table (cell, kind, backbone, weights, status, id, config, schedule),
    then the search grids and a rough cost: the training schedule the cells to run add up to."""
    rows = [("cell", "kind", "backbone", "weights", "status", "id", "config", "schedule")]
    cost: dict[str, float] = {}  # unit -> total over the cells still to run
    for c in cells:
        weights = (
            f"<- {c.needs}"
            if c.needs
            else str(c.init.checkpoint)
            if c.init.checkpoint
            else "random"
            if c.kind == "transfer"
            else c.init.pretrain["method"]
        )
        status = cell_status(c, out_dir, done_ids)
        config, amount, unit = _schedule(c)
        schedule = f"{amount:g} {unit}" if amount is not None else f"config's {unit}"
        if c.role == "final" and c.task.select_on == "val":
            schedule = "best candidate's row"
        elif c.role is not None:
            schedule += f", {point_name(c.point)}" if c.point else ", best point"
        if status != "done" and amount is not None and schedule != "best candidate's row":
            cost[unit] = cost.get(unit, 0) + amount
        rows.append(
            (
                c.name,
                c.kind if c.role is None else f"{c.kind}:{c.role}",
                c.init.backbone,
                weights,
                status,
                c.id,
                config,
                schedule,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in cells:
        if c.role == "final":
            grid = _search_grid(c)
            lines.append(
                f"search {c.name}: {' x '.join(f'{n} {v}' for n, v in grid.items())} = "
                f"{len(c.candidates)} candidate runs, selected on {c.task.select_on} by "
                f"{c.task.spec.metrics[0]}"
                + (", then the best point on the reported split" if c.task.select_on == "heldout" else "")
            )
    todo = sum(cell_status(c, out_dir, done_ids) != "done" for c in cells)
    lines.append(f"{len(cells)} cells, {todo} to run; work dirs under {out_dir / 'work'}")
    if cost:
        lines.append(
            "cost estimate (the suite's schedules of the cells to run, summed; cells on "
            "their config's schedule are not counted): "
            + ", ".join(f"{v:g} {unit}" for unit, v in sorted(cost.items()))
        )
    return "\n".join(lines)


def _schedule(cell: Cell) -> tuple[str, float | None, str]:
    """(config, amount, unit) of a cell's training: the pretraining's steps or epochs, a dense
    task's iterations, a classification task's epochs; amount None: the config's own."""
    if cell.kind == "pretrain":
        p = cell.init.pretrain
        if "steps" in p:
            return p["method"], float(p["steps"]), "pretraining steps"
        return p["method"], (float(p["epochs"]) if "epochs" in p else None), "pretraining epochs"
    t = cell.task
    config = str(t.config_for(cell.init.arch) or "default")
    point = dict(cell.point)
    if "iters" in t.spec.suite_keys:
        iters = point.get("iters", t.iters)
        return config, (float(iters) if iters is not None else None), f"{t.task} iterations"
    epochs = point.get("epochs", t.epochs)
    return config, (float(epochs) if epochs is not None else None), f"{t.task} epochs"


# --------------------------------------------------------------------------------------------------
# CLI: bench run
# --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench run``."""
    parser.add_argument("suite", help="suite file, or a bundled suite name (demo, ci, paper)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory: runs.jsonl, work/, data/, tables (default results/<suite name>)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the cells and their status, run nothing")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PAT",
        help="run only cells matching this glob, e.g. 'mae/*' or '*/coco/*' (repeatable or comma-separated)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=None,
        metavar="PAT",
        help="leave out cells matching this glob (repeatable or comma-separated)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="N", help="transfer seeds instead of the suite's"
    )
    parser.add_argument("--no-tables", action="store_true", help="do not write tables at the end")
    parser.add_argument(
        "--trust-config",
        action="store_true",
        help="read .py config files from outside the package (they run as Python "
        "when read); the same as 'trust_config: true' in every task",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the cells here, one after the other (the default)")
    where.add_argument(
        "--slurm",
        default=None,
        metavar="SPEC",
        help="submit each cell as a Slurm job via submitit, e.g. "
        "'partition=gpu,nodes=1,gpus-per-node=8,time=4320' (keys: "
        + ", ".join(SLURM_KEYS)
        + "); preempted or timed-out jobs are "
        "requeued and resume; this command waits for them",
    )
    return parser


def run_main(args: argparse.Namespace) -> int:
    """``bench run``: 0 when every cell is done, 1 when some failed (their rows say why)."""
    suite = load_suite(args.suite)
    if args.seeds is not None:
        suite = suite.with_seeds(args.seeds)
    if getattr(args, "trust_config", False):
        suite = suite.with_trust_config()
    out = Path(args.out) if args.out else Path("results") / suite.name
    executor = slurm_executor(args.slurm, out) if args.slurm and not args.dry_run else None
    summary = run_suite(
        suite, out, dry_run=args.dry_run, only=args.only, skip=args.skip, tables=not args.no_tables, executor=executor
    )
    return 1 if summary.failed else 0


def main(argv=None) -> int:
    """``python -m bench.runner SUITE ...`` (the same as ``bench run``)."""
    parser = add_run_arguments(argparse.ArgumentParser(prog="bench run"))
    args = parser.parse_args(argv)
    try:
        return run_main(args)
    except BenchError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
