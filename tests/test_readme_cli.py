"""The README's table of the one command-line convention matches every command's real options."""

import re
from pathlib import Path

import pytest

from bench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _table() -> tuple[list[str], list[tuple[list[str], list[str]]]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## One command-line convention", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    commands = [c.strip() for c in lines[0].strip("|").split("|")][1:-1]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((re.findall(r"`(--[a-z0-9-]+)`", cells[0]), cells[1 : 1 + len(commands)]))
    return commands, rows


def _options(command: str) -> set[str]:
    parser = build_parser([command]).subcommand_parsers[command]
    return {s for action in parser._actions for s in action.option_strings}


def test_the_table_names_the_training_commands():
    commands, rows = _table()
    assert commands == ["pretrain", "cls", "seg", "det"]
    assert len(rows) >= 10 and all(options for options, _ in rows)


@pytest.mark.parametrize("command", ["pretrain", "cls", "seg", "det"])
def test_every_row_holds_for_the_command(command):
    commands, rows = _table()
    have = _options(command)
    column = commands.index(command)
    for options, marks in rows:
        assert marks[column] in ("✓", "—"), marks
        for option in options:
            assert (option in have) == (marks[column] == "✓"), f"bench {command} {option}: README says {marks[column]}"
