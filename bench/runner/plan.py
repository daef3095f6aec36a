"""Plan: a suite -> its cells (pretraining, transfer, search candidates), with their run ids."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.results import default_run_id
from bench.suite import InitEntry, Suite, TaskEntry
from tasks.classification.datasets import DATASETS as FLOOR_DATASETS
from tasks.classification.floors import FLOORS
from tasks.classification.floors import INIT as FLOOR_INIT

FLOOR_LABEL = "raw-pixels"  # the floor cells' folder; their rows carry the floors' own labels


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
    # A floor cell writes several rows (one per floor classifier): their run ids; ``id`` is the first.
    row_ids: tuple = ()

    @property
    def work_dir(self) -> Path:
        """Relative to the suite's output directory."""
        return Path("work", *self.name.split("/"))


# --------------------------------------------------------------------------------------------------
# Plan: suite -> cells
# --------------------------------------------------------------------------------------------------


def plan(suite: Suite, only=None, skip=None) -> list[Cell]:
    """The suite's cells, pretraining first, then inits x tasks (x k) x seeds, then the floors.

    ``only``/``skip`` are glob patterns (a string, comma-separated, or a list) on cell names such
    as ``mae/coco/seed0``, ``*/ade20k/*`` or ``mae/pretrain``. A kept transfer cell always keeps
    the pretraining cell it needs (a no-op when that is done already)."""
    only, skip = _patterns(only), _patterns(skip)
    pretrain_cells = {init.label: _pretrain_cell(suite, init) for init in suite.inits if init.pretrain is not None}
    transfer: list[Cell] = []
    for init in suite.inits:
        needs = pretrain_cells[init.label].name if init.label in pretrain_cells else None
        for task in suite.tasks:
            transfer += _transfer_cells(suite, init, task, needs)
    transfer += floor_cells(suite)

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


def floor_cells(suite: Suite) -> list[Cell]:
    """``raw-pixels/<task>/seed<s>``: the raw-pixel floors (``tasks.classification.floors``) of each
    classification dataset of the suite that wants them (``wants_floors``), once per dataset (two
    tasks on the same data share them) and seed."""
    init = InitEntry(label=FLOOR_LABEL, init=FLOOR_INIT, arch=FLOOR_INIT)
    cells, seen = [], set()
    for task in suite.tasks:
        data = json.dumps([task.task, str(task.data), task.generate], sort_keys=True, default=str)
        if not wants_floors(task) or data in seen:
            continue
        seen.add(data)
        for seed in suite.seeds:
            ids = tuple(
                default_run_id(suite.name, task.task, protocol, None, FLOOR_INIT, FLOOR_INIT, seed, label=label)
                for protocol, (label, _) in FLOORS.items()
            )
            name = f"{FLOOR_LABEL}/{task.label}/seed{seed}"
            cells.append(Cell(name=name, kind="floor", id=ids[0], row_ids=ids, init=init, task=task, seed=seed))
    return cells


def wants_floors(task: TaskEntry) -> bool:
    """The task's ``floors:`` key, else: a classification dataset the floors read, when it is the
    digits or a generated set (seconds of scikit-learn; a full-size dataset on disk would not be)."""
    if task.floors is not None:
        return task.floors
    return task.task in FLOOR_DATASETS and (task.task == "digits" or task.generate is not None)


def row_ids(cell: Cell) -> tuple[str, ...]:
    """The run ids of the rows a (transfer or floor) cell writes."""
    return cell.row_ids or (cell.id,)


def _pretrain_cell(suite: Suite, init: InitEntry) -> Cell:
    """``<label>/pretrain``: the init's pretraining, shared by all its transfer cells."""
    seed = int(init.pretrain.get("seed", 0))
    run_id = default_run_id(
        suite.name, "pretrain", init.pretrain["method"], None, init.init, init.arch, seed, init.extra, label=init.label
    )
    return Cell(name=f"{init.label}/pretrain", kind="pretrain", init=init, seed=seed, id=run_id)


def _transfer_cells(suite: Suite, init: InitEntry, task: TaskEntry, needs: str | None) -> list[Cell]:
    """The cells of one init x task: per k and seed a plain cell, or a search's candidates and
    its final cell (named and identified like the plain cell)."""
    grid = suite.grid(init, task)
    identity = dict(init.extra)  # what makes the run id; a task with engines: which one
    if task.spec.engines:
        identity["engine"] = task.engine or task.spec.engines[0]
    cells = []
    for k in task.k or (None,):
        for seed in suite.seeds:
            part = f"/k{k}" if k is not None else ""
            run_id = default_run_id(
                suite.name, task.task, task.protocol, k, init.init, init.arch, seed, identity, label=init.label
            )
            cell = Cell(
                name=f"{init.label}/{task.label}{part}/seed{seed}",
                kind="transfer",
                init=init,
                task=task,
                seed=seed,
                k=k,
                needs=needs,
                id=run_id,
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
                cells += candidates
                cell = dataclasses.replace(cell, role="final", candidates=tuple(candidates))
            cells.append(cell)
    return cells


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
