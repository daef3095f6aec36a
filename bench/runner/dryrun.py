"""``bench run --dry-run``: the plan as a table, the search grids and a cost estimate."""

from __future__ import annotations

from pathlib import Path

from bench.runner.plan import Cell, point_name
from bench.runner.state import cell_status, search_grid
from bench.suite import Suite


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
            grid = search_grid(c)
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
