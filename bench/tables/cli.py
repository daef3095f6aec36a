"""`bench table`: read the store, check its rows, write the tables and plots."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.tables.aggregate import build_tables
from bench.tables.names import _img_size
from bench.tables.plots import plot_tables
from bench.tables.reference import DEFAULT_PREV_BEST, DEFAULT_REFERENCE, load_reference
from bench.tables.render import FORMATS, write_tables


def check_rows(store: ResultsStore) -> None:
    """One-line BenchError naming the store and line for a row whose extras the tables read
    cannot be read (``img_size`` that is no whole number, a non-numeric ``mask_ratio``, a
    ``per_example`` that is not a path)."""
    for number, r in store.numbered_rows():
        where = f"results store {store.path} line {number}"
        extra = r["extra"]
        _img_size(extra.get("img_size"), where)
        ratio = extra.get("mask_ratio")
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1
        ):
            raise BenchError(
                f"{where}: row key 'extra' entry 'mask_ratio' must be a number in [0, 1], got {ratio!r:.40}"
            )
        for key in ("per_example", "search_role"):
            if extra.get(key) is not None and not isinstance(extra[key], str):
                raise BenchError(f"{where}: row key 'extra' entry {key!r} must be a string, got {extra[key]!r:.40}")


def run_table(
    results_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str | None = None,
    task: str | None = None,
    reference_csv: str | os.PathLike | None = DEFAULT_REFERENCE,
    formats: tuple[str, ...] = FORMATS,
    plots: bool = True,
) -> list[Path]:
    """Tables (and plots) for the runs in ``results_path`` matching ``suite``/``task``; returns
    the written paths. ``reference_csv=None`` leaves the published column empty. Relative
    ``extra['per_example']`` paths are read from the store's folder."""
    store = ResultsStore(results_path)
    if not os.path.lexists(store.path):
        raise BenchError(f"{store.path}: results file not found (option --results)")
    check_rows(store)  # also refuses a folder or FIFO in the store's place, in one line
    filters = {key: value for key, value in (("suite", suite), ("task", task)) if value}
    described = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"
    df = store.dataframe(**filters)
    if df.empty:
        raise BenchError(f"{store.path}: no runs match {described}")
    if not (df["status"] == "ok").any():
        raise BenchError(f"{store.path}: {len(df)} runs match {described} but none finished with status 'ok'")
    if (
        reference_csv is not None and Path(reference_csv) == DEFAULT_REFERENCE and not DEFAULT_REFERENCE.is_file()
    ):  # e.g. installed without the results/ folder
        warnings.warn(f"{DEFAULT_REFERENCE} not found: tables show no published numbers", stacklevel=2)
        reference_csv = None
    reference = load_reference(reference_csv) if reference_csv is not None else None
    prev_best = None
    if reference_csv is not None and DEFAULT_PREV_BEST.is_file():
        prev_best = load_reference(DEFAULT_PREV_BEST)
    base_dir = store.path.parent
    tables = build_tables(df, reference, base_dir=base_dir, prev_best=prev_best)
    if not tables:
        raise BenchError(
            f"{store.path}: runs matching {described} fit none of the tables "
            f"(tasks {sorted(df['task'].unique())}, protocols "
            f"{sorted(df['protocol'].unique())})"
        )
    written = write_tables(tables, out_dir, formats)
    if plots:
        written += plot_tables(df, out_dir, base_dir=base_dir)
    return written


def add_table_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench table``."""
    parser.add_argument(
        "--results", required=True, metavar="PATH", help="results store: a runs.jsonl file or the directory holding it"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--suite", default=None, help="only runs of this suite")
    parser.add_argument("--task", default=None, help="only runs of this task (e.g. coco)")
    parser.add_argument(
        "--reference",
        default=str(DEFAULT_REFERENCE),
        metavar="CSV",
        help="published numbers to show side by side ('none' to omit)",
    )
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of csv,tex,md")
    parser.add_argument("--no-plots", action="store_true", help="tables only, no PNG plots")
    return parser


def table_main(args: argparse.Namespace) -> int:
    """Run ``bench table`` with parsed arguments; prints the written paths."""
    if not str(args.out).strip():
        raise BenchError("--out must name a folder, got ''")
    reference = None if str(args.reference).lower() == "none" else args.reference
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    paths = run_table(
        args.results,
        args.out,
        suite=args.suite,
        task=args.task,
        reference_csv=reference,
        formats=formats,
        plots=not args.no_plots,
    )
    for path in paths:
        print(path)
    return 0
