"""Which rows a table shows and under which label: finished runs, labels per checkpoint, floors,
and the long frame of cells the aggregation reads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.tables.names import (
    _backbone_sort_key,
    _img_size,
    _main_metrics,
    _num,
    _resolution,
    _task_sort_key,
    _title,
    backbone_label,
)
from bench.tables.reference import _reference_key, reference_protocol
from tasks.registry import TASKS
from tasks.spec import Table

# Rows of a trivial classifier on the raw pixels (no backbone): shown as floors under the inits.
FLOOR_INIT = "raw_pixels"
FLOOR_METHODS = {
    "logreg": "logistic regression",
    "logistic": "logistic regression",
    "logistic_regression": "logistic regression",
    "knn": "k-NN",
    "1nn": "1-NN",
}
SHA_DIGITS = 8  # hex digits of checkpoint_sha256 that tell two checkpoints of one label apart


def _extra(r: dict) -> dict:
    extra = r.get("extra")
    return extra if isinstance(extra, dict) else {}


def _deviations(r: dict) -> tuple[str, ...]:
    value = r.get("deviations")
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def is_floor(init: Any, backbone: Any) -> bool:
    return init == FLOOR_INIT or backbone == FLOOR_INIT


def floor_label(protocol: str) -> str:
    """A floor row's name in the tables, from its protocol (one name whatever the row's label):
    'logreg' -> 'raw pixels (logistic regression)', 'knn' -> 'raw pixels (k-NN)'."""
    return f"raw pixels ({FLOOR_METHODS.get(str(protocol).lower(), protocol)})"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _row_labels(ok: pd.DataFrame) -> list[str]:
    """The label each row is shown under. A label that covers several checkpoints in one task and
    protocol becomes one row per checkpoint (``label@<first 8 hex of its sha256>``): two
    pretrainings are never averaged as if they were seeds."""
    labels = ok["label"] if "label" in ok.columns else ok["init"]
    shas = ok["checkpoint_sha256"] if "checkpoint_sha256" in ok.columns else [None] * len(ok)
    base = [
        floor_label(p) if is_floor(i, b) else (_text(label) or i)
        for label, i, b, p in zip(labels, ok["init"], ok["backbone"], ok["protocol"])
    ]
    sha = [_text(s) for s in shas]
    seen: dict[tuple, set] = {}
    for task, protocol, label, s in zip(ok["task"], ok["protocol"], base, sha):
        seen.setdefault((task, protocol, label), set()).add(s)
    split = {label for (_, _, label), found in seen.items() if len(found) > 1}
    return [
        (f"{label}@{s[:SHA_DIGITS]}" if s else f"{label}@no-checkpoint") if label in split else label
        for label, s in zip(base, sha)
    ]


def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with status 'ok', one per run_id (the last), without search candidates, with helper
    columns ``img_size``, ``resolution`` (None at the task's own input size), ``mask_ratio``,
    ``col`` (backbone label), ``init_label`` (the row's label, per checkpoint) and ``floor``."""
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
    ok["floor"] = [is_floor(i, b) for i, b in zip(ok["init"], ok["backbone"])]
    labels = _row_labels(ok)
    # A label pre-trained at several mask ratios is several rows, not one averaged cell.
    several = {label for label in set(labels) if ok["mask_ratio"][[x == label for x in labels]].dropna().nunique() > 1}
    ok["init_label"] = [
        f"{label} mask={ratio:g}" if label in several and not math.isnan(ratio) else label
        for label, ratio in zip(labels, ok["mask_ratio"])
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


def _place(r: dict, table: Table, metric: str, i: int, protocols: list[str]) -> tuple:
    """(group_key, group, column_key, column) of one row's metric in ``table``'s layout."""
    backbone_key = _backbone_sort_key(r["backbone"], r["resolution"])
    if table.layout == "metrics":  # Tables 3-5: a group per metric (and protocol)
        group_key = (i, r["protocol"])
        group = metric if len(protocols) < 2 else f"{metric} ({r['protocol']})"
    elif table.layout == "tasks":  # Table 6, linear probing: a group per task
        group_key, group = _task_sort_key(r["task"]), _title(r["task"])
    else:  # partial fine-tuning: a group per task and backbone, a column per k
        group_key = (_task_sort_key(r["task"]), backbone_key)
        group = f"{_title(r['task'])} {r['col']}"
    if table.layout == "k":
        return group_key, group, r["k"], "k=mlp" if r["k"] == 0.5 else f"k={r['k']}"
    return group_key, group, backbone_key, r["col"]


def _record(r: dict, metric: str, value: float, place: tuple, base_dir: Path | None) -> dict:
    group_key, group, column_key, column = place
    search = _extra(r).get("search")
    provenance = r.get("provenance") if isinstance(r.get("provenance"), dict) else None
    # an MAE pretrained with raw pixels or tokens sits beside Table 7's number for its target
    protocol = reference_protocol(r["protocol"], r["init"], provenance)
    return {
        "init": r["init_label"],
        "method": r["init"],
        "floor": bool(r["floor"]),
        "group": group,
        "group_key": group_key,
        "column": column,
        "column_key": column_key,
        "value": value,
        "metric": metric,
        "task": r["task"],
        "protocol": r["protocol"],
        "backbone": r["backbone"],
        "seed": int(r["seed"]),
        "per_example": _per_example_path(r, base_dir),
        "deviations": _deviations(r),
        "search": None if search is None else _search_note(search),
        "checkpoint_sha256": _text(r.get("checkpoint_sha256")),
        "provenance": provenance,
        "ref_key": _reference_key(r["task"], protocol, metric, r["init"], r["backbone"], r["resolution"], r["k"]),
    }


def _cells(runs: pd.DataFrame, table: Table, base_dir: Path | None = None) -> pd.DataFrame:
    """Long frame: one row per (init_label, group, column, run, metric) with the metric value,
    the sort keys of its group and column, the key that locates its published number and what
    the statistics and footnotes need (seed, per-example file, deviations, search, provenance)."""
    protocols = sorted(runs["protocol"].unique())
    records = []
    for r in runs.to_dict("records"):
        metrics = _main_metrics(r["task"])
        for i, metric in enumerate(metrics if table.layout == "metrics" else metrics[:1]):
            value = _num(r.get(metric))
            if not math.isnan(value):
                records.append(_record(r, metric, value, _place(r, table, metric, i, protocols), base_dir))
    return pd.DataFrame.from_records(records)


def _floor_cells(floors: pd.DataFrame, cells: pd.DataFrame, base_dir: Path | None = None) -> pd.DataFrame:
    """The floors' cells in a classification table: each floor run of a task fills every
    (group, column) that the learned runs of the same task and metric fill; a task the table does
    not show gets no floor."""
    if floors.empty or cells.empty:
        return pd.DataFrame()
    places = cells.drop_duplicates(["task", "metric", "group", "column"])
    records = []
    for r in floors.to_dict("records"):
        if r["task"] not in TASKS or TASKS[r["task"]].family != "classification":
            continue
        for p in places[places["task"] == r["task"]].to_dict("records"):
            value = _num(r.get(p["metric"]))
            if not math.isnan(value):
                place = (p["group_key"], p["group"], p["column_key"], p["column"])
                records.append(_record(r, p["metric"], value, place, base_dir))
    return pd.DataFrame.from_records(records)
