"""Paper-style tables and plots from the results store (``bench table``).

``build_tables`` turns finished runs into the layouts of He et al. 2021 (MAE), Section 5: Tables 3
(ImageNet), 4 (COCO), 5 (ADE20K), 6 (classification transfer), linear probing (Table 12) and partial
fine-tuning (Fig. 9). Which table a row goes into, its metrics and its column come from its task's
declaration (``tasks.registry``: ``TaskSpec.tables[protocol]``, ``metrics``, ``img_size``; the list
is in docs/adding_a_task.md). docs/tables.md describes the output for readers.

Each table is a DataFrame: one row per initialisation (random, supervised, mocov3, beit, mae, then
others alphabetically) and MultiIndex columns ``(group, column, field)``. ``group`` is the metric
(or the dataset), ``column`` the backbone (ViT-B, ViT-L, ViT-H, ViT-H448, ...; ``k=<k>`` in the
partial table) and ``field`` one of ``mean`` and ``std`` (ddof=1, NaN when n=1) over seeds, ``n``,
``lo``/``hi`` (the 95 % interval), ``delta`` (mean minus the 'supervised' mean of the same cell
column, NaN without a supervised row) and ``published`` (the paper's number for that cell, from
results/reference/mae_paper.csv). ``table.attrs`` holds the text around the numbers: per cell the
interval method, the significance mark ('best' or 'tie') and footnote marks; per table the notes.

**Statistics.** One run: a percentile bootstrap over evaluation images of the per-example arrays
the task wrote (``extra['per_example']``, an ``.npz`` relative to the store's folder or absolute):
top1/top5 from ``correct``/``correct5``, mIoU from per-image ``intersect``/``union``. Several
seeds: a t-interval over the seed values. 'Best' (bold) only when the top init beats the runner-up:
a paired bootstrap over the same evaluation images (the same resampled ids for both) for single
runs, a t-test over seeds (paired when the seeds match, Welch otherwise) for several; otherwise the
two are marked as a tie. The bootstrap draws a fixed number of resamples from a fixed seed, so the
tables are reproducible.

A row's input size is ``extra['img_size']`` (the task's own ``img_size`` when absent). At the
task's own size (COCO 1024, ADE20K 512, classification 224) it is the paper's plain column
(``ViT-B``) and gets the paper's number; another size is a column of its own (``ViT-H448``,
``ViT-demo/8@64``). Only rows with status 'ok' count, a run_id that was recorded twice counts
once (the last row), and rows of a hyperparameter search's candidates
(``extra['search_role'] == 'candidate'``) are left out. Runs of one init with several
``extra['mask_ratio']`` values are shown as separate rows (``mae mask=0.75``).
"""

from bench.tables.aggregate import BASELINE_INIT, FIELDS, build_tables, finished_runs
from bench.tables.cli import add_table_arguments, check_rows, run_table, table_main
from bench.tables.names import DIGITS, INIT_ORDER, backbone_label
from bench.tables.plots import plot_tables
from bench.tables.reference import DEFAULT_PREV_BEST, DEFAULT_REFERENCE, REFERENCE_COLUMNS, load_reference
from bench.tables.render import FORMATS, LEGEND, latex_escape, table_to_long, to_latex, to_markdown, write_tables
from bench.tables.stats import (
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    PER_EXAMPLE_METRICS,
    PerExampleError,
    bootstrap_indices,
    bootstrap_interval,
    full_metric,
    load_per_example,
    metric_from_counts,
    paired_bootstrap,
    seed_test,
    t_interval,
)

__all__ = [
    "BASELINE_INIT",
    "BOOTSTRAP_SAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "DEFAULT_PREV_BEST",
    "DEFAULT_REFERENCE",
    "DIGITS",
    "FIELDS",
    "FORMATS",
    "INIT_ORDER",
    "LEGEND",
    "PER_EXAMPLE_METRICS",
    "REFERENCE_COLUMNS",
    "PerExampleError",
    "add_table_arguments",
    "backbone_label",
    "bootstrap_indices",
    "bootstrap_interval",
    "build_tables",
    "check_rows",
    "finished_runs",
    "full_metric",
    "latex_escape",
    "load_per_example",
    "load_reference",
    "metric_from_counts",
    "paired_bootstrap",
    "plot_tables",
    "run_table",
    "seed_test",
    "t_interval",
    "table_main",
    "table_to_long",
    "to_latex",
    "to_markdown",
    "write_tables",
]
