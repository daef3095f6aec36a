"""Running one cell: pretraining or a transfer (a search candidate, or a final cell that picks
its candidates' best point), recording its row."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from bench.core.distributed import is_main
from bench.core.errors import first_line
from bench.core.results import ResultsStore, make_row
from bench.core.run_record import write_run_record
from bench.runner.data import dataset_root
from bench.runner.plan import Cell, point_name
from bench.runner.state import CELL_FILE, candidate_select, cell_checkpoint, cell_settings, search_grid
from bench.suite import Suite, pretrainer_fn
from tasks.classification.floors import FLOORS, raw_pixel_floors
from tasks.spec import TransferRun

ERROR_LOG = "error.log"
# Progress bars of the task's own training (on a terminal); a forked parallel cell turns them off,
# since several bars on one terminal overwrite each other.
PROGRESS = {"bars": True}


# --------------------------------------------------------------------------------------------------
# Running one cell
# --------------------------------------------------------------------------------------------------


def run_pretrain_cell(cell: Cell, out_dir: Path) -> Path:
    """Pretrain (resuming from ``<out>/work/<init>/pretrain``); returns ``pretrain.pth``."""
    kwargs = dict(cell.init.pretrain)
    method = kwargs.pop("method")
    return Path(pretrainer_fn(method)(cell.init.arch, out_dir / cell.work_dir, resume=True, progress=_bars(), **kwargs))


def run_transfer_cell(
    suite: Suite, cell: Cell, out_dir: Path, checkpoint: Path | None, overrides: dict | None = None
) -> dict:
    """Run the task of ``cell`` (resuming from its work dir) and return its row (not yet stored).
    A search candidate runs its grid point on the selection split; ``overrides``: the point a
    final cell chose."""
    t, init = cell.task, cell.init
    if cell.role == "candidate":
        overrides, select = dict(cell.point), candidate_select(t)
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
            amp=t.amp,
            trust_checkpoint=init.trust_checkpoint,
            trust_config=t.trust_config,
            progress=_bars(),
            overrides=overrides,
            select=select,
            engine=t.engine,
            label=init.label,
            resume=True,
            # the curve does not change the run (tested), so it is not part of the cell's settings
            options={"eval_every": t.eval_every} if t.eval_every else {},
        )
    )


def _bars() -> bool:
    return PROGRESS["bars"] and sys.stderr.isatty()


def run_floor_cell(suite: Suite, cell: Cell, out_dir: Path) -> list[dict]:
    """The raw-pixel floor rows of the cell's dataset (``tasks.classification.floors``), given the
    cell's run ids and the suite's extras and deviations (not yet stored)."""
    t = cell.task
    rows = raw_pixel_floors(
        t.task, dataset_root(t, out_dir), cell.seed, out_dir=out_dir / cell.work_dir, suite=suite.name
    )
    if len(rows) != len(cell.row_ids):
        raise RuntimeError(f"the floors returned {len(rows)} rows, expected {len(cell.row_ids)} for cell {cell.name}")
    deviations = suite_deviations(cell)
    return [
        dict(
            row,
            run_id=run_id,
            suite=suite.name,
            extra={**row.get("extra", {}), "cell": cell.name},
            deviations=list(dict.fromkeys([*row.get("deviations", []), *deviations])),
        )
        for row, run_id in zip(rows, cell.row_ids)
    ]


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
        "grid": search_grid(cell),
        "chosen": chosen,
        "select_on": cell.task.select_on,
        "metric": metric,
        "scores": [{"overrides": dict(c.point), metric: v} for v, c, _ in scores],
        "failed": failed,
    }
    return chosen, best[2], search


def suite_deviations(cell: Cell) -> list[str]:
    """How the suite makes a cell depart from the paper's protocol (the task adds its own): its
    generated data and selecting on val. Whether a row compares with the paper at all is derived
    from the row (``bench.runner.loop.paper_marks``), not declared by the suite."""
    out = []
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
    row = dict(row, run_id=cell.id, suite=suite.name, label=cell.init.label)
    # what the run measured wins over the suite's declared extras (the loader refuses the
    # reserved names; this keeps any other measured key from being relabelled)
    row["extra"] = {**cell.init.extra, **row.get("extra", {}), "cell": cell.name, **_search_extra(cell)}
    row["deviations"] = list(dict.fromkeys([*row.get("deviations", []), *suite_deviations(cell)]))
    return row


def _search_extra(cell: Cell) -> dict:
    """What a search cell's row says about it (a final cell's 'search' is added when chosen).
    Tables leave out rows with ``extra['search_role'] == 'candidate'``."""
    if cell.role == "candidate":
        return {"search_role": "candidate", "overrides": dict(cell.point)}
    return {}


def failed_row(suite: Suite, cell: Cell, checkpoint: Path | None, error: str, wall: float) -> dict:
    """The 'failed' row of a transfer cell (a floor cell: under its first floor's protocol and label)."""
    t = cell.task
    protocol, label = t.protocol, cell.init.label
    if cell.kind == "floor":
        protocol, (label, _) = next(iter(FLOORS.items()))
    return make_row(
        task=t.task,
        protocol=protocol,
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
        deviations=suite_deviations(cell),
        label=label,
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
        if cell.kind == "floor":
            rows = run_floor_cell(suite, cell, out_dir) if is_main() else []
            for row in rows:
                store.append(row)
            return True, ", ".join(f"{r['label']} {r['metrics']['top1']:.2f}" for r in rows)
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
        if cell.kind != "pretrain" and is_main():
            store.append(failed_row(suite, cell, checkpoint, error, time.perf_counter() - start))
        return False, error
