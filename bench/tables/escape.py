"""Escaping text for each output format, once: LaTeX specials, Markdown table syntax, spreadsheet
formulas in CSV cells."""

from __future__ import annotations

import re
from typing import Any

LATEX_SEQUENCES = {"!=": r"$\neq$", "<=": r"$\leq$", ">=": r"$\geq$"}
LATEX_CHARS = {
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
    "|": r"\textbar{}",
    "<": r"$<$",
    ">": r"$>$",
    "\n": " ",
    "\r": " ",
    "\t": " ",
    "\u2212": "$-$",
    "\u2248": r"$\approx$",
    "\u2260": r"$\neq$",
    "\u2264": r"$\leq$",
    "\u2265": r"$\geq$",
    "\u00d7": r"$\times$",
    "\u2020": r"\dag{}",
    "\u2021": r"\ddag{}",
    "\u0394": r"$\Delta$",
    "\u00b1": r"$\pm$",
}
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection).
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def latex_escape(text: Any) -> str:
    """Plain text as LaTeX: 'vit_base_patch16' -> 'vit\\_base\\_patch16', '!=' -> '$\\neq$';
    line breaks become spaces (a blank line would end the cell), other control characters go."""
    text, out, i = str(text), [], 0
    while i < len(text):
        if text[i : i + 2] in LATEX_SEQUENCES:
            out.append(LATEX_SEQUENCES[text[i : i + 2]])
            i += 2
            continue
        ch = text[i]
        out.append(LATEX_CHARS.get(ch, ch if ch.isprintable() else ""))
        i += 1
    return "".join(out)


def md_escape(text: Any) -> str:
    """Plain text as one Markdown table cell or footnote line: backslashes, pipes and the
    characters that open emphasis, code, links or HTML are backslash-escaped; line breaks
    become <br> (a newline would end the table row)."""
    text = str(text).replace("\\", "\\\\")
    for ch in "|*`[]":
        text = text.replace(ch, "\\" + ch)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)  # snake_case stays readable
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)  # '10 < 90' stays as it is
    text = re.sub(r"^([#>])", r"\\\1", text)
    text = "".join(ch if ch.isprintable() or ch in "\r\n" else " " for ch in text)
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, prefixed with a single quote
    (shown as text); numbers and other text unchanged."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value
