"""The checked form of a suite: ``Suite`` of ``InitEntry`` and ``TaskEntry``, and the limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from backbones.pretrainers import PRETRAINERS
from bench.suite.checks import _seeds
from tasks.registry import TASKS
from tasks.spec import TaskSpec

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
PRETRAIN_METHODS = ("mae", "mocov3", "beit", "supervised")

SUITE_KEYS = ("name", "description", "arch", "seeds", "inits", "tasks")
# Keys an older suite file may still hold: read, ignored with a one-line note, never used. 'scale'
# was self-declared; whether a row is comparable to the paper is now derived from the row itself
# (its checkpoint's provenance, its data and its deviations: bench.runner.loop.paper_marks).
RETIRED_KEYS = {"scale": "whether a row is comparable to the paper is derived from its checkpoint, data and protocol"}
INIT_KEYS = ("init", "arch", "checkpoint", "pretrain", "trust_checkpoint", "extra", "search")
# Keys every pretraining method takes besides the engine's TrainConfig fields.
PRETRAIN_COMMON_KEYS = ("method", "data", "img_size", "epoch_size")
# TrainConfig fields a suite may not set: the runner owns them.
PRETRAIN_RESERVED = ("out_dir", "desc", "progress", "resume")
# Keys of every task entry; each task adds its own (TaskSpec.suite_keys: iters, epochs, ...).
# 'amp' (mixed precision) is every task's; 'bf16' is its old name, kept as an alias.
TASK_COMMON_KEYS = (
    "task",
    "protocol",
    "data",
    "generate",
    "config",
    "trust_config",
    "search",
    "select_on",
    "unequal_grid_reason",
    "amp",
    "bf16",
    "floors",
)
SELECT_ON = ("heldout", "val")
# Row 'extra' keys that a run measures or the runner writes: a suite's 'extra:' may not set them
# (img_size: 448 would relabel a 32-px run as @448; search_role: candidate would hide a final row).
RESERVED_EXTRA = (
    "img_size",
    "engine",
    "eval_only",
    "data",
    "cell",
    "search",
    "search_role",
    "overrides",
    "select",
    "heldout_size",
    "per_example",
    "label",
    "provenance",
)
# Upper bounds of the generated test sets (generate:), checked at load: a typo such as
# image_size: 40000 must be one line, not a machine out of memory.
MAX_GENERATED_SIDE = 2048  # pixels per image side
MAX_GENERATED_COUNT = 100_000  # any count option (images, images per class, classes)
MAX_GENERATED_BYTES = 4 << 30  # images x height x width x 3 bytes of one generated set
MAX_ENTRIES = 256  # inits, tasks
MAX_GRID = 64  # points of one search grid


@dataclass(frozen=True)
class InitEntry:
    """One initialisation of a suite. ``label`` names its cells (``mae/coco/seed0``); ``init`` is
    the registry initialisation (``build_backbone(f'{init}_{arch}')``) and the rows' ``init``."""

    label: str
    init: str
    arch: str
    checkpoint: Path | None = None  # a given file, or None
    pretrain: dict | None = None  # {'method': ..., **kwargs of the pretrainer}
    trust_checkpoint: bool = False
    extra: dict = field(default_factory=dict)  # goes into every row's 'extra' (and run id)
    search: dict = field(default_factory=dict)  # task label -> grid, replacing the task's grid

    @property
    def backbone(self) -> str:
        """Registry name, e.g. ``mae_vit_demo_patch8``."""
        return f"{self.init}_{self.arch}"


@dataclass(frozen=True)
class TaskEntry:
    """One transfer task of a suite; ``label`` names its cells."""

    label: str
    task: str
    protocol: str
    data: Path | None = None  # a dataset on disk, or None with ``generate``
    generate: dict | None = None  # kwargs of the task's small-dataset generator
    config: str | dict | None = None  # config name or file, or {arch: config}; None: default
    iters: int | None = None  # detection / segmentation
    epochs: float | None = None  # classification
    batch_size: int | None = None
    k: tuple[int, ...] = ()  # protocol 'partial'
    amp: bool = False  # mixed precision (suite key 'amp', or its old name 'bf16')
    trust_config: bool = False  # read a config file from outside the package
    search: dict | None = None  # hyperparameter -> tuple of values (a grid)
    select_on: str = "heldout"  # where the search selects: SELECT_ON
    engine: str | None = None  # TaskSpec.engines (COCO: mmdet | detectron2); None: default
    unequal_grid_reason: str | None = None  # why its inits may search different grids
    floors: bool | None = None  # raw-pixel floor rows; None: the runner decides (digits, generated sets)
    eval_every: int | None = None  # classification: eval top-1 every N epochs -> curve.jsonl (convergence plot)

    def config_for(self, arch: str) -> str | None:
        return self.config.get(arch) if isinstance(self.config, dict) else self.config

    @property
    def spec(self) -> TaskSpec:
        """The task's declaration (``tasks.registry``)."""
        return TASKS[self.task]


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    seeds: tuple[int, ...]
    inits: tuple[InitEntry, ...]
    tasks: tuple[TaskEntry, ...]
    description: str = ""

    def grid(self, init: InitEntry, task: TaskEntry) -> dict | None:
        """The search grid of ``task`` for ``init`` (the init's own, else the task's), or None."""
        return init.search.get(task.label, task.search)

    def with_trust_config(self) -> "Suite":
        """The same suite with every task's config trusted (``bench run --trust-config``)."""
        return dataclasses.replace(self, tasks=tuple(dataclasses.replace(t, trust_config=True) for t in self.tasks))

    def with_seeds(self, seeds) -> "Suite":
        """The same suite with other transfer seeds (``bench run --seeds``)."""
        return dataclasses.replace(self, seeds=_seeds(list(seeds), f"{self.path}", "option --seeds"))


# --------------------------------------------------------------------------------------------------
# The pretrainers a suite names
# --------------------------------------------------------------------------------------------------


def pretrainer_fn(method: str) -> Callable[..., Path]:
    """The pretraining function of ``method`` (``backbones.pretrainers.PRETRAINERS``):
    ``fn(arch, out_dir, *, data, img_size, epoch_size, resume, **train) -> Path of pretrain.pth``."""
    return PRETRAINERS[method]
