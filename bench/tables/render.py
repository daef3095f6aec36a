"""Writing tables: CSV (long: shown digits and raw values), LaTeX (booktabs), Markdown."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_text
from bench.tables.aggregate import FIELDS
from bench.tables.names import DIGITS
from bench.tables.stats import BOOTSTRAP_SAMPLES

FORMATS = ("csv", "tex", "md")


def _info(table: pd.DataFrame, init: str, group: str, column: str) -> dict:
    return table.attrs.get("info", {}).get(
        (init, group, column), {"mark": "", "marks": [], "interval": "", "pub_marks": []}
    )


def table_to_long(table: pd.DataFrame, digits: int = DIGITS) -> pd.DataFrame:
    """One row per (init, group, column): the numbers as shown (rounded to ``digits``), the
    interval method, the significance mark and footnotes, then the raw values (``*_raw``)."""
    footnotes = {mark: text for text, mark in table.attrs.get("footnotes", {}).items()}
    records = []
    for init in table.index:
        for group, column in _cell_columns(table):
            cell = {f: table.loc[init, (group, column, f)] for f in FIELDS}
            if math.isnan(cell["mean"]):
                continue
            i = _info(table, init, group, column)
            records.append(
                {
                    "init": init,
                    "group": group,
                    "column": column,
                    "mean": round(cell["mean"], digits),
                    "ci_low": round(cell["lo"], digits),
                    "ci_high": round(cell["hi"], digits),
                    "n": int(cell["n"]),
                    "delta": round(cell["delta"], digits),
                    "published": cell["published"],
                    "interval": i["interval"],
                    "mark": i["mark"],
                    "notes": " | ".join(footnotes[m] for m in i["marks"] + i["pub_marks"]),
                    "mean_raw": cell["mean"],
                    "std_raw": cell["std"],
                    "ci_low_raw": cell["lo"],
                    "ci_high_raw": cell["hi"],
                    "delta_raw": cell["delta"],
                }
            )
    columns = [
        "init",
        "group",
        "column",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "delta",
        "published",
        "interval",
        "mark",
        "notes",
        "mean_raw",
        "std_raw",
        "ci_low_raw",
        "ci_high_raw",
        "delta_raw",
    ]
    long = pd.DataFrame.from_records(records, columns=columns)
    long["n"] = long["n"].astype(int)
    for c in ("mean", "ci_low", "ci_high", "delta"):  # -0.0 from rounding a tiny negative
        long[c] = long[c] + 0.0
    return long


def _cell_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    seen = []
    for group, column, _ in table.columns:
        if (group, column) not in seen:
            seen.append((group, column))
    return seen


def _has_published(table: pd.DataFrame, group: str, column: str) -> bool:
    return bool(table[(group, column, "published")].notna().any())


def _fmt(x: float, digits: int, style: str = "md") -> str:
    """A number as shown: a real minus sign (U+2212 in Markdown, math minus in LaTeX)."""
    text = f"{x:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    if text.startswith("-"):
        return ("$-$" if style == "tex" else "\u2212") + text[1:]
    return text


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain text: 'vit_base_patch16' -> 'vit\\_base\\_patch16'."""
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "<": r"\textless{}",
        ">": r"\textgreater{}",
        "\u2212": "$-$",
        "\u2248": r"$\approx$",
        "\u2020": r"\dag{}",
        "\u2021": r"\ddag{}",
        "\u0394": r"$\Delta$",
        "\u00b1": r"$\pm$",
    }
    return "".join(table.get(ch, ch) for ch in str(text))


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
        text += r" $\approx$" if style == "tex" else " \u2248"
    return text + _sup(i["marks"], style)


def _published_text(table, init, group, column, digits, style="md") -> str:
    value = table.loc[init, (group, column, "published")]
    if math.isnan(value):
        return ""
    return _fmt(value, digits, style) + _sup(_info(table, init, group, column)["pub_marks"], style)


LEGEND = (
    "Cells: mean [95 % interval]; one run: percentile bootstrap over evaluation images "
    f"({BOOTSTRAP_SAMPLES} resamples); n=N: t-interval over N seeds. Bold: better than "
    "the runner-up (paired bootstrap over the same images, or a t-test over seeds, 5 % "
    "level); \u2248: top two not distinguishable."
)


def _footnote_lines(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(mark, text) of every footnote, then ('', text) of every table note."""
    out = [(mark, text) for text, mark in table.attrs.get("footnotes", {}).items()]
    return out + [("", text) for text in table.attrs.get("notes", [])]


def to_markdown(table: pd.DataFrame, digits: int = DIGITS) -> str:
    cells = _cell_columns(table)
    header, align = ["init"], [":---"]
    for group, column in cells:
        label = f"{group} {column}"
        header.append(label)
        align.append("---:")
        if _has_published(table, group, column):
            header.append(f"{label} (paper)")
            align.append("---:")
    lines = [
        f"**{table.attrs.get('title', '')}**",
        "",
        LEGEND,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
    ]
    for init in table.index:
        row = [init.replace("|", "\\|")]
        for group, column in cells:
            row.append(_cell_text(table, init, group, column, digits, "md"))
            if _has_published(table, group, column):
                row.append(_published_text(table, init, group, column, digits))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    notes = _footnote_lines(table)
    if notes:
        lines.append("")
        lines += [(f"<sup>{mark}</sup> " if mark else "") + text.replace("|", "\\|") + "  " for mark, text in notes]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, digits: int = DIGITS) -> str:
    """A complete ``table`` float (booktabs): caption, label, tabular and footnotes."""
    cells = _cell_columns(table)
    spans = {}  # group -> number of tabular columns
    for group, column in cells:
        spans[group] = spans.get(group, 0) + 1 + _has_published(table, group, column)
    ncols = 1 + sum(spans.values())
    title = table.attrs.get("title", "")
    label = re.sub(r"[^A-Za-z0-9]+", "-", title.split(",")[0]).strip("-").lower() or "table"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(title)}. {latex_escape(LEGEND)} "
        r"'paper': He et al.\ 2021.}",
        rf"\label{{tab:{label}}}",
        r"\begin{tabular}{l" + "c" * (ncols - 1) + "}",
        r"\toprule",
    ]
    row, rules, start = [""], [], 2
    for group, span in spans.items():
        row.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines.append(" & ".join(row) + r" \\")
    lines.append(" ".join(rules))
    row = ["init"]
    for group, column in cells:
        row.append(latex_escape(column))
        if _has_published(table, group, column):
            row.append("paper")
    lines.append(" & ".join(row) + r" \\")
    lines.append(r"\midrule")
    for init in table.index:
        row = [latex_escape(init)]
        for group, column in cells:
            row.append(_cell_text(table, init, group, column, digits, "tex"))
            if _has_published(table, group, column):
                row.append(_published_text(table, init, group, column, digits, "tex"))
        lines.append(" & ".join(row) + r" \\")
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
    out_dir = Path(out_dir)
    written = []
    for name, table in tables.items():
        for fmt in formats:
            if fmt == "csv":
                text = table_to_long(table).to_csv(index=False, lineterminator="\n")
            elif fmt == "tex":
                text = to_latex(table)
            else:
                text = to_markdown(table)
            path = out_dir / f"{name}.{fmt}"
            atomic_write_text(path, text)
            written.append(path)
    return written
