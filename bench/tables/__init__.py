"""Paper-style tables, plots and the answer sentence from the results store (``bench table``).

``build_tables`` turns finished runs into the layouts of He et al. 2021 (MAE), Section 5: Tables 3
(ImageNet), 4 (COCO), 5 (ADE20K), 6 (classification transfer), linear probing (Table 12) and partial
fine-tuning (Fig. 9). Which table a row goes into, its metrics and its column come from its task's
declaration (``tasks.registry``: ``TaskSpec.tables[protocol]``, ``metrics``, ``img_size``).
``target_tables`` adds Table 7 (MAE reconstruction targets) when some MAE row's checkpoint was
pretrained with a target other than normalised pixels. docs/tables.md describes the output for readers.

The package, one job per module:

* ``names``: labels and sort orders of rows and columns;
* ``reference``: the published numbers and the key that places each one;
* ``rows``: which runs are shown, under which label (one row per label and checkpoint; floors);
* ``stats``: intervals (bootstrap over images, seeds x images; t over seeds) and the tests;
* ``provenance``: whether a row's checkpoint is what the paper's number was measured from;
* ``aggregate``: cells -> wide tables with marks and footnotes;
* ``targets``: Table 7 (MAE reconstruction targets, one row per target, beside the paper's rows);
* ``escape`` / ``render``: CSV, LaTeX and Markdown, each escaped once for its format;
* ``plots``: PNG figures; ``answer``: the answer in sentences; ``cli``: ``bench table``.

Each table is a DataFrame: one row per label (random, supervised, mocov3, beit, mae, then others
alphabetically; the raw-pixel floors last) and MultiIndex columns ``(group, column, field)``,
``field`` in ``FIELDS``; ``table.attrs`` holds the text around the numbers.
"""

from bench.tables.aggregate import BASELINE_INIT, FIELDS, build_tables, stat_cells
from bench.tables.answer import answer_sentences, write_answer
from bench.tables.cli import add_table_arguments, check_rows, run_table, table_main
from bench.tables.escape import csv_safe, latex_escape, md_escape
from bench.tables.names import DIGITS, INIT_ORDER, backbone_label
from bench.tables.plots import plot_tables
from bench.tables.provenance import paper_mismatch
from bench.tables.reference import DEFAULT_PREV_BEST, DEFAULT_REFERENCE, REFERENCE_COLUMNS, load_reference
from bench.tables.render import FORMATS, legend, table_to_long, to_csv, to_latex, to_markdown, write_tables
from bench.tables.rows import FLOOR_INIT, finished_runs, floor_label
from bench.tables.stats import (
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    PER_EXAMPLE_METRICS,
    Difference,
    PerExampleError,
    bootstrap_indices,
    bootstrap_interval,
    difference,
    full_metric,
    load_per_example,
    metric_from_counts,
    paired_bootstrap,
    seed_difference,
    seed_test,
    t_interval,
)
from bench.tables.targets import target_tables

__all__ = [
    "BASELINE_INIT",
    "BOOTSTRAP_SAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "DEFAULT_PREV_BEST",
    "DEFAULT_REFERENCE",
    "DIGITS",
    "FIELDS",
    "FLOOR_INIT",
    "FORMATS",
    "INIT_ORDER",
    "PER_EXAMPLE_METRICS",
    "REFERENCE_COLUMNS",
    "Difference",
    "PerExampleError",
    "add_table_arguments",
    "answer_sentences",
    "backbone_label",
    "bootstrap_indices",
    "bootstrap_interval",
    "build_tables",
    "check_rows",
    "csv_safe",
    "difference",
    "finished_runs",
    "floor_label",
    "full_metric",
    "latex_escape",
    "legend",
    "load_per_example",
    "load_reference",
    "md_escape",
    "metric_from_counts",
    "paired_bootstrap",
    "paper_mismatch",
    "plot_tables",
    "run_table",
    "seed_difference",
    "seed_test",
    "stat_cells",
    "t_interval",
    "table_main",
    "target_tables",
    "table_to_long",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_answer",
    "write_tables",
]
