"""Aggregation: the cells of finished runs -> one wide table per paper layout (values, intervals,
marks, notes)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from bench.tables.names import DIGITS, _init_sort_key, backbone_label
from bench.tables.provenance import paper_mismatch
from bench.tables.reference import _reference_lookup
from bench.tables.rows import _cells, _floor_cells, finished_runs
from bench.tables.stats import BOOTSTRAP_SAMPLES, _Cell, _compare
from tasks.registry import TABLES, TASKS

FIELDS = ("mean", "std", "n", "lo", "hi", "delta", "published")
BASELINE_INIT = "supervised"
INTERVAL_TEXT = {
    "images": "bootstrap over {images} images",
    "seeds x images": "bootstrap over {images} images x {n} seeds",
    "seeds": "t-interval over {n} seeds",
}


def empty_info() -> dict:
    return {"mark": "", "marks": [], "interval": "", "method": "", "pub_marks": [], "paper_match": None}


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


def stat_cells(cells: pd.DataFrame, samples: int = BOOTSTRAP_SAMPLES) -> dict[tuple, _Cell]:
    """(init, group, column) -> its statistics (runs of one label and checkpoint are its seeds)."""
    out = {}
    for key, g in cells.groupby(["init", "group", "column"], sort=False):
        rs = list({r["seed"]: r for r in g.to_dict("records")}.values())  # one run per seed: the last
        out[key] = _Cell(rs, rs[0]["metric"], samples)
    return out


def _wide(cells: pd.DataFrame, stats: dict[tuple, _Cell], published: dict) -> pd.DataFrame:
    """The numbers: index init, columns (group, column, field), groups and columns in order."""
    records = []
    for (init, group, column), g in cells.groupby(["init", "group", "column"], sort=False):
        cell = stats[(init, group, column)]
        value, _ = published.get(g["ref_key"].iloc[0], (math.nan, ""))
        records.append({"init": init, "group": group, "column": column, "mean": cell.mean, "std": cell.std})
        records[-1].update(n=cell.n, lo=cell.lo, hi=cell.hi, published=value)
    frame = pd.DataFrame.from_records(records).set_index(["init", "group", "column"]).sort_index()
    if BASELINE_INIT in frame.index.get_level_values("init"):
        baseline = frame.loc[BASELINE_INIT, "mean"]
        frame["delta"] = frame["mean"].to_numpy() - baseline.reindex(frame.index.droplevel("init")).to_numpy()
    else:
        frame["delta"] = math.nan
    table = frame[list(FIELDS)].astype(float).unstack(["group", "column"])
    table = table.reorder_levels([1, 2, 0], axis=1)  # (field, group, column) -> (group, column, field)
    first = cells.groupby(["group", "column"]).agg(group_key=("group_key", "first"), column_key=("column_key", "first"))
    group_keys = first.groupby(level="group")["group_key"].first()
    order = [
        (g, c, f)
        for g in sorted(group_keys.index, key=lambda g: (group_keys[g], g))
        for c in sorted(first.loc[g].index, key=lambda c: (first.loc[(g, c), "column_key"], c))
        for f in FIELDS
    ]
    floors = set(cells.loc[cells["floor"], "init"])
    rows = sorted(set(table.index) - floors, key=_init_sort_key) + sorted(floors & set(table.index))
    return table.reindex(index=rows, columns=pd.MultiIndex.from_tuples(order, names=["group", "column", "field"]))


def _mark_best(stats: dict[tuple, _Cell], floors: set, info: dict, notes: _Notes, samples: int) -> list:
    """The top learned init of each (group, column) against the runner-up (floors take no part)."""
    tests = []
    for group, column in dict.fromkeys((g, c) for _, g, c in stats):
        ranked = sorted(
            (
                (cell.mean, init)
                for (init, g, c), cell in stats.items()
                if (g, c) == (group, column) and init not in floors
            ),
            reverse=True,
        )
        if len(ranked) < 2:
            continue
        top, runner = ranked[0][1], ranked[1][1]
        verdict, how = _compare(stats[(top, group, column)], stats[(runner, group, column)], samples)
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
    return tests


def _paper_marks(g: pd.DataFrame, i: dict, notes: _Notes) -> None:
    """A cell beside a published number is marked unless its checkpoint is the paper's."""
    why = [paper_mismatch(r["method"], r["backbone"], r["provenance"]) for r in g.to_dict("records")]
    why = list(dict.fromkeys(w for w in why if w))
    i["paper_match"] = not why
    i["marks"] += [notes.mark(w) for w in why]


def _cell_notes(cells: pd.DataFrame, stats: dict, info: dict, notes: _Notes, published: dict) -> None:
    """Per cell: how its interval was made (or why none), deviations, searches, the paper match and
    the reference notes, as footnote marks."""
    common = set.intersection(*(set(d) for d in cells["deviations"])) if len(cells) else set()
    for (init, group, column), g in cells.groupby(["init", "group", "column"], sort=False):
        cell, i = stats[(init, group, column)], info[(init, group, column)]
        i["method"] = cell.method
        if cell.method:
            images = 0 if cell.ids is None else len(cell.ids)
            i["interval"] = INTERVAL_TEXT[cell.method].format(images=images, n=cell.n)
        else:
            i["marks"].append(notes.mark(f"no interval: {cell.why_none}"))
        repeated = sorted(int(seed) for seed, count in g["seed"].value_counts().items() if count > 1)
        if repeated:
            seeds = ", ".join(map(str, repeated))
            i["marks"].append(
                notes.mark(f"several runs of seed {seeds} (same label and checkpoint): the last recorded counts")
            )
        for phrase in dict.fromkeys(p for d in g["deviations"] for p in d):
            if phrase not in common:
                i["marks"].append(notes.mark(f"deviation from the paper's protocol: {phrase}"))
        for text in dict.fromkeys(t for t in g["search"] if isinstance(t, str) and t):
            i["marks"].append(notes.mark(text))
        value, note = published.get(g["ref_key"].iloc[0], (math.nan, ""))
        if not math.isnan(value):
            _paper_marks(g, i, notes)
            if note:
                i["pub_marks"].append(notes.mark(f"paper: {note}"))
        i["marks"] = list(dict.fromkeys(i["marks"]))


