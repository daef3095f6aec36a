"""The suite loop: plan, check, run every cell not done yet (here, in parallel processes, or as
Slurm jobs), then the tables."""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.curves import plot_convergence
from bench.runner.dryrun import format_plan
from bench.runner.jobs import RunSummary, run_here
from bench.runner.plan import plan
from bench.runner.slurm import run_with_executor
from bench.runner.state import check_inputs, is_done, out_dir_lock, refuse
from bench.suite import Suite
from bench.tables import run_table
from bench.tables.answer import ANSWER_FILE

SMOKE_NOTE = (
    "These are smoke-scale numbers: a tiny ViT pretrained for minutes on CPU and transferred "
    "to small sets (scikit-learn's digits, or generated data). They are NOT comparable to the "
    "paper's full-scale numbers (He et al. 2021); a table shows the paper's numbers only for "
    "its own datasets and models."
)
FULL_NOTE = (
    "Full-scale suite: compare with the 'paper' columns only if the datasets, schedules "
    "and checkpoints match the paper's (see the suite file)."
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
) -> RunSummary:
    """Run the cells of ``suite`` that are not done yet into ``out_dir``, then write the tables.

    ``dry_run`` prints the plan (with each cell's status) and runs nothing. ``executor``: a
    submitit executor (``--slurm``): each cell becomes a job, pretraining jobs first; without one
    the cells run here, up to ``jobs`` at once (``bench.runner.jobs``)."""
    out_dir = Path(out_dir)
    cells = plan(suite, only=only, skip=skip)
    done_ids = ResultsStore(out_dir).done_ids()
    problems = check_inputs(suite, cells, out_dir, done_ids)
    if dry_run:  # the plan, then every problem at once
        print(format_plan(suite, cells, out_dir, done_ids))
        refuse(suite, problems)
        return RunSummary(cells, [], [], {}, [])
    refuse(suite, problems)

    summary = RunSummary(cells, [], [], {}, [])
    with out_dir_lock(out_dir):
        print(f"suite {suite.name} ({suite.path}): {len(cells)} cells -> {out_dir}", flush=True)
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
    print("\n" + (SMOKE_NOTE if suite.scale == "smoke" else FULL_NOTE) + "\n")
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
