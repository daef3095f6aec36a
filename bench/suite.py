"""Suite files: which initialisations to transfer to which tasks, with which seeds.

A suite is a YAML file (``bench/suites/demo.yaml`` is the smallest complete example)::

    name: demo                   # goes into every run_id and results row (key 'suite')
    scale: smoke                 # smoke | full: says whether the numbers can be compared to the paper
    arch: vit_demo_patch8        # ViT size for every init (an init may set its own 'arch')
    seeds: [0]                   # transfer seeds: every (init, task[, k]) runs once per seed;
                                 #   pretraining runs once per init (its own pretrain.seed)
    inits:                       # <label>: how to get the weights; the label names the cells
      random: {}                 #   nothing: random init (only for inits that need no checkpoint)
      mae:
        pretrain: {method: mae, steps: 300, batch_size: 32}     # pretrain here, then transfer
      supervised:
        checkpoint: ckpt/deit_base_patch16_224.pth              # a file (official or our own)
      mae_ratio50:                                              # a second MAE, another label
        init: mae                #   registry init (default: the label); rows carry this name
        pretrain: {method: mae, mask_ratio: 0.5, steps: 300}
    tasks:                       # <label>: a transfer task; the label names the cells
      coco:
        task: coco               #   a task of tasks/registry.py (default: the label)
        protocol: maskrcnn_fpn   #   one of the task's protocols (default: its first)
        generate: {n_train: 16, n_val: 8, image_size: [64, 64]}  # make the small generated set
        # data: /datasets/coco   #   ... or read a dataset on disk (exactly one of the two)
        config: smoke            #   the task's config name or file, or {<arch>: config, ...}
        iters: 100               #   the task's own keys (TaskSpec.suite_keys): coco and ade20k
                                 #   take iters; classification epochs, batch_size, k, bf16
      folder_partial:
        task: folder
        protocol: partial
        k: [0, 1, 2]             #   partial: numbers of fine-tuned last blocks
        epochs: 3                #   classification: epochs (and batch_size, bf16)
        generate: {n_train_per_class: 20, image_size: 32}

``pretrain`` takes ``method`` (mae, mocov3, beit, supervised; default: the init), ``data``
(``embedded`` or an image folder), ``img_size``, ``epoch_size``, every field of the shared engine's
``TrainConfig`` (steps, epochs, batch_size, blr, warmup_steps, ckpt_every, seed, ...) and the
method's own options (MAE: ``mask_ratio``, ``norm_pix_loss``). An init may also carry ``extra``
(JSON scalars written into each of its rows' ``extra``; ``mask_ratio`` and ``img_size`` there also
take part in the run id) and ``trust_checkpoint: true`` for official files that need full
unpickling. Relative paths (``checkpoint``, ``data``, config files) are relative to the directory
the command runs in.

A task may also carry ``trust_config: true`` (read a ``.py`` config from outside the package),
``search: {lr: [..], weight_decay: [..]}`` (a grid; an init may replace it per task with
``inits.<label>.search: {<task label>: {...}}``) and ``select_on: heldout | val``; see
``docs/suites.md`` for the search and the limits (aliases, list lengths, finite numbers).

``load_suite`` checks everything before anything runs: an unknown key, init, task, protocol or a
value of the wrong type is a ``BenchError`` naming the file, the key and the allowed values.
Whether files exist is checked by ``bench run`` (``bench.runner.check_inputs``, also with
``--dry-run``), not here, so a suite loads on a machine without its datasets.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from bench.core.errors import BenchError
from tasks.registry import TASKS, runnable_tasks
from tasks.spec import TaskSpec

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SCALES = ("smoke", "full")
PRETRAIN_METHODS = ("mae", "mocov3", "beit", "supervised")

SUITE_KEYS = ("name", "description", "scale", "arch", "seeds", "inits", "tasks")
INIT_KEYS = ("init", "arch", "checkpoint", "pretrain", "trust_checkpoint", "extra", "search")
# Keys every pretraining method takes besides the engine's TrainConfig fields.
PRETRAIN_COMMON_KEYS = ("method", "data", "img_size", "epoch_size")
# TrainConfig fields a suite may not set: the runner owns them.
PRETRAIN_RESERVED = ("out_dir", "desc", "progress", "resume")
# Keys of every task entry; each task adds its own (TaskSpec.suite_keys: iters, epochs, ...).
TASK_COMMON_KEYS = ("task", "protocol", "data", "generate", "config", "trust_config", "search", "select_on")
SELECT_ON = ("heldout", "val")
# Bounds on what a small file may ask for: a YAML alias bomb, or a typo such as seeds: [0..1e6],
# must end in one line, not in hours of cells or gigabytes of error message.
MAX_YAML_VALUES = 20_000  # scalars, lists and mappings after expanding aliases
MAX_SEEDS = 64
MAX_ENTRIES = 256  # inits, tasks
MAX_GRID = 64  # points of one search grid
MAX_QUOTE = 80  # characters of a value quoted in a message
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    bf16: bool = False
    trust_config: bool = False  # read a config file from outside the package
    search: dict | None = None  # hyperparameter -> tuple of values (a grid)
    select_on: str = "heldout"  # where the search selects: SELECT_ON
    engine: str | None = None  # TaskSpec.engines (COCO: mmdet | detectron2); None: default

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
    scale: str
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
# Loading
# --------------------------------------------------------------------------------------------------


def bundled_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_suite_path(name_or_path: str | Path) -> Path:
    """A suite file path, or the name of a bundled suite (``demo`` -> ``bench/suites/demo.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SUITES_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise BenchError(
        f"suite {_quote(str(name_or_path))}: no such file and not a bundled suite "
        f"(bundled: {', '.join(bundled_suites())})"
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite file (see the module docstring for the format)."""
    path = resolve_suite_path(name_or_path)
    where = str(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except RecursionError:
        raise BenchError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BenchError(f"{where}: not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{where}: cannot read the suite file ({e})") from None
    doc = _mapping(doc, where, "the suite file")
    _known_keys(doc, SUITE_KEYS, where, "")
    for key in ("name", "seeds", "inits", "tasks"):
        if key not in doc:
            raise BenchError(f"{where}: key {_quote(key)} is required")

    name = _string(doc["name"], where, "name")
    if not LABEL_RE.fullmatch(name):
        raise BenchError(
            f"{where}: key 'name' is {_quote(name)}: a suite name may hold only "
            "letters, digits, '_', '.' and '-' (it names the folder results/<name>)"
        )
    scale = doc.get("scale", "smoke")
    if not isinstance(scale, str) or scale not in SCALES:
        raise BenchError(f"{where}: key 'scale' is {_quote(scale)}; allowed: {', '.join(SCALES)}")
    seeds = _seeds(doc["seeds"], where, "key 'seeds'")
    default_arch = _string(doc["arch"], where, "arch") if "arch" in doc else None

    inits_doc = _mapping(doc["inits"], where, "key 'inits'")
    if not inits_doc:
        raise BenchError(f"{where}: key 'inits' is empty; give at least one initialisation")
    inits = tuple(_init_entry(label, spec, default_arch, where) for label, spec in inits_doc.items())

    tasks_doc = _mapping(doc["tasks"], where, "key 'tasks'")
    if not tasks_doc:
        raise BenchError(f"{where}: key 'tasks' is empty; give at least one task")
    for section, entries in (("inits", inits_doc), ("tasks", tasks_doc)):
        if len(entries) > MAX_ENTRIES:
            raise BenchError(f"{where}: key {section!r} has {len(entries)} entries; at most {MAX_ENTRIES}")
    tasks = tuple(_task_entry(label, spec, where) for label, spec in tasks_doc.items())
    inits = tuple(_init_search(i, inits_doc[i.label], tasks, where) for i in inits)
    for t in tasks:
        for i in inits:
            if isinstance(t.config, dict) and i.arch not in t.config:
                raise BenchError(
                    f"{where}: key 'tasks.{t.label}.config' has no entry for "
                    f"{i.arch} (init {_quote(i.label)}); given: {', '.join(t.config)}"
                )
            # k must be a block count of every init's ViT
            depth = _arch_depth(i.arch)
            bad = [k for k in t.k if k > depth]
            if bad:
                raise BenchError(
                    f"{where}: key 'tasks.{t.label}.k' has {bad[0]} but init "
                    f"{_quote(i.label)} ({i.arch}) has only {depth} blocks; "
                    f"allowed: 0..{depth}"
                )
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise BenchError(f"{where}: key 'description' must be a string")
    return Suite(
        name=name, path=path, scale=scale, seeds=seeds, inits=inits, tasks=tasks, description=description.strip()
    )


def _init_entry(label: Any, spec: Any, default_arch: str | None, where: str) -> InitEntry:
    from backbones.registry import INITS
    from backbones.vit import ARCHS

    label = _label(label, where, "inits")
    key = f"inits.{label}"
    spec = {} if spec is None else _mapping(spec, where, f"key {_quote(key)}")
    _known_keys(spec, INIT_KEYS, where, key)
    init = spec.get("init", label)
    if not isinstance(init, str) or init not in INITS:
        raise BenchError(
            f"{where}: key {key + ('.init' if 'init' in spec else '')!r}: unknown "
            f"initialisation {_quote(init)}; allowed: {', '.join(INITS)} (or set "
            f"'{key}.init' to one of them)"
        )
    arch = spec.get("arch", default_arch)
    if arch is None:
        raise BenchError(
            f"{where}: key {key + '.arch'!r} is required when the suite has no "
            f"top-level 'arch'; allowed: {', '.join(ARCHS)}"
        )
    if not isinstance(arch, str) or arch not in ARCHS:
        at = f"{key}.arch" if "arch" in spec else "arch"
        raise BenchError(f"{where}: key {_quote(at)}: unknown architecture {_quote(arch)}; allowed: {', '.join(ARCHS)}")
    if "checkpoint" in spec and "pretrain" in spec:
        raise BenchError(f"{where}: key {_quote(key)} has both 'checkpoint' and 'pretrain'; give one")
    checkpoint = None
    if "checkpoint" in spec:
        checkpoint = Path(_string(spec["checkpoint"], where, f"{key}.checkpoint")).expanduser()
    pretrain = None
    if "pretrain" in spec:
        pretrain = _pretrain_spec(spec["pretrain"], init, where, f"{key}.pretrain")
    if checkpoint is None and pretrain is None and INITS[init].needs_checkpoint:
        raise BenchError(
            f"{where}: key {_quote(key)}: initialisation {_quote(init)} needs weights; add "
            f"'checkpoint: PATH' or 'pretrain: {{method: ...}}' (allowed methods: "
            f"{', '.join(PRETRAIN_METHODS)})"
        )
    if INITS[init].converter is None and (checkpoint is not None or pretrain is not None):
        raise BenchError(
            f"{where}: key {_quote(key)}: initialisation {_quote(init)} takes no weights; "
            f"remove 'checkpoint'/'pretrain' or set '{key}.init'"
        )
    trust = spec.get("trust_checkpoint", False)
    if not isinstance(trust, bool):
        raise BenchError(f"{where}: key {key + '.trust_checkpoint'!r} must be true or false")
    extra = _mapping(spec.get("extra", {}), where, f"key {key + '.extra'!r}")
    for name, value in extra.items():
        if not isinstance(name, str) or not (value is None or isinstance(value, (str, int, float, bool))):
            raise BenchError(f"{where}: key {key}.extra.{name}: values must be strings, numbers or booleans")
    extra = dict(extra)
    if pretrain is not None and pretrain["method"] == "mae":
        ratio = pretrain.get("mask_ratio", _param_default(pretrainer_fn("mae"), "mask_ratio"))
        if extra.get("mask_ratio", ratio) != ratio:
            raise BenchError(f"{where}: key {key + '.extra.mask_ratio'!r} contradicts '{key}.pretrain.mask_ratio'")
        extra["mask_ratio"] = ratio
    return InitEntry(
        label=label, init=init, arch=arch, checkpoint=checkpoint, pretrain=pretrain, trust_checkpoint=trust, extra=extra
    )


def _pretrain_spec(spec: Any, init: str, where: str, key: str) -> dict:
    from bench.core.engine import TrainConfig

    spec = _mapping(spec, where, f"key {_quote(key)}")
    method = spec.get("method", init)
    if not isinstance(method, str) or method not in PRETRAIN_METHODS:
        raise BenchError(
            f"{where}: key {key + '.method'!r}: unknown pretraining method "
            f"{_quote(method)}; allowed: {', '.join(PRETRAIN_METHODS)}"
        )
    fn = pretrainer_fn(method)
    own = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in PRETRAIN_RESERVED
    ]
    train = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in PRETRAIN_RESERVED]
    allowed = list(dict.fromkeys(PRETRAIN_COMMON_KEYS + tuple(own) + tuple(train)))
    _known_keys(spec, allowed, where, key)
    out = {"method": method}
    for name, value in spec.items():
        if name == "method":
            continue
        if name == "betas":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise BenchError(f"{where}: key {key}.betas must be a list of two numbers")
            value = tuple(float(v) for v in value)
        elif name == "data":
            value = _string(value, where, f"{key}.data")
        elif not _plain(value, depth=2) or not _finite(value):
            raise BenchError(
                f"{where}: key {key}.{name} must be a finite number, string, boolean, or a list or mapping of those"
            )
        out[name] = value  # e.g. BEiT's tokenizer_train: {epochs: 4, blr: 2.0e-3}
    for name in ("steps", "seed", "ckpt_every", "batch_size", "epoch_size", "accum_iter"):
        least = 0 if name in ("steps", "seed", "ckpt_every") else 1
        if name in out and not (_is_int(out[name]) and out[name] >= least):
            raise BenchError(f"{where}: key {key}.{name} must be an integer >= {least}, got {_quote(out[name])}")
    if "mask_ratio" in out and not (_is_number(out["mask_ratio"]) and 0 < out["mask_ratio"] < 1):
        raise BenchError(f"{where}: key {key}.mask_ratio must be in (0, 1), got {_quote(out['mask_ratio'])}")
    return out


def _task_entry(label: Any, spec: Any, where: str) -> TaskEntry:
    label = _label(label, where, "tasks")
    key = f"tasks.{label}"
    spec = {} if spec is None else _mapping(spec, where, f"key {_quote(key)}")
    task = spec.get("task", label)
    runnable = runnable_tasks()
    if not isinstance(task, str) or task not in runnable:
        raise BenchError(
            f"{where}: key {key + ('.task' if 'task' in spec else '')!r}: unknown "
            f"task {_quote(task)}; allowed: {', '.join(runnable)} (or set '{key}.task')"
        )
    declared = TASKS[task]
    _known_keys(spec, TASK_COMMON_KEYS + declared.suite_keys, where, key)
    protocols = declared.protocols
    protocol = spec.get("protocol", protocols[0])
    if not isinstance(protocol, str) or protocol not in protocols:
        raise BenchError(
            f"{where}: key {key + '.protocol'!r}: protocol {_quote(protocol)} is not one "
            f"of {task}'s; allowed: {', '.join(protocols)}"
        )
    if ("data" in spec) == ("generate" in spec):
        raise BenchError(
            f"{where}: key {_quote(key)} needs exactly one of 'data' (a dataset on disk) "
            "and 'generate' (make the small generated set)"
        )
    data = Path(_string(spec["data"], where, f"{key}.data")).expanduser() if "data" in spec else None
    generate = None
    if "generate" in spec:
        generate = _mapping(spec["generate"], where, f"key {key + '.generate'!r}")
        params = declared.generator_options()
        _known_keys(generate, list(params), where, f"{key}.generate")
        for name, value in generate.items():  # the type of each parameter's default
            kind = _kind_of(params[name].default)
            if (kind and not _is_kind(value, kind)) or not _finite(value):
                raise BenchError(f"{where}: key {key}.generate.{name} must be {kind}, got {_quote(value)}")
        generate = {name: (tuple(v) if isinstance(v, list) else v) for name, v in generate.items()}
    config = None
    if isinstance(spec.get("config"), dict):  # one config per architecture
        from backbones.vit import ARCHS

        _known_keys(spec["config"], ARCHS, where, f"{key}.config")
        config = {arch: _string(v, where, f"{key}.config.{arch}") for arch, v in spec["config"].items()}
    elif "config" in spec:
        config = _string(spec["config"], where, f"{key}.config")
    iters = _positive_int(spec, "iters", where, key)
    batch_size = _positive_int(spec, "batch_size", where, key)
    epochs = spec.get("epochs")
    if epochs is not None and not (_is_number(epochs) and 0 < epochs < math.inf):
        raise BenchError(f"{where}: key {key}.epochs must be a positive number, got {_quote(epochs)}")
    bf16 = spec.get("bf16", False)
    if not isinstance(bf16, bool):
        raise BenchError(f"{where}: key {key}.bf16 must be true or false")
    trust_config = spec.get("trust_config", False)
    if not isinstance(trust_config, bool):
        raise BenchError(f"{where}: key {key}.trust_config must be true or false")
    select_on = spec.get("select_on", "heldout")
    if not isinstance(select_on, str) or select_on not in SELECT_ON:
        raise BenchError(f"{where}: key {key}.select_on is {_quote(select_on)}; allowed: {', '.join(SELECT_ON)}")
    engine = spec.get("engine")
    if engine is not None and (not isinstance(engine, str) or engine not in declared.engines):
        raise BenchError(
            f"{where}: key {key}.engine is {_quote(engine)}; allowed: "
            f"{', '.join(declared.engines) or 'none (this task has one engine)'}"
        )
    search = None
    if "search" in spec:
        search = _grid(spec["search"], declared, select_on, where, f"{key}.search")
    k: tuple[int, ...] = ()
    if protocol == "partial":
        raw = spec.get("k")
        if not (isinstance(raw, list) and raw and all(_is_int(v) and v >= 0 for v in raw)):
            raise BenchError(
                f"{where}: key {key + '.k'!r} is required for protocol 'partial': a "
                "list of numbers of fine-tuned blocks, e.g. [0, 1, 2, 4]"
            )
        if len(set(raw)) != len(raw):
            raise BenchError(f"{where}: key {key}.k lists a value twice: {_quote(raw)}")
        k = tuple(raw)
    elif "k" in spec:
        raise BenchError(
            f"{where}: key {key + '.k'!r} is only for protocol 'partial' (this task's protocol is {_quote(protocol)})"
        )
    return TaskEntry(
        label=label,
        task=task,
        protocol=protocol,
        data=data,
        generate=generate,
        config=config,
        iters=iters,
        epochs=None if epochs is None else float(epochs),
        batch_size=batch_size,
        k=k,
        bf16=bf16,
        trust_config=trust_config,
        search=search,
        select_on=select_on,
        engine=engine,
    )


def _init_search(init: InitEntry, spec: Any, tasks: tuple[TaskEntry, ...], where: str) -> InitEntry:
    """``inits.<label>.search: {<task label>: grid}``: this init's own grid for those tasks."""
    if not isinstance(spec, dict) or "search" not in spec:
        return init
    key = f"inits.{init.label}.search"
    grids = _mapping(spec["search"], where, f"key {key!r}")
    by_label = {t.label: t for t in tasks}
    _known_keys(grids, list(by_label), where, key)
    search = {
        label: _grid(grid, by_label[label].spec, by_label[label].select_on, where, f"{key}.{label}")
        for label, grid in grids.items()
    }
    return dataclasses.replace(init, search=search)


def _grid(value: Any, declared: TaskSpec, select_on: str, where: str, key: str) -> dict:
    """A search grid ``{hyperparameter: [values]}``, checked against what the task can vary."""
    grid = _mapping(value, where, f"key {key!r}")
    if not declared.search_keys:
        raise BenchError(f"{where}: key {key!r}: task {declared.name!r} has no hyperparameters to search")
    if not grid:
        raise BenchError(f"{where}: key {key!r} is empty; give e.g. {{{declared.search_keys[0]}: [a, b]}}")
    _known_keys(grid, declared.search_keys, where, key)
    if select_on == "heldout" and not declared.heldout:
        raise BenchError(
            f"{where}: key {key!r}: selecting on a held-out part of the training set "
            f"is not implemented for task {declared.name!r}; set 'select_on: val' "
            "(the rows then say 'selected on val')"
        )
    out, points = {}, 1
    for name, values in grid.items():
        if not (
            isinstance(values, list)
            and values
            and all(isinstance(v, (str, bool)) or (_is_number(v) and math.isfinite(v)) for v in values)
        ):
            raise BenchError(
                f"{where}: key {key}.{name} must be a non-empty list of finite "
                f"numbers (or strings), got {_quote(values)}"
            )
        if len(set(map(repr, values))) != len(values):
            raise BenchError(f"{where}: key {key}.{name} lists a value twice: {_quote(values)}")
        points *= len(values)
        if points > MAX_GRID:
            raise BenchError(f"{where}: key {key!r} has more than {MAX_GRID} points; search fewer values")
        out[name] = tuple(values)
    return out


# --------------------------------------------------------------------------------------------------
# The pretrainers a suite names
# --------------------------------------------------------------------------------------------------


def pretrainer_fn(method: str) -> Callable[..., Path]:
    """The pretraining function of ``method`` (``backbones.pretrainers.PRETRAINERS``):
    ``fn(arch, out_dir, *, data, img_size, epoch_size, resume, **train) -> Path of pretrain.pth``."""
    from backbones.pretrainers import PRETRAINERS

    return PRETRAINERS[method]


# --------------------------------------------------------------------------------------------------
# Small checks
# --------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently),
    and a document that expands (through aliases) to more than ``MAX_YAML_VALUES`` values or
    refers to itself: aliases share one node, but every walk over the result expands them."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {})
        return node


def _expanded_size(node, sizes: dict) -> int:
    """Number of values ``node`` stands for once aliases are expanded; raises past the bound.
    ``sizes``: node id -> size (None while being counted: a node inside itself)."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a value that contains it", node.start_mark
            )
        return sizes[id(node)]
    sizes[id(node)] = None
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(n, sizes) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if size > MAX_YAML_VALUES:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"the document expands to more than {MAX_YAML_VALUES} values (through aliases?)",
            node.start_mark,
        )
    sizes[id(node)] = size
    return size


def _quote(value: Any) -> str:
    """``repr(value)``, cut to ``MAX_QUOTE`` characters: messages quote user values, and a value
    may be huge. Containers are not repr'd whole first (an alias bomb would expand here)."""
    if isinstance(value, (list, tuple, dict, set)):
        text, _ = _short_repr(value, MAX_QUOTE + 1)
    else:
        text = (
            repr(value) if not isinstance(value, str) or len(value) <= 4 * MAX_QUOTE else repr(value[: MAX_QUOTE + 1])
        )
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def _short_repr(value: Any, budget: int) -> tuple[str, int]:
    """repr of ``value`` up to about ``budget`` characters; returns (text, budget left)."""
    if isinstance(value, (list, tuple, set)):
        items = list(value) if not isinstance(value, set) else sorted(value, key=repr)
        opened, closed = ("[", "]") if isinstance(value, list) else ("(", ")")
        parts = []
        for item in items:
            if budget <= 0:
                parts.append("...")
                break
            text, budget = _short_repr(item, budget)
            parts.append(text)
            budget -= 2
        return opened + ", ".join(parts) + closed, budget
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if budget <= 0:
                parts.append("...")
                break
            kt, budget = _short_repr(k, budget)
            vt, budget = _short_repr(v, budget)
            parts.append(f"{kt}: {vt}")
            budget -= 2
        return "{" + ", ".join(parts) + "}", budget
    text = _quote(value) if not isinstance(value, (list, tuple, dict, set)) else "..."
    return text, budget - len(text)


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (list, dict, set)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {_quote(key)} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mapping(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise BenchError(f"{where}: {what} must be a mapping (key: value lines), got {type(value).__name__}")
    return value


def _known_keys(spec: dict, allowed, where: str, prefix: str) -> None:
    for name in spec:
        if name not in allowed:
            at = f"{prefix}.{name}" if prefix else str(name)
            raise BenchError(f"{where}: unknown key {_quote(at)}; allowed: {', '.join(allowed)}")


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchError(f"{where}: key {_quote(key)} must be a non-empty string, got {_quote(value)}")
    return value


def _label(value: Any, where: str, section: str) -> str:
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise BenchError(
            f"{where}: key {_quote(f'{section}.{value}')}: labels may hold only letters, "
            "digits, '_', '.' and '-' (they name cells and folders)"
        )
    return value


def _seeds(value: Any, where: str, what: str) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise BenchError(f"{where}: {what} has {len(value)} seeds; at most {MAX_SEEDS}")
    if not (isinstance(value, list) and value and all(_is_int(s) and s >= 0 for s in value)):
        raise BenchError(f"{where}: {what} must be a non-empty list of integers >= 0, got {_quote(value)}")
    if len(set(value)) != len(value):
        raise BenchError(f"{where}: {what} lists a seed twice: {_quote(value)}")
    return tuple(value)


def _positive_int(spec: dict, name: str, where: str, key: str) -> int | None:
    value = spec.get(name)
    if value is not None and not (_is_int(value) and value > 0):
        raise BenchError(f"{where}: key {key}.{name} must be a positive integer, got {_quote(value)}")
    return value


def _finite(value: Any) -> bool:
    """No inf / nan anywhere in a (checked, shallow) plain value: '.inf' epochs or steps would
    stop the cell late or never."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _plain(value: Any, depth: int) -> bool:
    """A YAML scalar, or (``depth`` levels of) lists / mappings of them."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if depth == 0:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


def _kind_of(default: Any) -> str | None:
    """What a generator parameter takes, judged by its default (None: anything)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (tuple, list)) and all(_is_int(v) for v in default):
        return "a list of integers"
    return None


def _is_kind(value: Any, kind: str) -> bool:
    return {
        "true or false": lambda: isinstance(value, bool),
        "an integer": lambda: _is_int(value),
        "a number": lambda: _is_number(value),
        "a list of integers": lambda: isinstance(value, list) and all(_is_int(v) for v in value),
    }[kind]()


def _param_default(fn: Callable, name: str):
    return inspect.signature(fn).parameters[name].default


def _arch_depth(arch: str) -> int:
    from backbones.vit import arch_config

    return int(arch_config(arch)["depth"])
