"""`bench table`: read the store, check its rows, write the tables, the answer and the plots."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.tables.aggregate import build_tables
from bench.tables.answer import ANSWER_FILE, answer_sentences, write_answer
from bench.tables.escape import md_escape
from bench.tables.names import _img_size, _task_sort_key
from bench.tables.plots import plot_tables
from bench.tables.reference import DEFAULT_PREV_BEST, DEFAULT_REFERENCE, load_reference
from bench.tables.render import FORMATS, write_tables
from bench.tables.targets import target_tables


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


def _read(store: ResultsStore, suite: str | None, task: str | None) -> pd.DataFrame:
    """The store's rows matching the filters; BenchError when none can make a table."""
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
    df.attrs["described"] = described
    return df


def _reference(reference_csv):
    if (
        reference_csv is not None and Path(reference_csv) == DEFAULT_REFERENCE and not DEFAULT_REFERENCE.is_file()
    ):  # e.g. installed without the results/ folder
        warnings.warn(f"{DEFAULT_REFERENCE} not found: tables show no published numbers", stacklevel=3)
        reference_csv = None
    reference = load_reference(reference_csv) if reference_csv is not None else None
    prev_best = None
    if reference_csv is not None and DEFAULT_PREV_BEST.is_file():
        prev_best = load_reference(DEFAULT_PREV_BEST)
    return reference, prev_best


def _remove_new_folders(missing: list[Path]) -> None:
    for folder in missing:  # deepest first; only folders this run created, and only when empty
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue  # not created after all
        except OSError:
            break


def _write_all(out_dir: Path, write) -> list[Path]:
    """``write(folder)`` into a fresh staging folder beside ``out_dir``, then move each file into
    place. A failure (a full disk, an unwritable folder) leaves the previous files as they were
    and no new folder, and raises one line."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"{out_dir} is an existing file, not a folder (option --out)")
    missing = [p for p in (out_dir, *out_dir.parents) if not os.path.lexists(p)]
    staging = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".table-tmp", dir=out_dir.parent))
        staged = write(staging)
        out_dir.mkdir(exist_ok=True)
        for path in staged:
            os.replace(path, out_dir / path.name)
        staging.rmdir()
        return [out_dir / path.name for path in staged]
    except OSError as e:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_new_folders(missing)
        raise BenchError(f"{out_dir}: cannot write the tables ({e.strerror or e}); nothing was changed there") from None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_new_folders(missing)
        raise


def run_table(
    results_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str | None = None,
    task: str | None = None,
    reference_csv: str | os.PathLike | None = DEFAULT_REFERENCE,
    formats: tuple[str, ...] = FORMATS,
    plots: bool = True,
) -> list[Path]:
    """Tables, ``answer.md`` (``answer_sentences`` for every task) and plots for the runs in
    ``results_path`` matching ``suite``/``task``; returns the written paths. ``reference_csv=None``
    leaves the published column empty. Relative ``extra['per_example']`` paths are read from the
    store's folder. Everything is computed before the first file is written."""
    store = ResultsStore(results_path)
    df = _read(store, suite, task)
    reference, prev_best = _reference(reference_csv)
    base_dir = store.path.parent
    tables = build_tables(df, reference, base_dir=base_dir, prev_best=prev_best)
    tables.update(target_tables(df, reference, base_dir=base_dir))  # Table 7: only when a row has another target
    if not tables:
        raise BenchError(
            f"{store.path}: runs matching {df.attrs['described']} fit none of the tables "
            f"(tasks {sorted(df['task'].unique())}, protocols "
            f"{sorted(df['protocol'].unique())})"
        )
    tasks = sorted(df["task"].unique(), key=_task_sort_key)
    sentences = [s for t in tasks for s in answer_sentences(df, t, base_dir=base_dir, escape=md_escape)]
    for fmt in formats:
        if fmt not in FORMATS:
            raise BenchError(f"table format {fmt!r} (option --formats) is not one of {FORMATS}")

    def write(folder: Path) -> list[Path]:
        written = write_tables(tables, folder, formats) + [write_answer(sentences, folder)]
        return written + (plot_tables(df, folder, base_dir=base_dir) if plots else [])

    return _write_all(Path(out_dir), write)


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
    """Run ``bench table`` with parsed arguments; prints the written paths, then the answer."""
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
    answer = next((p for p in paths if p.name == ANSWER_FILE), None)
    if answer is not None:
        print()
        print(answer.read_text(encoding="utf-8"), end="")
    return 0
