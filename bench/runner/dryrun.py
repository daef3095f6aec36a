"""``bench run --dry-run``: the plan as a table; per task the searched grid, the selection split,
the number of runs and their cost; the total cost."""

from __future__ import annotations

from pathlib import Path

from bench.runner.plan import Cell, point_name
from bench.runner.state import cell_status
from bench.suite import Suite


def format_plan(suite: Suite, cells: list[Cell], out_dir: Path, done_ids: set[str]) -> str:
    """The plan as a text table (cell, kind, backbone, weights, status, id, config, schedule), then
    per task its searched grid, selection split, number of runs and cost, then the total cost: the
    training schedules the cells still to run add up to."""
    rows = [("cell", "kind", "backbone", "weights", "status", "id", "config", "schedule")]
    for c in cells:
        status = cell_status(c, out_dir, done_ids)
        config, amount, unit = _schedule(c)
        backbone = c.init.init if c.kind == "floor" else c.init.backbone
        rows.append((c.name, c.kind if c.role is None else f"{c.kind}:{c.role}", backbone, _weights(c)))
        rows[-1] += (status, c.id, config, _schedule_text(c, amount, unit))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [_task_line(suite, task, cells, out_dir, done_ids) for task in suite.tasks]
    cost = _cost([c for c in cells if cell_status(c, out_dir, done_ids) != "done"])
    if cost:
        lines.append(
            "cost estimate (the suite's schedules of the cells to run, summed; cells on "
            f"their config's schedule are not counted): {cost}"
        )
    todo = sum(cell_status(c, out_dir, done_ids) != "done" for c in cells)
    lines.append(f"{len(cells)} cells, {todo} to run; work dirs under {out_dir / 'work'}")
    return "\n".join(lines)


def _weights(c: Cell) -> str:
    if c.needs:
        return f"<- {c.needs}"
    if c.init.checkpoint:
        return str(c.init.checkpoint)
    if c.kind == "pretrain":
        return c.init.pretrain["method"]
    return "pixels" if c.kind == "floor" else "random"


def _amount(x: float) -> str:
    """7680000 -> '7,680,000' (not '7.68e+06'); fractions as they are."""
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"


def _schedule_text(c: Cell, amount: float | None, unit: str) -> str:
    if c.kind == "floor":
        return "seconds (scikit-learn)"
    if c.role == "final" and c.task.select_on == "val":
        return "best candidate's row"
    text = f"{_amount(amount)} {unit}" if amount is not None else f"config's {unit}"
    if c.role is not None:
        text += f", {point_name(c.point)}" if c.point else ", best point"
    return text


def _task_line(suite: Suite, task, cells: list[Cell], out_dir: Path, done_ids: set[str]) -> str:
    """One task: its grids (one for every init when equal), the selection split, runs and cost."""
    mine = [c for c in cells if c.task is task and c.kind == "transfer"]
    grids = {}
    for init in suite.inits:
        grid = suite.grid(init, task)
        grids.setdefault(" x ".join(f"{n} {list(v)}" for n, v in (grid or {}).items()) or "none", []).append(init.label)
    if len(grids) == 1:
        grid = next(iter(grids))
        searched = "no search" if grid == "none" else f"search {grid} for every init"
    else:
        searched = "; ".join(f"{', '.join(labels)}: search {g}" for g, labels in grids.items())
        searched += f" (unequal: {task.unequal_grid_reason})"
    candidates = sum(c.role == "candidate" for c in mine)
    if candidates:
        split = (
            "a held-out part of the training split (the best point then trains on all of it)"
            if task.select_on == "heldout"
            else "val (the best candidate's row is reported)"
        )
        searched += f"; selected by {task.spec.metrics[0]} on {split}"
    todo = [c for c in mine if cell_status(c, out_dir, done_ids) != "done"]
    runs = f"{len(mine)} runs ({candidates} candidates), {len(todo)} to run"
    return (
        f"task {task.label} ({task.task} {task.protocol}): {searched}; {runs}; cost {_cost(todo) or 'config schedules'}"
    )


def _cost(cells: list[Cell]) -> str:
    """The schedules ``cells`` add up to, per unit (cells on their config's schedule aside)."""
    cost: dict[str, float] = {}
    for c in cells:
        _, amount, unit = _schedule(c)
        if amount is not None and not (c.role == "final" and c.task.select_on == "val"):
            cost[unit] = cost.get(unit, 0) + amount
    return ", ".join(f"{_amount(v)} {unit}" for unit, v in sorted(cost.items()))


def _schedule(cell: Cell) -> tuple[str, float | None, str]:
    """(config, amount, unit) of a cell's training: the pretraining's steps or epochs, a dense
    task's iterations, a classification task's epochs; amount None: the config's own."""
    if cell.kind == "pretrain":
        p = cell.init.pretrain
        if "steps" in p:
            return p["method"], float(p["steps"]), "pretraining steps"
        return p["method"], (float(p["epochs"]) if "epochs" in p else None), "pretraining epochs"
    t = cell.task
    if cell.kind == "floor":
        return "raw pixels", None, "floor"
    config = str(t.config_for(cell.init.arch) or "default")
    point = dict(cell.point)
    if "epochs" in point:  # a searched schedule length (COCO's epochs, a classification grid)
        return config, float(point["epochs"]), f"{t.task} epochs"
    if "iters" in t.spec.suite_keys:
        iters = point.get("iters", t.iters)
        return config, (float(iters) if iters is not None else None), f"{t.task} iterations"
    epochs = point.get("epochs", t.epochs)
    return config, (float(epochs) if epochs is not None else None), f"{t.task} epochs"
