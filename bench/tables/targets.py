"""Table 7 of the paper (MAE reconstruction targets): one row per target, tasks as columns, the
paper's number beside each cell and the Δ row (tokens minus normalised pixels), as the paper prints it.

A row's target is derived from its checkpoint (``backbones.provenance.reconstruction_target``): a
``bench pretrain --method mae --target ...`` run record, or an official release. The paper's token
row used DALL-E's dVAE; ours use the suite's VQ tokenizer, so every tokens cell beside a paper
number carries that mark (``backbones.provenance.TOKEN_MARK``, through the provenance footnotes).
The table is built when some MAE row was pretrained with a target other than normalised pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from backbones.provenance import reconstruction_target
from bench.tables.aggregate import _aggregate, stat_cells
from bench.tables.names import _task_sort_key, _title
from bench.tables.reference import TARGET_PROTOCOLS, _reference_lookup
from bench.tables.rows import _cells, finished_runs
from bench.tables.stats import BOOTSTRAP_SAMPLES, difference
from tasks.spec import Table

TARGET_TABLE = Table("table7_targets", "Table 7: MAE reconstruction targets", layout="tasks")
# Row names in the paper's order (its 'dVAE token' row is our tokens row, with the suite's tokenizer)
TARGET_ROWS = {"pixel": "pixel (w/o norm)", "pixel_norm": "pixel (w/ norm)", "tokens": "tokens (suite VQ)"}
PAPER_TASKS = {"imagenet": 0, "coco": 1, "ade20k": 2}  # Table 7's column order
DELTA_ROW = "\u0394 (tokens \u2212 pixel w/ norm)"
DELTA_NOTE = (
    "\u0394: the tokens row minus the pixel (w/ norm) row, as the paper's last row (dVAE tokens minus "
    "normalised pixels); its interval is the tables' test between the two cells."
)


def _target_cells(runs: pd.DataFrame, base_dir: Path | None) -> pd.DataFrame:
    """The MAE cells whose checkpoint's target is known, each under its target's row and keyed to
    Table 7's reference row ``<protocol>@<paper target>``; a group per task (and protocol)."""
    mae = runs[(runs["init"] == "mae") & ~runs["floor"]]
    if mae.empty:
        return pd.DataFrame()
    provenance = mae["provenance"] if "provenance" in mae.columns else [None] * len(mae)  # schema < 3: none
    targets = [reconstruction_target(p if isinstance(p, dict) else None) for p in provenance]
    mae = mae[[t is not None for t in targets]]
    if not any(t not in (None, "pixel_norm") for t in targets):
        return pd.DataFrame()  # only the main tables' kind of MAE: nothing for Table 7 to add
    cells = _cells(mae, TARGET_TABLE, base_dir)
    if cells.empty:
        return cells  # no row records the task's headline metric
    cells["target"] = [reconstruction_target(p) for p in cells["provenance"]]
    labels = cells.groupby("target")["init"].nunique()
    cells["init"] = [
        TARGET_ROWS[t] if labels[t] == 1 else f"{TARGET_ROWS[t]}: {label}"
        for t, label in zip(cells["target"], cells["init"])
    ]
    several = cells.groupby("task")["protocol"].nunique()
    cells["group"] = [
        _title(t) if several[t] == 1 else f"{_title(t)} ({p})" for t, p in zip(cells["task"], cells["protocol"])
    ]
    cells["group_key"] = [
        (PAPER_TASKS.get(t, len(PAPER_TASKS)), _task_sort_key(t), p) for t, p in zip(cells["task"], cells["protocol"])
    ]
    cells["ref_key"] = [  # from the row's own protocol, whatever the main tables' lookup made of it
        (k[0], f"{p}@{TARGET_PROTOCOLS[t]}", *k[2:])
        for k, p, t in zip(cells["ref_key"], cells["protocol"], cells["target"])
    ]
    return cells


def _row_order(labels) -> list[str]:
    rank = {name: i for i, name in enumerate(TARGET_ROWS.values())}
    return sorted(labels, key=lambda s: (rank.get(s.split(": ")[0], len(rank)), s))


def _add_delta(table: pd.DataFrame, cells: pd.DataFrame, samples: int) -> pd.DataFrame:
    """The Δ row where exactly one tokens row and one pixel (w/ norm) row exist: our difference
    with its interval, and the paper's difference beside it."""
    tok, norm = TARGET_ROWS["tokens"], TARGET_ROWS["pixel_norm"]
    if tok not in table.index or norm not in table.index:
        return table
    stats = stat_cells(cells, samples)
    delta = pd.Series(math.nan, index=table.columns)
    info = dict(table.attrs["info"])
    for group, column in dict.fromkeys((g, c) for g, c, _ in table.columns):
        if (tok, group, column) not in stats or (norm, group, column) not in stats:
            continue
        d = difference(stats[(tok, group, column)], stats[(norm, group, column)])
        n = min(stats[(tok, group, column)].n, stats[(norm, group, column)].n)
        delta[(group, column, "mean")], delta[(group, column, "n")] = d.mean, n
        delta[(group, column, "lo")], delta[(group, column, "hi")] = d.lo, d.hi
        paper = table.loc[tok, (group, column, "published")] - table.loc[norm, (group, column, "published")]
        delta[(group, column, "published")] = paper
        info[(DELTA_ROW, group, column)] = {**info[(tok, group, column)], "mark": "", "marks": [], "pub_marks": []}
        info[(DELTA_ROW, group, column)]["interval"] = d.how if math.isnan(d.lo) else f"difference: {d.how}"
    out = pd.concat([table, delta.to_frame(DELTA_ROW).T])
    out.attrs = {**table.attrs, "info": info, "notes": [*table.attrs.get("notes", []), DELTA_NOTE]}
    return out


def target_tables(
    df: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    base_dir: str | os.PathLike | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, pd.DataFrame]:
    """``{'table7_targets': table}`` in the layout of the other tables (``bench.tables.render``
    writes it), or ``{}`` when no MAE row has a target other than normalised pixels."""
    runs = finished_runs(df)
    if runs.empty:
        return {}
    cells = _target_cells(runs, None if base_dir is None else Path(base_dir))
    if cells.empty:
        return {}
    published = _reference_lookup(reference)
    table = _aggregate(cells, published, TARGET_TABLE.title, samples)
    ordered = table.reindex(index=_row_order(table.index))
    ordered.attrs = table.attrs
    return {TARGET_TABLE.name: _add_delta(ordered, cells, samples)}
