"""``bench run SUITE``: run every cell of a suite that is not done yet, then write the tables.

A suite (``bench/suites/*.yaml``, read by ``bench.suite.load_suite``) expands into *cells*
(``plan``):

* one **pretraining cell** ``<label>/pretrain`` per init that says ``pretrain: {...}``. It runs the
  method's pretrainer (``backbones.pretrainers.PRETRAINERS``) in ``<out>/work/<label>/pretrain`` and
  yields ``pretrain.pth``, shared by all seeds (the seeds vary the transfer runs, as the paper's
  error bars do);
* one **transfer cell** per init x task (x k for partial fine-tuning) x seed, named
  ``<label>/<task>/seed<s>`` (``<label>/<task>/k<k>/seed<s>``). It calls the task's declared ``run``
  (``tasks.registry``) with one ``TransferRun``, works in ``<out>/work/<cell name>`` and appends the
  task's row to ``<out>/runs.jsonl``. The cell id is that row's ``run_id``
  (``bench.core.results.default_run_id``, keyed by the init's label);
* one **floor cell** ``raw-pixels/<task>/seed<s>`` per classification task whose dataset has
  raw-pixel floors (logistic regression and k-NN on the pixels): cheap rows that tell a reader
  whether a learned representation beats the trivial one.

Running a suite again continues where it stopped: a cell with an 'ok' row (a pretraining cell with
its ``pretrain.pth``) is skipped; an interrupted cell resumes from its work dir; a cell that raises
is recorded as a 'failed' row and the others still run; a cell whose ``cell.json`` says it started
with other settings stops the run before anything starts.

Where cells run: here, in up to ``--jobs N`` processes at once (default: the machine's cores; one
torch thread each; a transfer cell waits for its pretraining, a search's final cell for its
candidates), or as Slurm jobs (``--slurm``). At the end the tables are written into ``<out>`` and the
answer sentences are printed and written to ``<out>/answer.md``.

Modules: ``plan`` (suite -> cells), ``state`` (cell.json, status, input checks), ``data``
(generated sets), ``cell`` (running one cell), ``jobs`` (local scheduling, parallel processes),
``slurm``, ``loop`` (``run_suite``, tables, answer), ``dryrun`` (``--dry-run``), ``cli``.
"""

from bench.runner.cell import ERROR_LOG, execute_cell, run_pretrain_cell, run_transfer_cell, select_point
from bench.runner.cli import add_run_arguments, main, run_main
from bench.runner.data import data_dir, dataset_root
from bench.runner.dryrun import format_plan
from bench.runner.jobs import RunSummary
from bench.runner.loop import run_suite, write_suite_tables
from bench.runner.plan import Cell, grid_points, plan, point_name
from bench.runner.slurm import SLURM_KEYS, CellJob, parse_slurm, slurm_executor
from bench.runner.state import CELL_FILE, cell_checkpoint, cell_settings, cell_status, check_inputs, is_done

__all__ = [
    "CELL_FILE",
    "ERROR_LOG",
    "SLURM_KEYS",
    "Cell",
    "CellJob",
    "RunSummary",
    "add_run_arguments",
    "cell_checkpoint",
    "cell_settings",
    "cell_status",
    "check_inputs",
    "data_dir",
    "dataset_root",
    "execute_cell",
    "format_plan",
    "grid_points",
    "is_done",
    "main",
    "parse_slurm",
    "plan",
    "point_name",
    "run_main",
    "run_pretrain_cell",
    "run_suite",
    "run_transfer_cell",
    "select_point",
    "slurm_executor",
    "write_suite_tables",
]
