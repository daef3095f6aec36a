"""CLI: ``bench run`` (and ``python -m bench.runner``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.core.errors import BenchError, first_line
from bench.runner.jobs import default_jobs
from bench.runner.loop import run_suite
from bench.runner.slurm import SLURM_KEYS, slurm_executor
from bench.suite import load_suite

# --------------------------------------------------------------------------------------------------
# CLI: bench run
# --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench run``."""
    parser.add_argument("suite", help="suite file, or a bundled suite name (demo, ci, paper)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory: runs.jsonl, work/, data/, tables (default results/<suite name>)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the cells and their status, run nothing")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PAT",
        help="run only cells matching this glob, e.g. 'mae/*' or '*/coco/*' (repeatable or comma-separated)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=None,
        metavar="PAT",
        help="leave out cells matching this glob (repeatable or comma-separated)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="N", help="transfer seeds instead of the suite's"
    )
    parser.add_argument("--no-tables", action="store_true", help="do not write tables at the end")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="run again the cells whose folder records other settings (the suite or one of its config "
        "files edited since): their files move into previous-<time>/ in the folder, and the new row "
        "supersedes the old one in the tables (default: a finished cell is kept with a note, an "
        "unfinished one is refused)",
    )
    parser.add_argument(
        "--trust-config",
        action="store_true",
        help="read .py config files from outside the package (they run as Python "
        "when read); the same as 'trust_config: true' in every task",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the cells here, up to --jobs at once (the default)")
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="run up to N independent cells at once here, one process and one torch thread each "
        "(default: the machine's cores, or 1 when a GPU is visible; at most the cores)",
    )
    where.add_argument(
        "--slurm",
        default=None,
        metavar="SPEC",
        help="submit each cell as a Slurm job via submitit, e.g. "
        "'partition=gpu,nodes=1,gpus-per-node=8,time=4320' (keys: "
        + ", ".join(SLURM_KEYS)
        + "); preempted or timed-out jobs are "
        "requeued and resume; this command waits for them",
    )
    return parser


def run_main(args: argparse.Namespace) -> int:
    """``bench run``: 0 when every cell is done, 1 when some failed (their rows say why)."""
    suite = load_suite(args.suite)
    if args.seeds is not None:
        suite = suite.with_seeds(args.seeds)
    if getattr(args, "trust_config", False):
        suite = suite.with_trust_config()
    out = Path(args.out) if args.out else Path("results") / suite.name
    executor = slurm_executor(args.slurm, out) if args.slurm and not args.dry_run else None
    jobs = getattr(args, "jobs", None) or default_jobs()
    summary = run_suite(
        suite,
        out,
        dry_run=args.dry_run,
        only=args.only,
        skip=args.skip,
        tables=not args.no_tables,
        executor=executor,
        jobs=jobs,
        rerun_changed=args.rerun_changed,
    )
    return 1 if summary.failed else 0


def _jobs(text: str) -> int:
    """``--jobs``: an integer from 1 to the machine's cores (more processes than cores only slow
    every cell down)."""
    cores = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {cores}, got {text!r}") from None
    if not 1 <= value <= cores:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {cores} (the cores), got {value}")
    return value


def main(argv=None) -> int:
    """``python -m bench.runner SUITE ...`` (the same as ``bench run``)."""
    parser = add_run_arguments(argparse.ArgumentParser(prog="bench run"))
    args = parser.parse_args(argv)
    try:
        return run_main(args)
    except BenchError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
