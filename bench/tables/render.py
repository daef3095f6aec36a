"""Writing tables: CSV (long: shown digits and raw values), LaTeX (booktabs), Markdown."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_text
from bench.tables.aggregate import FIELDS, empty_info
from bench.tables.escape import csv_safe, latex_escape, md_escape
from bench.tables.names import DIGITS
from bench.tables.stats import BOOTSTRAP_SAMPLES

FORMATS = ("csv", "tex", "md")
FLOOR_HEADING = "Floors: raw pixels, no backbone"
MARK_WORDS = {"best": "best", "tie": "n.s.", "": ""}
LONG_COLUMNS = [
    "init",
    "block",
    "group",
    "column",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "delta",
    "published",
    "paper_match",
    "interval",
    "mark",
    "notes",
    "mean_raw",
    "std_raw",
    "ci_low_raw",
    "ci_high_raw",
    "delta_raw",
]


def _info(table: pd.DataFrame, init: str, group: str, column: str) -> dict:
    return table.attrs.get("info", {}).get((init, group, column), empty_info())


def legend(table: pd.DataFrame) -> str:
    """What the cells show, naming the intervals this table uses."""
    methods = table.attrs.get("methods", ["images", "seeds"])
    samples = table.attrs.get("samples", BOOTSTRAP_SAMPLES)
    # rows are never pooled across checkpoints (run identity), so no interval holds pretraining variance
    parts = ["Cells: mean [95 % interval]; a row is one checkpoint, so intervals leave out pretraining-run variance."]
    if "images" in methods:
        parts.append(f"One run: percentile bootstrap over the evaluation images ({samples} resamples).")
    if "seeds x images" in methods:
        parts.append(
            f"n=N with per-image results: bootstrap over seeds \u00d7 images ({samples} resamples, each drawing "
            "the evaluation images and the N seeds with replacement, then averaging over the drawn seeds)."
        )
    if "seeds" in methods:
        parts.append("n=N without per-image results: Student t-interval over the N seeds.")
    parts.append(
        "Bold: better than the runner-up (paired bootstrap over the same images, or a t-test over seeds: "
        "the 95 % interval of the difference is above 0); n.s.: the top two are not distinguishable by that test."
    )
    return " ".join(parts)


def _cell_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys((group, column) for group, column, _ in table.columns))


def _has_published(table: pd.DataFrame, group: str, column: str) -> bool:
    return bool(table[(group, column, "published")].notna().any())


def table_to_long(table: pd.DataFrame, digits: int = DIGITS) -> pd.DataFrame:
    """One row per (init, group, column): the numbers as shown (rounded to ``digits``), whether the
    row's checkpoint is the paper's where a published number sits beside it, the interval method,
    the significance mark and footnotes, then the raw values (``*_raw``)."""
    footnotes = {mark: text for text, mark in table.attrs.get("footnotes", {}).items()}
    floors = set(table.attrs.get("floors", []))
    records = []
    for init in table.index:
        for group, column in _cell_columns(table):
            cell = {f: table.loc[init, (group, column, f)] for f in FIELDS}
            if math.isnan(cell["mean"]):
                continue
            i = _info(table, init, group, column)
            shown = {k: round(cell[f], digits) for k, f in (("mean", "mean"), ("ci_low", "lo"), ("ci_high", "hi"))}
            records.append(
                {
                    "init": init,
                    "block": "floor" if init in floors else "init",
                    "group": group,
                    "column": column,
                    **shown,
                    "n": int(cell["n"]),
                    "delta": round(cell["delta"], digits),
                    "published": cell["published"],
                    "paper_match": i["paper_match"],
                    "interval": i["interval"],
                    "mark": MARK_WORDS[i["mark"]],
                    "notes": " | ".join(footnotes[m] for m in i["marks"] + i["pub_marks"]),
                    "mean_raw": cell["mean"],
                    "std_raw": cell["std"],
                    "ci_low_raw": cell["lo"],
                    "ci_high_raw": cell["hi"],
                    "delta_raw": cell["delta"],
                }
            )
    long = pd.DataFrame.from_records(records, columns=LONG_COLUMNS)
    long["n"] = long["n"].astype(int)
    for c in ("mean", "ci_low", "ci_high", "delta"):  # -0.0 from rounding a tiny negative
        long[c] = long[c] + 0.0
    return long


def to_csv(table: pd.DataFrame, digits: int = DIGITS) -> str:
    """The long table as CSV; text cells a spreadsheet would run as formulas are quoted as text."""
    long = table_to_long(table, digits)
    for c in ("init", "block", "group", "column", "interval", "mark", "notes"):
        long[c] = [csv_safe(v) for v in long[c]]
    return long.to_csv(index=False, lineterminator="\n")


def _fmt(x: float, digits: int, style: str = "md") -> str:
    """A number as shown: a real minus sign (U+2212 in Markdown, math minus in LaTeX)."""
    text = f"{x:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    if text.startswith("-"):
        return ("$-$" if style == "tex" else "\u2212") + text[1:]
    return text


def _sup(marks: list[str], style: str) -> str:
    if not marks:
        return ""
    text = ",".join(marks)
    return rf"\textsuperscript{{{text}}}" if style == "tex" else f"<sup>{text}</sup>"


def _cell_text(table, init, group, column, digits, style) -> str:
    mean = table.loc[init, (group, column, "mean")]
    if math.isnan(mean):
        return ""
    lo, hi = table.loc[init, (group, column, "lo")], table.loc[init, (group, column, "hi")]
    n = int(table.loc[init, (group, column, "n")])
    i = _info(table, init, group, column)
    value = _fmt(mean, digits, style)
    if i["mark"] == "best":
        value = rf"\textbf{{{value}}}" if style == "tex" else f"**{value}**"
    text = value
    if not math.isnan(lo):
        text += f" [{_fmt(lo, digits, style)}, {_fmt(hi, digits, style)}]"
    if n > 1:
        text += f" n={n}"
    if i["mark"] == "tie":
        text += " n.s."
    return text + _sup(i["marks"], style)


def _published_text(table, init, group, column, digits, style="md") -> str:
    value = table.loc[init, (group, column, "published")]
    if math.isnan(value):
        return ""
    return _fmt(value, digits, style) + _sup(_info(table, init, group, column)["pub_marks"], style)


def _footnote_lines(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(mark, text) of every footnote, then ('', text) of every table note."""
    out = [(mark, text) for text, mark in table.attrs.get("footnotes", {}).items()]
    return out + [("", text) for text in table.attrs.get("notes", [])]


