"""What a transfer task declares about itself, once: ``TaskSpec``.

Each family writes its tasks in ``tasks/<family>/task.py``; ``tasks.registry`` collects them. The
suite loader, the suite runner, the CLI and the tables read these declarations and nothing else,
so a task's name, protocols, data, input size, metrics, table and reference key live in one place.

Functions that need heavy libraries (mmdet, mmseg, torch) are named by ``"module:attribute"``
strings or wrapped in small functions that import when called: importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FAMILIES = ("detection", "segmentation", "classification")
# The reference CSV's img_size for the paper's own input size of a task (a column named plain
# "ViT-B"): 224 px for classification, but 1024 px for COCO (Table 4) and 512 px for ADE20K (Table 5).
PAPER_COLUMN_IMG_SIZE = 224


def resolve(path: str | Callable) -> Callable:
    """``"package.module:attribute"`` -> that object, imported now; a callable is returned as is."""
    if callable(path):
        return path
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Table:
    """A paper-style table (``bench table`` writes ``<name>.csv/.tex/.md``).

    ``layout`` says how the rows of the table's tasks are laid out (one row per initialisation):

    * ``metrics``: a column group per metric of the task (per metric and protocol when the rows
      hold several protocols), a column per backbone (Tables 3, 4, 5);
    * ``tasks``: a column group per task (its headline metric), a column per backbone (Table 6);
    * ``k``: a column group per task and backbone, a column per number of tuned blocks k (Fig. 9).
    """

    name: str
    title: str
    layout: str = "metrics"

    def __post_init__(self):
        if self.layout not in ("metrics", "tasks", "k"):
            raise ValueError(f"table {self.name}: unknown layout {self.layout!r}")


@dataclass(frozen=True)
class Command:
    """A ``bench <name>`` subcommand that runs one task of a family by hand."""

    name: str  # e.g. 'det'
    help: str
    add_arguments: str  # "module:function" adding the options to an argparse parser
    main: str  # "module:function" taking the parsed options, returning the exit code


@dataclass(frozen=True)
class TransferRun:
    """One transfer run, the facts object every task's ``run`` takes: the suite runner builds it
    for a cell, and ``bench cls|seg|det`` build it once from their options. Options left None keep
    the task's own defaults."""

    task: str
    protocol: str
    backbone: str  # registry name <init>_<arch>
    checkpoint: Path | None
    data_root: Path
    work_dir: Path
    seed: int
    suite: str
    k: int | None = None
    config: str | None = None
    iters: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    amp: bool | None = None  # mixed precision (bf16 where supported, else fp16); None: on for CUDA only
    trust_checkpoint: bool = False
    trust_config: bool = False  # read a config file from outside the package (runs its Python)
    progress: bool = False
    # A search's point: hyperparameter -> value (names of the task's ``TaskSpec.search_keys``)
    overrides: dict = field(default_factory=dict)
    # None: the normal run on the reported split. 'heldout': train on the training split minus a
    # held-out part carved from it, and report metrics on that part (``TaskSpec.heldout``).
    select: str | None = None
    engine: str | None = None  # one of TaskSpec.engines; None: the task's default
    # The initialisation's name in rows and tables (default: the init part of ``backbone``); two
    # checkpoints of one method are told apart by it and by the checkpoint's sha256.
    label: str | None = None
    eval_only: bool = False  # evaluate ``weights`` (a fine-tuned model) without training
    weights: Path | None = None  # with eval_only: the trained model to evaluate
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    cfg_options: dict = field(default_factory=dict)  # the engine's own KEY=VALUE overrides, applied last
    resume: bool = True  # continue from the work folder's newest readable checkpoint
    results: Path | None = None  # results store to append the row to (the suite runner appends itself)
    # Settings of one family only, by name (e.g. detection's 'variant', 'dets_out'); each family
    # documents the names it reads and refuses others.
    options: dict = field(default_factory=dict)

    def given(self, *names: str) -> dict:
        """The options among ``names`` that the suite sets."""
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def init(self) -> str:
        """The initialisation method of ``backbone`` (registry name ``<init>_<arch>``)."""
        from backbones.registry import parse_name  # imports torch: keep importing the spec cheap

        return parse_name(self.backbone)[0]

    @property
    def row_label(self) -> str:
        return self.label or self.init


@dataclass(frozen=True)
class TaskSpec:
    """One transfer task. See ``docs/adding_a_task.md`` for a worked example."""

    name: str  # the rows' 'task' and the suites' 'task:'
    family: str  # one of FAMILIES
    title: str  # its name in tables and plots, e.g. 'iNat 2017'
    protocols: tuple[str, ...]  # the rows' 'protocol'; the first is the default
    img_size: int  # input size of the paper's protocol for this task
    metrics: tuple[str, ...]  # what tables and plots show; the first is the headline
    tables: dict[str, Table]  # protocol -> the table its rows go into
    # Running it (None: a task that has published numbers only, e.g. ImageNet for Table 3)
    run: Callable[[TransferRun], dict] | None = None
    generator: str | None = None  # "module:function"(root, **generate) -> dataset root
    generator_args: dict = field(default_factory=dict)  # fixed arguments, e.g. {'year': 2017}
    generated: str = "generated data"  # the rows' deviation when a suite uses the generator
    reader: Callable[[Path], Any] | None = None  # reads (and checks) a dataset root
    suite_keys: tuple[str, ...] = ()  # what a suite's task entry may set beyond the common keys
    engines: tuple[str, ...] = ()  # suite key 'engine': the training engines (first = default)
    search_keys: tuple[str, ...] = ()  # hyperparameters a suite's search: may vary (overrides)
    heldout: bool = False  # its run takes select='heldout'
    command: Command | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"task {self.name}: unknown family {self.family!r}")
        if not self.protocols or not self.metrics:
            raise ValueError(f"task {self.name}: needs protocols and metrics")
        if set(self.tables) - set(self.protocols):
            raise ValueError(f"task {self.name}: tables for protocols it does not have")

    @property
    def runnable(self) -> bool:
        return self.run is not None

    # --- the small generated dataset -----------------------------------------------------------
    def generator_options(self) -> dict[str, inspect.Parameter]:
        """The generator's parameters a suite may set under ``generate:`` (name -> parameter)."""
        params = list(inspect.signature(resolve(self.generator)).parameters.values())[1:]  # root
        return {
            p.name: p
            for p in params
            if p.name not in self.generator_args
            and p.name != "overwrite"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def generate(self, root: str | Path, **options) -> Path:
        """Write the small generated dataset at ``root``; returns the root the task reads."""
        return Path(resolve(self.generator)(root, **self.generator_args, **options))

    # --- the published reference ---------------------------------------------------------------
    def resolution(self, img_size: Any) -> int | None:
        """A run's input size as the tables key it: None at the task's own ``img_size`` (a row
        without ``extra['img_size']`` is taken to be there), else the size (e.g. 448)."""
        if img_size is None or img_size != img_size:  # None or NaN
            return None
        return None if int(img_size) == self.img_size else int(img_size)

    def reference_resolution(self, img_size: int) -> int | None:
        """The same key for a row of the reference CSV, whose ``img_size`` names the paper's
        column: ``PAPER_COLUMN_IMG_SIZE`` (or the task's own size) is the paper's protocol."""
        return None if int(img_size) in (PAPER_COLUMN_IMG_SIZE, self.img_size) else int(img_size)