def _table_notes(cells, table, title, notes: _Notes, paper_columns: dict | None, prev_best: dict | None) -> list:
    notes_out = []
    common = set.intersection(*(set(d) for d in cells["deviations"])) if len(cells) else set()
    if common:
        notes_out.append(
            "Every run here departs from the paper's protocol: "
            + "; ".join(sorted(common))
            + ". Compare with the paper's numbers only as a sanity check."
        )
    columns = list(dict.fromkeys(c for _, c, _ in table.columns))
    shown = {c for g, c, _ in table.columns if table[(g, c, "published")].notna().any()}
    without = [c for c in columns if c not in shown]
    if without:
        known = sorted(set((paper_columns or {}).get(title, ())))
        notes_out.append(
            f"The paper has no number for {', '.join(without)}"
            + (f" (its columns here: {', '.join(known)})" if known else "")
            + ", so no paper column is shown for it."
        )
    if prev_best:
        notes_out.append(
            "Prev best (paper, Table 6: best earlier result, any method, model and input size): "
            + "; ".join(
                f"{group} {value:.{DIGITS}f}" + (f" (note {notes.mark('prev best: ' + note)})" if note else "")
                for group, (value, note) in prev_best.items()
            )
            + "."
        )
    if cells["floor"].any():
        notes_out.append(
            "Floors (last rows): a classifier on the raw pixels, no backbone and no pre-training, trained on "
            "the same labelled images and evaluated on the same images as the inits above."
        )
    return notes_out


def _aggregate(
    cells: pd.DataFrame,
    published: dict[tuple, tuple[float, str]],
    title: str,
    samples: int = BOOTSTRAP_SAMPLES,
    paper_columns: dict | None = None,
    prev_best: dict | None = None,
) -> pd.DataFrame:
    """Wide table: index init, columns (group, column, field); text in ``attrs``."""
    stats = stat_cells(cells, samples)
    table = _wide(cells, stats, published)
    notes = _Notes()
    info = {key: empty_info() for key in stats}
    floors = set(cells.loc[cells["floor"], "init"])
    tests = _mark_best(stats, floors, info, notes, samples)
    _cell_notes(cells, stats, info, notes, published)
    table_notes = _table_notes(cells, table, title, notes, paper_columns, prev_best)
    methods = sorted({i["method"] for i in info.values() if i["method"]})
    table.attrs.update(
        title=title,
        info=info,
        notes=table_notes,
        footnotes=dict(notes.marks),
        tests=tests,
        floors=[init for init in table.index if init in floors],
        methods=methods,
        samples=samples,
    )
    return table


def _paper_columns(reference: pd.DataFrame | None) -> dict[str, list[str]]:
    """Table title -> the paper's backbone columns in it (for the 'no number for' note)."""
    out: dict[str, list[str]] = {}
    for r in reference.itertuples(index=False) if reference is not None else ():
        spec = TASKS.get(r.task)
        if spec is None or spec.tables.get(r.protocol) is None or not r.backbone:
            continue
        out.setdefault(spec.tables[r.protocol].title, []).append(
            backbone_label(r.backbone, spec.reference_resolution(r.img_size))
        )
    return out


def _prev_best_of(cells: pd.DataFrame, prev_best: pd.DataFrame | None) -> dict:
    """Group -> (Table 6's 'prev best' value, note) for the learned groups shown."""
    if prev_best is None:
        return {}
    known = {
        (r.task, r.protocol, r.metric): (float(r.value), str(getattr(r, "note", "")))
        for r in prev_best.itertuples(index=False)
    }
    out = {}
    learned = cells[~cells["floor"]]
    for (task, protocol, metric, group), _ in learned.groupby(["task", "protocol", "metric", "group"], sort=False):
        if (task, protocol, metric) in known:
            out[group] = known[(task, protocol, metric)]
    return out


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
    Table 6's 'prev best' numbers (results/reference/mae_paper_prev_best.csv). Floor rows (raw
    pixels) join every classification table that shows their task, below the inits."""
    runs = finished_runs(df)
    if runs.empty:
        return {}
    published = _reference_lookup(reference)
    base = None if base_dir is None else Path(base_dir)
    learned, floors = runs[~runs["floor"]], runs[runs["floor"]]
    table_of = [TASKS[t].tables.get(p) if t in TASKS else None for t, p in zip(learned["task"], learned["protocol"])]
    paper_columns = _paper_columns(reference)
    tables = {}
    for table in TABLES:
        sel = learned[[t is table for t in table_of]]
        cells = _cells(sel, table, base) if not sel.empty else pd.DataFrame()
        if cells.empty:
            continue
        floor_cells = _floor_cells(floors, cells, base) if table.layout != "k" else pd.DataFrame()
        if not floor_cells.empty:
            cells = pd.concat([cells, floor_cells], ignore_index=True)
        before = _prev_best_of(cells, prev_best) if table.layout == "tasks" else {}
        tables[table.name] = _aggregate(cells, published, table.title, samples, paper_columns, before)
    return tables