def _body_rows(table: pd.DataFrame, digits: int, style: str) -> list[tuple[str, list[str]]]:
    """(init, cell texts) per row, the paper's number beside each column that has one; a
    (FLOOR_HEADING, []) marker before the floors."""
    floors = set(table.attrs.get("floors", []))
    rows, heading = [], False
    for init in table.index:
        if init in floors and not heading:
            rows.append((FLOOR_HEADING, []))
            heading = True
        cells = []
        for group, column in _cell_columns(table):
            cells.append(_cell_text(table, init, group, column, digits, style))
            if _has_published(table, group, column):
                cells.append(_published_text(table, init, group, column, digits, style))
        rows.append((init, cells))
    return rows


def to_markdown(table: pd.DataFrame, digits: int = DIGITS) -> str:
    header = ["init"]
    for group, column in _cell_columns(table):
        header.append(md_escape(f"{group} {column}"))
        if _has_published(table, group, column):
            header.append(md_escape(f"{group} {column} (paper)"))
    lines = [
        f"**{md_escape(table.attrs.get('title', ''))}**",
        "",
        legend(table),  # our own text: nothing to escape
        "",
        "| " + " | ".join(header) + " |",
        "|:---|" + "---:|" * (len(header) - 1),
    ]
    for init, cells in _body_rows(table, digits, "md"):
        if not cells:  # the floors' heading
            lines.append(f"| *{md_escape(init)}* |" + " |" * (len(header) - 1))
            continue
        lines.append("| " + " | ".join([md_escape(init), *cells]) + " |")
    notes = _footnote_lines(table)
    if notes:
        lines.append("")
        lines += [(f"<sup>{mark}</sup> " if mark else "") + md_escape(text) + "  " for mark, text in notes]
    return "\n".join(lines) + "\n"


def _latex_head(table: pd.DataFrame) -> list[str]:
    """The two header rows: the groups over their columns, then the columns."""
    spans: dict[str, int] = {}  # group -> number of tabular columns
    for group, column in _cell_columns(table):
        spans[group] = spans.get(group, 0) + 1 + _has_published(table, group, column)
    row, rules, start = [""], [], 2
    for group, span in spans.items():
        row.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    second = ["init"]
    for group, column in _cell_columns(table):
        second.append(latex_escape(column))
        if _has_published(table, group, column):
            second.append("paper")
    return [" & ".join(row) + r" \\", " ".join(rules), " & ".join(second) + r" \\"]


def to_latex(table: pd.DataFrame, digits: int = DIGITS) -> str:
    """A complete ``table`` float (booktabs): caption, label, tabular and footnotes."""
    ncols = 1 + sum(1 + _has_published(table, g, c) for g, c in _cell_columns(table))
    title = table.attrs.get("title", "")
    label = re.sub(r"[^A-Za-z0-9]+", "-", title.split(",")[0]).strip("-").lower() or "table"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(title)}. {latex_escape(legend(table))} 'paper': He et al.\ 2021.}}",
        rf"\label{{tab:{label}}}",
        r"\begin{tabular}{l" + "c" * (ncols - 1) + "}",
        r"\toprule",
        *_latex_head(table),
        r"\midrule",
    ]
    for init, cells in _body_rows(table, digits, "tex"):
        if not cells:
            lines += [r"\midrule", rf"\multicolumn{{{ncols}}}{{l}}{{\emph{{{latex_escape(init)}}}}} \\"]
            continue
        lines.append(" & ".join([latex_escape(init), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = _footnote_lines(table)
    if notes:
        lines += [r"\par\smallskip\footnotesize\raggedright"]
        lines += [
            (rf"\textsuperscript{{{mark}}}" if mark else "") + latex_escape(text) + r"\par" for mark, text in notes
        ]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(
    tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Write every table as ``<out_dir>/<name>.<fmt>`` (each file atomically, with the mode a
    plain ``open`` gives under the user's umask); return the paths."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise BenchError(f"table format {fmt!r} (option --formats) is not one of {FORMATS}")
    writers = {"csv": to_csv, "tex": to_latex, "md": to_markdown}
    out_dir = Path(out_dir)
    written = []
    for name, table in tables.items():
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            atomic_write_text(path, writers[fmt](table))
            written.append(path)
    return written
