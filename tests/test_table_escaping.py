"""Tables escape hostile names once, for their format: CSV formulas are quoted as text, Markdown
pipes/newlines/backslashes never split a row, LaTeX specials (and '!=') typeset."""

import csv
import io
import re

import pytest

from bench.core.results import ResultsStore, default_run_id
from bench.tables import build_tables, csv_safe, latex_escape, md_escape, run_table, to_csv, to_latex, to_markdown

HOSTILE = [
    '=HYPERLINK("http://evil.example","click")',
    "+cmd",
    "-2+3",
    "@SUM(A1)",
    "a|b",
    "two\nlines",
    "back\\slash",
    "_%&#$",
]


def row(label, seed, top1, deviations=()):
    extra = {}
    return {
        "schema": 3,
        "run_id": default_run_id("s", "inat2017", "finetune", None, "mae", "vit_demo_patch8", seed, extra, label=label),
        "suite": "s",
        "task": "inat2017",
        "protocol": "finetune",
        "k": None,
        "init": "mae",
        "label": label,
        "backbone": "vit_demo_patch8",
        "checkpoint_sha256": None,
        "provenance": None,
        "seed": seed,
        "metrics": {"top1": top1},
        "status": "ok",
        "error": None,
        "iterations": 1,
        "wall_time_s": 1.0,
        "config_hash": "c",
        "code_version": "test",
        "device": "cpu",
        "date": "2024-01-01T00:00:00+00:00",
        "extra": extra,
        "deviations": list(deviations),
    }


@pytest.fixture
def table(tmp_path):
    store = ResultsStore(tmp_path)
    for i, label in enumerate(HOSTILE):
        store.append(row(label, 0, 50.0 + i, deviations=["lr 0.1 != paper 0.2", f"{label} deviation"]))
    return build_tables(store.dataframe(), None)["table6_transfer_cls"]


def _md_cells(line: str) -> list[str]:
    """Split a Markdown table row on pipes that are not backslash-escaped (a backslash escapes
    the next character, so '\\\\|' is an escaped backslash followed by a real pipe)."""
    cells, current, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            current += line[i : i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(current)
            current = ""
        else:
            current += line[i]
        i += 1
    return [c.strip() for c in cells[1:]]  # text before the first pipe is empty


def test_csv_cells_that_start_a_formula_are_text(table, tmp_path):
    text = to_csv(table)
    rows = list(csv.DictReader(io.StringIO(text)))
    inits = sorted(r["init"] for r in rows)
    assert inits == sorted(
        [
            '\'=HYPERLINK("http://evil.example","click")',
            "'+cmd",
            "'-2+3",
            "'@SUM(A1)",
            "a|b",
            "two\nlines",  # quoted by the CSV writer, read back whole
            "back\\slash",
            "_%&#$",
        ]
    )
    # no cell of any text column starts a formula; numbers (a negative delta) stay numbers
    for r in rows:
        for key in ("init", "group", "column", "interval", "mark", "notes"):
            assert not r[key].startswith(("=", "+", "-", "@", "\t", "\r")), (key, r[key])
    assert csv_safe(-2.5) == -2.5 and csv_safe("\tx") == "'\tx" and csv_safe("\rx") == "'\rx"
    assert csv_safe("plain") == "plain"
    # written through run_table too
    store = ResultsStore(tmp_path / "s2")
    store.append(row('=HYPERLINK("x")', 0, 50.0))
    run_table(store.path, tmp_path / "out", formats=("csv",), plots=False)
    written = list(csv.DictReader(open(tmp_path / "out" / "table6_transfer_cls.csv", newline="")))
    assert written[0]["init"] == '\'=HYPERLINK("x")'


def test_markdown_rows_keep_their_cells(table):
    md = to_markdown(table)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = _md_cells(lines[0])
    body = [_md_cells(ln) for ln in lines[2:]]
    assert len(body) == len(HOSTILE)
    assert {len(cells) for cells in body} == {len(header)}
    names = sorted(cells[0] for cells in body)
    assert names == sorted(
        [
            '=HYPERLINK("http://evil.example","click")',
            "+cmd",
            "-2+3",
            "@SUM(A1)",
            "a\\|b",  # escaped once: one backslash before the pipe
            "two<br>lines",
            "back\\\\slash",  # the backslash itself escaped once
            "\\_%&#$",
        ]
    )
    assert "a\\\\|b" not in md  # the old double escape that split the row again
    # footnotes: one line each, the newline of a name inside one becomes <br>
    notes = [ln for ln in md.splitlines() if ln.startswith("<sup>")]
    assert any("two<br>lines deviation" in ln for ln in notes)
    assert not any(ln.startswith("lines deviation") for ln in md.splitlines())


def test_md_escape_is_exact():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("a\\|b") == "a\\\\\\|b"  # backslash, then pipe: both escaped, once
    assert md_escape("x\r\ny\nz") == "x<br>y<br>z"
    assert md_escape("snake_case **bold** `code` [link](u) <img src=x>") == (
        "snake_case \\*\\*bold\\*\\* \\`code\\` \\[link\\](u) &lt;img src=x>"
    )
    assert md_escape("# heading") == "\\# heading" and md_escape("10 < 90") == "10 < 90"


def test_latex_escapes_every_special_once(table):
    tex = to_latex(table)
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == len(HOSTILE)  # the newline in a name did not start a new line
    names = {ln.split(" & ")[0] for ln in rows}
    assert {r"a\textbar{}b", "two lines", r"back\textbackslash{}slash", r"\_\%\&\#\$"} <= names
    # footnotes typeset '!=' instead of printing it
    assert r"lr 0.1 $\neq$ paper 0.2" in tex and "!=" not in tex
    # no unescaped special in any row (column separators aside)
    for line in rows:
        assert re.search(r"(?<!\\)[_%#&]", line.replace(" & ", " ")) is None, line


def test_latex_escape_is_exact():
    assert latex_escape("a_b%c&d#e$f{g}h~i^j") == r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j"
    assert latex_escape("x != y, x <= y, x >= y, 1 < 2") == r"x $\neq$ y, x $\leq$ y, x $\geq$ y, 1 $<$ 2"
    assert latex_escape("a\\b") == r"a\textbackslash{}b"
    assert latex_escape("a|b\nc\x07") == r"a\textbar{}b c"


def test_answer_md_escapes_names_once(tmp_path):
    store = ResultsStore(tmp_path / "s")
    store.append(row("random", 0, 40.0))
    store.append(row("x|y *z*", 0, 60.0))
    run_table(store.path, tmp_path / "out", formats=("md",), plots=False)
    text = (tmp_path / "out" / "answer.md").read_text()
    assert "x\\|y \\*z\\* vs random: +20.0 points, not tested (no per-example results for a paired bootstrap)" in text
