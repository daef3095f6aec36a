"""The suite loop: plan, check, run every cell not done yet (here, in parallel processes, or as
Slurm jobs), then the tables."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from backbones.provenance import paper_difference
from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.curves import plot_convergence
from bench.runner.dryrun import format_plan
from bench.runner.jobs import RunSummary, run_here
from bench.runner.plan import plan, row_ids
from bench.runner.slurm import run_with_executor
from bench.runner.state import changed_cells, check_inputs, is_done, out_dir_lock, refuse, set_aside
from bench.suite import Suite
from bench.tables import run_table
from bench.tables.answer import ANSWER_FILE
from bench.tables.reference import load_reference
from tasks.registry import TASKS

# How many phrases of one kind the note names (the tables' footnotes list them all).
NOTE_PHRASES = 3
# The deviation phrases a searched key produces (a task's "<name> <value> != paper <value>"): the
# paper searched these per entry too, so a value the search chose is its protocol, not a departure.
SEARCHED_PHRASES = {
    "lr": ("base lr ",),
    "blr": ("base lr ",),
    "epochs": ("epochs ", "iterations "),
    "iters": ("iterations ",),
}


def paper_marks(row: dict, paper_tasks: frozenset[str]) -> list[tuple[str, str]]:
    """Why a results row is not comparable to the paper's numbers, as (kind, phrase) pairs; [] when
    it is. Derived from the row alone, never from what the suite declares:

    * ``checkpoint``: its provenance is not what the paper used for its init
      (``backbones.provenance.paper_difference``: self-pretrained, unknown, another release);
    * ``data``: a generated set (the task's ``generated`` phrase, which the runner adds to the row's
      deviations) or a task the paper has no numbers for (``paper_tasks``: the reference CSV's);
    * ``protocol``: every other deviation the row records (schedule, batch, input size, recipe,
      selection split, an engine's own difference), except those of a key its search chose
      (``extra['search']['grid']``: the paper searched per entry as well)."""
    provenance = row.get("provenance")
    marks = []
    why = paper_difference(provenance if isinstance(provenance, dict) else None, row["init"])
    if why:
        marks.append(("checkpoint", why))
    spec = TASKS.get(row["task"])
    generated = spec.generated if spec is not None else None
    deviations = list(row.get("deviations") or [])
    if generated in deviations:
        marks.append(("data", generated))
    elif row["task"] not in paper_tasks:
        marks.append(("data", f"{row['task']}: not a dataset of the paper"))
    search = (row.get("extra") or {}).get("search")
    grid = search.get("grid") if isinstance(search, dict) and isinstance(search.get("grid"), dict) else {}
    searched = tuple(p for key in grid for p in SEARCHED_PHRASES.get(key, (f"{key} ",)))
    marks += [("protocol", d) for d in deviations if d != generated and not d.startswith(searched)]
    return marks


def comparability_note(rows: list[dict], paper_tasks: frozenset[str]) -> str:
    """The note printed after a suite's tables: how many of its finished rows (the last ok row of
    each run, search candidates left out) are comparable to the paper, and what marks the others."""
    latest = {}
    for row in rows:
        if row.get("status") == "ok" and (row.get("extra") or {}).get("search_role") != "candidate":
            latest[row["run_id"]] = row
    marks = [paper_marks(row, paper_tasks) for row in latest.values()]
    total, comparable = len(marks), sum(1 for m in marks if not m)
    text = (
        f"Compared with the paper (derived per row from its checkpoint's provenance, its data and its "
        f"recorded deviations): {comparable} of {total} rows comparable to the paper"
    )
    if comparable == total:
        return text + "."
    parts = []
    for kind in ("checkpoint", "data", "protocol"):
        rows_with = sum(1 for m in marks if any(k == kind for k, _ in m))
        phrases = Counter(p for m in marks for p in dict.fromkeys(p for k, p in m if k == kind))
        if rows_with:
            named = [p for p, _ in phrases.most_common(NOTE_PHRASES)]
            more = f"; {len(phrases) - len(named)} more" if len(phrases) > len(named) else ""
            parts.append(f"{kind} in {rows_with} ({'; '.join(named)}{more})")
    return (
        f"{text}, {total - comparable} marked: {', '.join(parts)}. "
        "A table marks such a cell beside the paper's number; compare them only as a sanity check."
    )


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike,
    *,
    dry_run: bool = False,
    only=None,
    skip=None,
    tables: bool = True,
    executor=None,
    jobs: int = 1,
    rerun_changed: bool = False,
) -> RunSummary:
    """Run the cells of ``suite`` that are not done yet into ``out_dir``, then write the tables.

    ``dry_run`` prints the plan (with each cell's status) and runs nothing. ``executor``: a
    submitit executor (``--slurm``): each cell becomes a job, pretraining jobs first; without one
    the cells run here, up to ``jobs`` at once (``bench.runner.jobs``). ``rerun_changed``: a cell
    whose folder records other settings (suite or config files edited since) is set aside and run
    again; its new row supersedes the old one in the tables."""
    out_dir = Path(out_dir)
    cells = plan(suite, only=only, skip=skip)
    done_ids = ResultsStore(out_dir).done_ids()
    changed = changed_cells(cells, out_dir) if rerun_changed else {}
    done_ids -= {i for c in cells if c.name in changed for i in row_ids(c)}
    problems = check_inputs(suite, cells, out_dir, done_ids, rerun=frozenset(changed))
    if dry_run:  # the plan, then every problem at once
        print(format_plan(suite, cells, out_dir, done_ids))
        if changed:
            print(f"{len(changed)} cells with other settings would be set aside and run again: {', '.join(changed)}")
        refuse(suite, problems)
        return RunSummary(cells, [], [], {}, [])
    refuse(suite, problems)

    summary = RunSummary(cells, [], [], {}, [])
    with out_dir_lock(out_dir):
        print(f"suite {suite.name} ({suite.path}): {len(cells)} cells -> {out_dir}", flush=True)
        for cell in cells:
            if cell.name in changed:
                aside = set_aside(out_dir / cell.work_dir)
                print(f"{cell.name}: other settings ({changed[cell.name]}); set aside in {aside}, running it again")
        todo = []
        for number, cell in enumerate(cells, start=1):
            if is_done(cell, out_dir, done_ids):
                summary.skipped.append(cell.name)
                print(f"[{number}/{len(cells)}] {cell.name}: done", flush=True)
            else:
                todo.append((number, cell))
        if executor is None:
            run_here(suite, todo, len(cells), out_dir, done_ids, summary, jobs)
        else:
            run_with_executor(suite, todo, len(cells), out_dir, executor, summary)
        if tables:
            summary.tables = write_suite_tables(suite, out_dir)
    print(
        f"suite {suite.name}: {len(summary.ran)} cells ran, {len(summary.skipped)} were done, "
        f"{len(summary.failed)} failed" + (f" ({', '.join(summary.failed)})" if summary.failed else ""),
        flush=True,
    )
    return summary


def write_suite_tables(suite: Suite, out_dir: Path) -> list[Path]:
    """Tables, plots and the answer (``answer.md``: sentences from the tables' own tests) of this
    suite's rows into ``out_dir``; prints the Markdown tables, then the answer last."""
    try:
        written = run_table(ResultsStore(out_dir).path, out_dir, suite=suite.name)
    except BenchError as e:  # e.g. no finished run yet: nothing to tabulate
        print(f"no tables: {e}", flush=True)
        return []
    rows = [r for r in ResultsStore(out_dir).rows() if r.get("suite") == suite.name]
    paper_tasks = frozenset(load_reference()["task"])
    print("\n" + comparability_note(rows, paper_tasks) + "\n")
    answer = [p for p in written if p.name == ANSWER_FILE]
    for path in written:
        if path.suffix == ".md" and path not in answer:
            print(path.read_text(encoding="utf-8"))
    curves = plot_convergence(out_dir)  # tasks run with eval_every: eval top-1 against epoch
    if curves is not None:
        written.append(curves)
    print(f"tables and plots in {out_dir}: {', '.join(p.name for p in written)}", flush=True)
    for path in answer:
        print("\n" + path.read_text(encoding="utf-8"), flush=True)
    return written
