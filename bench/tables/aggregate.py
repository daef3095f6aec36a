"""Aggregation: finished runs -> one wide table per paper layout (values, intervals, marks, notes)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.tables.names import (
    DIGITS,
    _backbone_sort_key,
    _img_size,
    _init_sort_key,
    _main_metrics,
    _num,
    _resolution,
    _task_sort_key,
    _title,
    backbone_label,
)
from bench.tables.reference import _reference_key, _reference_lookup
from bench.tables.stats import BOOTSTRAP_SAMPLES, _Cell, _compare
from tasks.registry import TABLES, TASKS
from tasks.spec import Table

FIELDS = ("mean", "std", "n", "lo", "hi", "delta", "published")
BASELINE_INIT = "supervised"


def _extra(r: dict) -> dict:
    extra = r.get("extra")
    return extra if isinstance(extra, dict) else {}


def _deviations(r: dict) -> tuple[str, ...]:
    value = r.get("deviations")
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with status 'ok', one per run_id (the last), without search candidates, with helper
    columns ``img_size``, ``resolution`` (None at the task's own input size), ``mask_ratio``,
    ``col`` (backbone label) and ``init_label``."""
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame()
    ok = df[df["status"] == "ok"].drop_duplicates("run_id", keep="last").copy()
    if "extra" in ok.columns:
        ok = ok[[_extra({"extra": e}).get("search_role") != "candidate" for e in ok["extra"]]]
    if ok.empty:
        return ok
    missing = pd.Series(None, index=ok.index, dtype=object)
    # object dtype keeps None as None (a float column would turn it into NaN)
    ok["img_size"] = pd.Series(
        [_img_size(v, f"results row {rid}") for v, rid in zip(ok.get("extra.img_size", missing), ok["run_id"])],
        index=ok.index,
        dtype=object,
    )
    ok["resolution"] = pd.Series(
        [_resolution(t, s) for t, s in zip(ok["task"], ok["img_size"])], index=ok.index, dtype=object
    )
    ok["mask_ratio"] = [_num(v) for v in ok.get("extra.mask_ratio", missing)]
    ok["col"] = [backbone_label(b, s) for b, s in zip(ok["backbone"], ok["resolution"])]
    ok["k"] = pd.Series(
        [None if math.isnan(_num(k)) else (int(k) if float(k).is_integer() else float(k)) for k in ok["k"]],
        index=ok.index,
        dtype=object,
    )
    # An init pre-trained at several mask ratios is several rows, not one averaged cell.
    several = {init for init, g in ok.groupby("init") if g["mask_ratio"].dropna().nunique() > 1}
    ok["init_label"] = [
        f"{init} mask={ratio:g}" if init in several and not math.isnan(ratio) else init
        for init, ratio in zip(ok["init"], ok["mask_ratio"])
    ]
    return ok


def _per_example_path(r: dict, base_dir: Path | None) -> str | None:
    value = _extra(r).get("per_example")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else (base_dir or Path.cwd()) / path)


