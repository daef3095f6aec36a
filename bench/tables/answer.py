"""The answer in words: one sentence per protocol, from the same tests that mark the tables.

``answer_sentences(rows, task)`` compares every learned init of a task with the baseline label
(random init by default) on the task's headline metric: the difference of means, its 95 %
interval and the verdict of ``stats.difference`` (paired bootstrap over the same evaluation
images, seeds drawn with replacement; a t-test over seeds where there are no per-example files).
The wording says only what that test says: 'better' / 'worse' when the interval excludes 0
(p < 0.05), 'not distinguishable' otherwise, 'not tested' when no test applies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.io import atomic_write_text
from bench.tables.aggregate import stat_cells
from bench.tables.names import _init_sort_key, _main_metrics, _title
from bench.tables.rows import _cells, finished_runs
from bench.tables.stats import BOOTSTRAP_SAMPLES, Difference, _Cell, difference
from tasks.registry import TASKS
from tasks.spec import Table

PROTOCOL_WORDS = {"finetune": "fine-tuned", "linear": "linear probe", "partial": "partial fine-tuning"}
ANSWER_FILE = "answer.md"


def rows_frame(rows: Any) -> pd.DataFrame:
    """A DataFrame as ``ResultsStore.dataframe()`` gives it, from one or from a list of row dicts."""
    if isinstance(rows, pd.DataFrame):
        return rows
    records = []
    for row in rows:
        record = {key: value for key, value in row.items() if key != "metrics"}
        record.update(row.get("metrics") or {})
        for key, value in (row.get("extra") or {}).items():
            if value is None or isinstance(value, (str, int, float, bool)):
                record[f"extra.{key}"] = value
        records.append(record)
    return pd.DataFrame.from_records(records)


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def _phrase(label: str, baseline: str, d: Difference) -> str:
    """'mae vs random: +21.3 points [17.9, 24.6], better (paired bootstrap ..., p<0.05)'."""
    head = f"{label} vs {baseline}: {_signed(d.mean)} points"
    if d.verdict == "not tested":
        return f"{head}, not tested ({d.how})"
    significant = ", p<0.05" if d.verdict in ("better", "worse") else ""
    return f"{head} [{_signed(d.lo)}, {_signed(d.hi)}], {d.verdict} ({d.how}{significant})"


def _protocol_cells(runs: pd.DataFrame, task: str, protocol: str, base_dir: Path | None, samples: int) -> dict:
    """(label, column) -> cell of the task's headline metric, for one protocol's rows."""
    sel = runs[(runs["protocol"] == protocol)]
    table = TASKS[task].tables.get(protocol) if task in TASKS else None
    cells = _cells(sel, table or Table(protocol, protocol, "tasks"), base_dir)
    if cells.empty:
        return {}
    cells = cells[cells["metric"] == _main_metrics(task)[0]]
    return {(init, column): cell for (init, _, column), cell in stat_cells(cells, samples).items()}


def _plain(text: str) -> str:
    return text


def _protocol_sentences(runs, task, protocol, baseline, base_dir, samples, esc=_plain) -> list[str]:
    cells = _protocol_cells(runs, task, protocol, base_dir, samples)
    columns = list(dict.fromkeys(column for _, column in cells))
    words = PROTOCOL_WORDS.get(protocol, protocol)
    out = []
    for column in columns:
        where = f"{esc(_title(task))} ({esc(column)}), {esc(words)}"
        labels = sorted({label for label, c in cells if c == column}, key=_init_sort_key)
        if (baseline, column) not in cells:
            out.append(f"{where}: no '{esc(baseline)}' runs to compare with ({', '.join(map(esc, labels))} only).")
            continue
        base = cells[(baseline, column)]
        others = [label for label in labels if label != baseline]
        if not others:
            out.append(f"{where}: only '{esc(baseline)}' ran, nothing to compare.")
            continue
        phrases = [_phrase(esc(label), esc(baseline), difference(cells[(label, column)], base)) for label in others]
        out.append(f"{where}: " + "; ".join(phrases) + ".")
    return out


def _floor_sentences(runs: pd.DataFrame, task: str, base_dir: Path | None, samples: int, esc=_plain) -> list[str]:
    """The floors' values; then the best learned cell (highest mean) against the highest floor."""
    floors = runs[runs["floor"]]
    if floors.empty:
        return []
    metric = _main_metrics(task)[0]
    cells = _cells(floors, Table("floors", "floors", "tasks"), base_dir)
    cells = cells[cells["metric"] == metric] if not cells.empty else cells
    if cells.empty:
        return []
    found = {init: cell for (init, _, _), cell in stat_cells(cells, samples).items()}
    shown = [f"{esc(label)} {_value(cell)}" for label, cell in found.items()]
    out = [f"{esc(_title(task))}, raw-pixel floors ({metric}): " + "; ".join(shown) + "."]
    learned: list[tuple[float, str, _Cell]] = []
    for protocol in sorted(set(runs.loc[~runs["floor"], "protocol"])):
        for (label, column), cell in _protocol_cells(runs[~runs["floor"]], task, protocol, base_dir, samples).items():
            words = PROTOCOL_WORDS.get(protocol, protocol)
            learned.append((cell.mean, esc(f"{label} ({words}, {column})"), cell))
    if learned:
        _, name, best = max(learned, key=lambda t: t[0])
        floor_label, floor = max(found.items(), key=lambda kv: kv[1].mean)
        phrase = _phrase(name, esc(floor_label), difference(best, floor))
        out.append(f"{esc(_title(task))}, the best learned cell against the highest floor: {phrase}.")
    return out


def _value(cell: _Cell) -> str:
    interval = "" if cell.lo != cell.lo else f" [{cell.lo:.1f}, {cell.hi:.1f}]"
    return f"{cell.mean:.1f}{interval}" + (f" n={cell.n}" if cell.n > 1 else "")


def answer_sentences(
    rows: Any,
    task: str,
    baseline_label: str = "random",
    base_dir: str | os.PathLike | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    escape=None,
) -> list[str]:
    """One sentence per protocol (and backbone column) of ``task``: every learned label against
    ``baseline_label`` on the headline metric, with the tables' test; then the raw-pixel floors
    against the best learned cell. ``rows``: a results DataFrame or a list of rows; ``base_dir``:
    where relative per-example paths start (the store's folder); ``escape``: applied to every name
    in the sentences (``md_escape`` for answer.md)."""
    esc = escape or _plain
    runs = finished_runs(rows_frame(rows))
    runs = runs[runs["task"] == task] if not runs.empty else runs
    if runs.empty:
        return [f"{esc(_title(task))}: no finished runs."]
    base = None if base_dir is None else Path(base_dir)
    order = list(TASKS[task].protocols) if task in TASKS else []
    protocols = sorted(
        set(runs.loc[~runs["floor"], "protocol"]), key=lambda p: (order.index(p) if p in order else len(order), p)
    )
    out = []
    for protocol in protocols:
        out += _protocol_sentences(runs[~runs["floor"]], task, protocol, baseline_label, base, samples, esc)
    return out + _floor_sentences(runs, task, base, samples, esc)


def write_answer(sentences: list[str], out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/answer.md``: the sentences (names escaped with ``md_escape``), one paragraph each."""
    text = (
        "**Answer** (from the tables' own tests; each init is one checkpoint, so the intervals leave out "
        "pretraining-run variance)\n\n" + "\n\n".join(sentences) + "\n"
    )
    return atomic_write_text(Path(out_dir) / ANSWER_FILE, text)