def _search_note(search: Any) -> str:
    """A footnote describing the hyperparameter search a final row came from (bench/runner.py's
    ``extra['search']``: grid, chosen, select_on, metric, failed)."""
    if not isinstance(search, dict):
        return "hyperparameters chosen by a search"
    parts = []
    grid = search.get("grid")
    size = search.get("grid_size")
    if size is None and isinstance(grid, list):
        size = len(grid)
    if size is None and isinstance(grid, dict) and grid:
        size = math.prod(len(v) if isinstance(v, list) else 1 for v in grid.values())
        parts.append(f"grid of {size} over {' x '.join(str(k) for k in grid)}")
    elif size is not None:
        parts.append(f"grid of {size}")
    chosen = search.get("chosen")
    if isinstance(chosen, dict) and chosen:
        parts.append("chosen " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    split = search.get("select_on") or search.get("selected_on") or search.get("select")
    if split:
        metric = search.get("metric")
        parts.append(f"selected on {split}" + (f" by {metric}" if isinstance(metric, str) else ""))
    failed = search.get("failed")
    if isinstance(failed, list) and failed:
        parts.append(f"{len(failed)} candidate(s) failed")
    return "hyperparameters chosen by a search" + (f" ({'; '.join(parts)})" if parts else "")


def _cells(runs: pd.DataFrame, table: Table, base_dir: Path | None = None) -> pd.DataFrame:
    """Long frame: one row per (init_label, group, column, run, metric) with the metric value,
    the sort keys of its group and column, the key that locates its published number and what
    the statistics and footnotes need (seed, per-example file, deviations, search)."""
    protocols = sorted(runs["protocol"].unique())
    records = []
    for r in runs.to_dict("records"):
        backbone_key = _backbone_sort_key(r["backbone"], r["resolution"])
        metrics = _main_metrics(r["task"])
        for i, metric in enumerate(metrics if table.layout == "metrics" else metrics[:1]):
            value = _num(r.get(metric))
            if math.isnan(value):
                continue
            if table.layout == "metrics":  # Tables 3-5: a group per metric (and protocol)
                group_key = (i, r["protocol"])
                group = metric if len(protocols) < 2 else f"{metric} ({r['protocol']})"
            elif table.layout == "tasks":  # Table 6, linear probing: a group per task
                group_key, group = _task_sort_key(r["task"]), _title(r["task"])
            else:  # partial fine-tuning: a group per task and backbone, a column per k
                group_key = (_task_sort_key(r["task"]), backbone_key)
                group = f"{_title(r['task'])} {r['col']}"
            if table.layout == "k":
                column_key, column = r["k"], "k=mlp" if r["k"] == 0.5 else f"k={r['k']}"
            else:
                column_key, column = backbone_key, r["col"]
            search = _extra(r).get("search")
            records.append(
                {
                    "init": r["init_label"],
                    "group": group,
                    "group_key": group_key,
                    "column": column,
                    "column_key": column_key,
                    "value": value,
                    "metric": metric,
                    "task": r["task"],
                    "protocol": r["protocol"],
                    "seed": int(r["seed"]),
                    "per_example": _per_example_path(r, base_dir),
                    "deviations": _deviations(r),
                    "search": None if search is None else _search_note(search),
                    "ref_key": _reference_key(
                        r["task"], r["protocol"], metric, r["init"], r["backbone"], r["resolution"], r["k"]
                    ),
                }
            )
    return pd.DataFrame.from_records(records)


class _Notes:
    """Footnotes of one table: each distinct text gets a letter, in order of first use."""

    def __init__(self):
        self.marks: dict[str, str] = {}

    def mark(self, text: str) -> str:
        if text not in self.marks:
            i = len(self.marks)
            letters = ""
            while True:
                letters = chr(ord("a") + i % 26) + letters
                i = i // 26 - 1
                if i < 0:
                    break
            self.marks[text] = letters
        return self.marks[text]


def _aggregate(
    cells: pd.DataFrame,
    published: dict[tuple, tuple[float, str]],
    title: str,
    samples: int = BOOTSTRAP_SAMPLES,
    paper_columns: dict | None = None,
    prev_best: dict | None = None,
) -> pd.DataFrame:
    """Wide table: index init, columns (group, column, field); text in ``attrs``."""
    stat_cells: dict[tuple, _Cell] = {}
    records = []
    for (init, group, column), g in cells.groupby(["init", "group", "column"], sort=False):
        rs = g.to_dict("records")
        cell = _Cell(rs, rs[0]["metric"], samples)
        stat_cells[(init, group, column)] = cell
        value, note = published.get(rs[0]["ref_key"], (math.nan, ""))
        records.append(
            {
                "init": init,
                "group": group,
                "column": column,
                "mean": cell.mean,
                "std": cell.std,
                "n": cell.n,
                "lo": cell.lo,
                "hi": cell.hi,
                "published": value,
            }
        )
    stats = pd.DataFrame.from_records(records).set_index(["init", "group", "column"]).sort_index()
    cell_index = stats.index.droplevel("init")
    if BASELINE_INIT in stats.index.get_level_values("init"):
        baseline = stats.loc[BASELINE_INIT, "mean"]
        stats["delta"] = stats["mean"].to_numpy() - baseline.reindex(cell_index).to_numpy()
    else:
        stats["delta"] = math.nan
    table = stats[list(FIELDS)].astype(float).unstack(["group", "column"])
    table = table.reorder_levels([1, 2, 0], axis=1)  # (field, group, column) -> (group, column, field)

    first = cells.groupby(["group", "column"]).agg(group_key=("group_key", "first"), column_key=("column_key", "first"))
    group_keys = first.groupby(level="group")["group_key"].first()
    groups = sorted(group_keys.index, key=lambda g: (group_keys[g], g))
    order = [
        (g, c, f)
        for g in groups
        for c in sorted(first.loc[g].index, key=lambda c: (first.loc[(g, c), "column_key"], c))
        for f in FIELDS
    ]
    table = table.reindex(
        index=sorted(table.index, key=_init_sort_key),
        columns=pd.MultiIndex.from_tuples(order, names=["group", "column", "field"]),
    )

    # Significance: the top init of each (group, column) against the runner-up.
    notes = _Notes()
    info: dict[tuple, dict] = {key: {"mark": "", "marks": [], "interval": "", "pub_marks": []} for key in stat_cells}
    tests = []
    for group, column in dict.fromkeys((g, c) for g, c, _ in order):
        ranked = sorted(
            ((cell.mean, init) for (init, g, c), cell in stat_cells.items() if (g, c) == (group, column)), reverse=True
        )
        if len(ranked) < 2:
            continue
        top, runner = ranked[0][1], ranked[1][1]
        verdict, how = _compare(stat_cells[(top, group, column)], stat_cells[(runner, group, column)], samples)
        tests.append((group, column, verdict, how))
        if verdict == "best":
            info[(top, group, column)]["mark"] = "best"
        elif verdict == "tie":
            for init in (top, runner):
                info[(init, group, column)]["mark"] = "tie"
        else:
            info[(top, group, column)]["marks"].append(
                notes.mark(f"highest mean, not tested against the runner-up ({runner}): {how}")
            )

    # Intervals, deviations, searches and the reference notes as footnotes.
    common = set.intersection(*(set(d) for d in cells["deviations"])) if len(cells) else set()
    for (init, group, column), cell in stat_cells.items():
        g = cells[(cells["init"] == init) & (cells["group"] == group) & (cells["column"] == column)]
        i = info[(init, group, column)]
        if cell.method == "images":
            i["interval"] = f"bootstrap over {len(cell.data[0])} images"
        elif cell.method == "seeds":
            i["interval"] = f"t-interval over {cell.n} seeds"
        else:
            i["interval"] = ""
            i["marks"].append(notes.mark(f"no interval: {cell.why_none}"))
        for phrase in dict.fromkeys(p for d in g["deviations"] for p in d):
            if phrase not in common:
                i["marks"].append(notes.mark(f"deviation from the paper's protocol: {phrase}"))
        for text in dict.fromkeys(t for t in g["search"] if isinstance(t, str) and t):
            i["marks"].append(notes.mark(text))
        value, note = published.get(g["ref_key"].iloc[0], (math.nan, ""))
        if not math.isnan(value) and note:
            i["pub_marks"].append(notes.mark(f"paper: {note}"))
        i["marks"] = list(dict.fromkeys(i["marks"]))

    table_notes = []
    if common:
        table_notes.append(
            "Every run here departs from the paper's protocol: "
            + "; ".join(sorted(common))
            + ". Compare with the paper's numbers "
            "only as a sanity check."
        )
    shown = {c for g, c, _ in order if table[(g, c, "published")].notna().any()}
    without = [c for c in dict.fromkeys(c for _, c, _ in order) if c not in shown]
    if without:
        known = sorted(set((paper_columns or {}).get(title, ())))
        table_notes.append(
            f"The paper has no number for {', '.join(without)}"
            + (f" (its columns here: {', '.join(known)})" if known else "")
            + ", so no paper column is shown for it."
        )
    if prev_best:
        table_notes.append(
            "Prev best (paper, Table 6: best earlier result, any method, model and "
            "input size): "
            + "; ".join(
                f"{group} {value:.{DIGITS}f}" + (f" (note {notes.mark('prev best: ' + note)})" if note else "")
                for group, (value, note) in prev_best.items()
            )
            + "."
        )
    table.attrs.update(title=title, info=info, notes=table_notes, footnotes=dict(notes.marks), tests=tests)
    return table


def build_tables(
    df: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    base_dir: str | os.PathLike | None = None,
    prev_best: pd.DataFrame | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, pd.DataFrame]:
    """The paper's table layouts from a results DataFrame (``ResultsStore.dataframe()``);
    tables without data are left out. ``base_dir``: where relative ``extra['per_example']``
    paths start (the results store's folder; default the working directory). ``prev_best``:
    Table 6's 'prev best' numbers (results/reference/mae_paper_prev_best.csv)."""
    runs = finished_runs(df)
    if runs.empty:
        return {}
    published = _reference_lookup(reference)
    base = None if base_dir is None else Path(base_dir)
    table_of = [TASKS[t].tables.get(p) if t in TASKS else None for t, p in zip(runs["task"], runs["protocol"])]
    paper_columns: dict[str, list[str]] = {}
    if reference is not None:
        for r in reference.itertuples(index=False):
            spec = TASKS.get(r.task)
            if spec is None or spec.tables.get(r.protocol) is None or not r.backbone:
                continue
            paper_columns.setdefault(spec.tables[r.protocol].title, []).append(
                backbone_label(r.backbone, spec.reference_resolution(r.img_size))
            )
    best_before = {}
    if prev_best is not None:
        for r in prev_best.itertuples(index=False):
            best_before[(r.task, r.protocol, r.metric)] = (float(r.value), str(getattr(r, "note", "")))
    tables = {}
    for table in TABLES:
        sel = runs[[t is table for t in table_of]]
        if sel.empty:
            continue
        cells = _cells(sel, table, base)
        if cells.empty:
            continue
        before = {}
        if table.layout == "tasks":
            for (task, protocol, metric, group), _ in cells.groupby(
                ["task", "protocol", "metric", "group"], sort=False
            ):
                if (task, protocol, metric) in best_before:
                    before[group] = best_before[(task, protocol, metric)]
        tables[table.name] = _aggregate(cells, published, table.title, samples, paper_columns, before)
    return tables
