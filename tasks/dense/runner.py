"""What the mmengine-based dense tasks share (``bench seg`` and the mmdet engine of ``bench det``),
without mmengine itself: the family modules keep their data checks, named configs, metrics and
row extras. Here:

* **config reading**: the trust gate (a config outside the package is Python that runs when read:
  refused without ``trust_config``), one-line read errors, the structural checks both need, and
  ``--cfg-options`` (applied after our edits and recorded; a value that names code, such as a
  registry ``type`` that is no registered name, ``_target_`` or ``custom_imports``, needs
  ``trust_config`` too, since mmengine imports whatever module such a name points to);
* **lr**: the config's ``lr_by_init`` entry for the backbone's initialisation;
* **schedule**: an iteration schedule scaled to ``--iters`` by ``bench.core.workdir``'s one rule
  (warm-up, milestones and intervals keep their fraction of training), the total batch over the
  processes (lr scaled linearly by mmengine's ``auto_scale_lr``), the checkpoint interval;
* **AMP fallback**: ``AmpOptimWrapper`` becomes a plain fp32 ``OptimWrapper`` without CUDA (with
  CUDA it runs fp16: mmcv's RoIAlign has no bf16 kernel);
* **the row** (``transfer_row``): one function from the run's facts object and what it measured;
* **the options** ``bench seg`` and ``bench det`` share (``add_dense_arguments``).

The work folder (record, resume order, fresh start) is ``tasks.dense.workdir``; the mmengine run
itself is ``tasks.dense.mm_runner.run_dense``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from backbones.provenance import provenance_of
from backbones.registry import parse_name
from bench.core.distributed import launch_env
from bench.core.errors import BenchError, first_line
from bench.core.options import add_run_options
from bench.core.results import make_row
from bench.core.train_config import MAX_STEPS
from bench.core.workdir import check_steps, scale_step
from tasks.dense.workdir import RUN_RECORD
from tasks.spec import TransferRun

# What defines a protocol (the row's config_hash and the run record's): model, data pipelines,
# evaluator, optimiser, schedule, batch. Paths (data root, checkpoint, annotation and output files),
# loader workers, hooks, logging and the seed (a row field of its own) are left out, so the seeds of
# one protocol share a config_hash whatever machine or folder they ran in.
HASHED_KEYS = (
    "model",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "val_evaluator",
    "test_evaluator",
    "optim_wrapper",
    "param_scheduler",
    "train_cfg",
    "auto_scale_lr",
)
# Upper limit of the global batch: far above the papers' (16 for ADE20K, 64 for COCO), low enough that a
# typo is refused before a loader tries to assemble it.
MAX_GLOBAL_BATCH = 4096
_LOADER_RUNTIME_KEYS = ("num_workers", "persistent_workers", "pin_memory", "prefetch_factor")
_EVALUATOR_PATH_KEYS = ("ann_file", "outfile", "outfile_prefix")


# --------------------------------------------------------------------------------------------------
# Config reading
# --------------------------------------------------------------------------------------------------
def check_config_trust(path: str | os.PathLike, shipped_dir: str | os.PathLike, trust_config: bool) -> Path:
    """``path`` resolved; a file outside ``shipped_dir`` (the package's configs) is refused unless
    ``trust_config``: mmengine runs a ``.py`` config as Python when it reads it."""
    path = Path(path).resolve()
    if trust_config or path.is_relative_to(Path(shipped_dir).resolve()):
        return path
    raise BenchError(
        f"{path}: config file outside the package; reading it runs it as Python code "
        f"(mmengine), so pass --trust-config (suite key 'trust_config: true') if you trust it"
    )


def read_config(
    path: str | os.PathLike,
    *,
    shipped_dir,
    trust_config: bool = False,
    required=("model", "train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"),
):
    """``mmengine.Config.fromfile`` behind the trust gate, with one-line errors naming the file."""
    from mmengine.config import Config

    path = check_config_trust(path, shipped_dir, trust_config)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # syntax errors, missing _base_, a failing statement, ...: one line
        raise BenchError(f"{path}: cannot read config ({first_line(e, with_type=True)})") from None
    check_structure(cfg, path, required)
    return cfg


def check_structure(
    cfg, where, required=("model", "train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler")
) -> None:
    """What both dense tasks need of a config: the keys, our backbone plugin, an iteration loop."""
    for key in required:
        if key not in cfg:
            raise BenchError(f"{where}: config has no key '{key}'")
    got = (cfg.model.get("backbone") or {}).get("type")
    if got != "RegistryViT":
        raise BenchError(f"{where}: key 'model.backbone.type' must be 'RegistryViT' (got {got!r})")
    if cfg.train_cfg.get("type", "IterBasedTrainLoop") != "IterBasedTrainLoop":
        raise BenchError(f"{where}: key 'train_cfg.type' must be 'IterBasedTrainLoop'")


# Keys whose value mmengine turns into an import (``custom_imports``, scopes) or a call (``_target_``)
CODE_KEYS = ("custom_imports", "_target_", "_scope_", "default_scope")
TYPE_NAME = re.compile(r"^(?:(?P<scope>[A-Za-z_]\w*)\.)?(?P<name>[A-Za-z_]\w*)$")


def registered_type(value, scopes=("mmseg", "mmdet")) -> bool:
    """Whether ``value`` is a name the registries hold (mmengine's own, or those of ``scopes``,
    optionally prefixed ``scope.``). Any other ``type`` is imported by mmengine's ``Registry.get``
    (``os.system`` runs, a plain ``evil`` imports ``./evil.py``)."""
    import importlib

    import mmengine.registry as roots
    import mmengine.runner  # noqa: F401  registers mmengine's own hooks, optimisers, loops, ...

    m = TYPE_NAME.match(value) if isinstance(value, str) else None
    if m is None:
        return False
    registries = [r for r in vars(roots).values() if isinstance(r, roots.Registry)]
    for scope in scopes:
        try:
            importlib.import_module(f"{scope}.registry")
        except ImportError:
            continue
    tables = []
    for root in registries:
        children = root._children.values()
        tables.append((root.scope, root))
        tables += [(c.scope, c) for c in children if c.scope in scopes]
    for scope, reg in tables:
        if m["scope"] not in (None, scope):
            continue
        reg.import_from_location()  # the scope's own modules register themselves on import
        if m["name"] in reg.module_dict:
            return True
    return False


# Keys whose value mmengine's registries look up by name (an unregistered name is imported)
NAME_KEYS = ("type", "constructor")
# Keys the run itself owns: --out/--work-dir, --weights and --resume say them, once
OWN_KEYS = ("work_dir", "load_from", "resume")


def _names_code(key: str, value, scopes) -> bool:
    parts = str(key).split(".")
    if any(p in CODE_KEYS for p in parts):
        return True
    if parts[-1] in NAME_KEYS and not registered_type(value, scopes):
        return True
    if isinstance(value, dict):  # a whole sub-config: every key in it counts the same way
        return any(_names_code(f"{key}.{k}", v, scopes) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_names_code(key, v, scopes) for v in value if isinstance(v, (dict, list, tuple)))
    return False


def options_naming_code(options: dict, scopes=("mmseg", "mmdet")) -> list[str]:
    """The ``--cfg-options`` pairs whose value names code: a key through ``CODE_KEYS``, or a
    ``type`` / ``constructor`` that is no registered name (``registered_type``), at any depth."""
    return [f"{key}={value}" for key, value in options.items() if _names_code(key, value, scopes)]


def apply_cfg_options(cfg, options: dict | None, where, *, trust_config: bool = False, scopes=("mmseg", "mmdet")):
    """Merge ``--cfg-options`` (``{'a.b': value}``, mmengine's ``DictAction``) into ``cfg``, after our
    own edits: they win. A value naming code needs ``trust_config`` (refused before anything is
    built). Returns them as JSON values (for the run record and the row)."""
    if not options:
        return {}
    own = [key for key in options if str(key).split(".")[0] in OWN_KEYS]
    if own:
        raise BenchError(
            f"--cfg-options {own[0]}: the run's folder, weights and resuming are set by --out, --weights and "
            f"--resume/--no-resume"
        )
    code = [] if trust_config else options_naming_code(options, scopes)
    if code:
        raise BenchError(
            f"--cfg-options {' '.join(code)}: names code that mmengine would import or run (a type that is no "
            f"registered name, _target_, custom_imports, a scope); pass --trust-config if you trust it"
        )
    try:
        cfg.merge_from_dict(dict(options))
    except Exception as e:  # a key through a list, a type clash, ...
        raise BenchError(
            f"--cfg-options {' '.join(f'{k}={v}' for k, v in options.items())}: "
            f"cannot apply to {where} ({first_line(e)})"
        ) from None
    check_structure(cfg, f"{where} with --cfg-options")
    return json.loads(json.dumps(dict(options), sort_keys=True, default=str))


def hashed_config(cfg) -> dict:
    """The parts of ``cfg`` that define the protocol (``HASHED_KEYS``), paths and runtime-only
    loader settings taken out."""
    full = cfg.to_dict() if hasattr(cfg, "to_dict") else json.loads(json.dumps(cfg, default=str))
    d = {k: full[k] for k in HASHED_KEYS if full.get(k) is not None}
    backbone = d["model"].get("backbone", {})
    backbone.pop("checkpoint", None)
    backbone.pop("trust_checkpoint", None)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if loader in d:
            for k in _LOADER_RUNTIME_KEYS:
                d[loader].pop(k, None)
            d[loader].get("dataset", {}).pop("data_root", None)
    for ev in ("val_evaluator", "test_evaluator"):
        if isinstance(d.get(ev), dict):
            for k in _EVALUATOR_PATH_KEYS:
                d[ev].pop(k, None)
    return d


# --------------------------------------------------------------------------------------------------
# Schedule, batch, precision
# --------------------------------------------------------------------------------------------------
def scale_schedule(cfg, iters: int, where) -> None:
    """Train ``iters`` iterations with the config's schedule compressed (or stretched) to fit
    (``bench.core.workdir.scale_step``: boundaries keep their fraction of training, at least
    iteration 1; 0 and None, the ends, stay); validation and checkpoint intervals are capped."""
    iters = check_steps(iters, "--iters")
    if iters > MAX_STEPS:
        raise BenchError(f"--iters {iters}: at most {MAX_STEPS} (the paper's longest dense schedule is 184375)")
    old = int(cfg["train_cfg"]["max_iters"])
    cfg["train_cfg"]["max_iters"] = iters
    cfg["train_cfg"]["val_interval"] = min(int(cfg["train_cfg"].get("val_interval", iters)), iters)
    ck = (cfg.get("default_hooks") or {}).get("checkpoint")
    if ck is not None and "interval" in ck:
        ck["interval"] = min(int(ck["interval"]), iters)
    for i, s in enumerate(cfg["param_scheduler"]):
        if s.get("by_epoch", True):
            raise BenchError(f"{where}: key 'param_scheduler[{i}].by_epoch' must be False (iteration schedule)")
        for key in ("begin", "end"):
            if s.get(key):
                s[key] = scale_step(s[key], old, iters)
        if "milestones" in s:
            s["milestones"] = [scale_step(m, old, iters) for m in s["milestones"]]
    # A very short run can squeeze a phase (e.g. the decay after a 1-iteration warm-up) to nothing;
    # mmengine refuses a scheduler with begin == end, and an empty phase changes no lr anyway.
    cfg["param_scheduler"] = [s for s in cfg["param_scheduler"] if s.get("end") is None or s.get("begin", 0) < s["end"]]


def set_batch_and_schedule(
    cfg, where, *, iters: int | None, batch_size: int | None, ckpt_interval: int | None, world_size: int
) -> dict:
    """The total batch (config key ``total_batch_size``, else ``train_dataloader.batch_size``; the
    lr is for it) split over ``world_size`` processes; another ``batch_size`` scales the lr linearly
    (mmengine ``auto_scale_lr``) and, without ``iters``, the iterations to keep the epochs. Then the
    schedule (``scale_schedule``) and the checkpoint interval. Returns the batch facts."""
    base = int(cfg.get("total_batch_size", cfg["train_dataloader"]["batch_size"]))
    total = base if batch_size is None else int(batch_size)
    source = (
        "--batch-size" if batch_size is not None else f"{where}: key 'train_dataloader.batch_size' (the global batch)"
    )
    if total > MAX_GLOBAL_BATCH:
        raise BenchError(
            f"{source} {total}: at most {MAX_GLOBAL_BATCH} images per step (the paper's dense batches: 16, 64)"
        )
    if total < 1 or total % world_size:
        raise BenchError(f"{source} {total}: must be a positive multiple of the {world_size} processes")
    cfg["train_dataloader"]["batch_size"] = total // world_size
    cfg["auto_scale_lr"] = dict(enable=total != base, base_batch_size=base)
    if iters is None and total != base:
        iters = max(1, int(round(int(cfg["train_cfg"]["max_iters"]) * base / total)))
    if iters is not None:
        scale_schedule(cfg, iters, where)
    ck = cfg["default_hooks"]["checkpoint"]
    if ckpt_interval is not None:
        if (
            isinstance(ckpt_interval, bool)
            or int(ckpt_interval) != ckpt_interval
            or not 1 <= ckpt_interval <= MAX_STEPS
        ):
            raise BenchError(f"--ckpt-interval {ckpt_interval!r}: must be a positive integer")
        ck["interval"] = int(ckpt_interval)
    ck["interval"] = min(int(ck.get("interval", cfg["train_cfg"]["max_iters"])), int(cfg["train_cfg"]["max_iters"]))
    ck.update(by_epoch=False, save_last=True)
    return dict(total_batch_size=total, base_batch_size=base, max_iters=int(cfg["train_cfg"]["max_iters"]))


def set_lr_for_init(cfg, init: str) -> float:
    """``optim_wrapper.optimizer.lr`` = the config's ``lr_by_init[init]`` when it lists the backbone's
    initialisation (else its own lr); returns the lr (for the batch the config is written for)."""
    opt = cfg["optim_wrapper"]["optimizer"]
    opt["lr"] = float((cfg.get("lr_by_init") or {}).get(init, opt["lr"]))
    return opt["lr"]


def amp_fallback(cfg, cuda: bool) -> bool:
    """Without CUDA, mmengine's ``AmpOptimWrapper`` cannot run: train in fp32 with a plain
    ``OptimWrapper`` (its AMP-only arguments dropped). Returns whether it changed ``cfg``."""
    ow = cfg["optim_wrapper"]
    if cuda or ow.get("type") != "AmpOptimWrapper":
        return False
    ow["type"] = "OptimWrapper"
    for key in ("loss_scale", "dtype", "use_fsdp"):
        ow.pop(key, None)
    return True


def launch_rank() -> int:
    """This process's rank under torchrun / srun (0 without a launcher)."""
    return int((launch_env() or {"rank": 0})["rank"])


# --------------------------------------------------------------------------------------------------
# The results row
# --------------------------------------------------------------------------------------------------
def paper_deviations(facts: dict, paper: dict, *, ordered=("iterations", "batch")) -> list[str]:
    """The row's ``deviations`` from comparing a run's ``facts`` with the ``paper``'s values of the
    same keys (a key missing from ``facts`` or None is not compared): ``"iterations 30 < paper
    160000"`` for the ``ordered`` keys, ``"crop 64 != paper 512"`` for the others."""
    out = []
    for key, want in paper.items():
        got = facts.get(key)
        if got is None or got == want:
            continue
        op = ("<" if got < want else ">") if key in ordered else "!="
        out.append(f"{key} {_fmt(got)} {op} paper {_fmt(want)}")
    return out


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        v = v[0]  # a square crop: one number
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class DenseOutcome:
    """What a finished (or evaluated) mmengine run measured and ran with, beside its ``TransferRun``."""

    metrics: dict
    hashed: dict  # hashed_config of the effective config
    iterations: int  # the iteration the metrics were taken at
    start_iter: int  # where this call started training (after a resume)
    wall_time_s: float
    batch_size: int  # the global batch
    world_size: int
    config_name: str  # a named config or the file given
    config_file: str  # the file read
    cfg_options: dict
    checkpoint: str | None  # the backbone's pretrained weights as read
    extra: dict = field(default_factory=dict)  # the family's own fields
    deviations: list = field(default_factory=list)


def transfer_row(run: TransferRun, outcome: DenseOutcome, *, provenance: dict | None = None) -> dict:
    """The results row of one dense run: the facts object ``run`` plus what it measured. An
    evaluate-only run is marked ``extra['eval_only']`` with the weights it evaluated; ``provenance``
    defaults to what ``backbones.provenance`` derives from the checkpoint file."""
    init, arch = parse_name(run.backbone)
    if provenance is None:
        provenance = provenance_of(outcome.checkpoint)
    extra = dict(
        backbone_name=run.backbone,
        config=outcome.config_name,
        config_file=outcome.config_file,
        work_dir=str(run.work_dir),
        start_iter=int(outcome.start_iter or 0),
        batch_size=int(outcome.batch_size),
        world_size=int(outcome.world_size),
        cfg_options=outcome.cfg_options,
        **outcome.extra,
    )
    if run.eval_only:
        extra.update(eval_only=True, weights=str(Path(run.weights).resolve()))
    if run.select is not None:
        extra["select"] = run.select
    return make_row(
        task=run.task,
        protocol=run.protocol,
        init=init,
        backbone=arch,
        seed=int(run.seed),
        metrics=outcome.metrics,
        suite=run.suite,
        checkpoint=outcome.checkpoint,
        config=outcome.hashed,
        iterations=int(outcome.iterations),
        wall_time_s=outcome.wall_time_s,
        deviations=list(outcome.deviations),
        label=run.row_label,
        provenance=provenance,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------------
# Command line: the options bench det and bench seg share
# --------------------------------------------------------------------------------------------------
def add_dense_arguments(p: argparse.ArgumentParser, *, default_out: str) -> None:
    """The dense options (``--iters``, ``--ckpt-interval``, ``--channels-last``) and the options every
    training command shares (``bench.core.options.add_run_options``)."""
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help="training iterations (default: the config's); warm-up, lr steps and intervals keep "
        "their fraction of training",
    )
    p.add_argument(
        "--ckpt-interval", type=int, default=None, help="iterations between checkpoints (default: the config's)"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last (NHWC) convolutions in the pyramid and heads (default: the config's "
        "channels_last; unset = on for CUDA, off on CPU)",
    )
    add_run_options(
        p,
        default_out=default_out,
        config_help="; a value naming code (a type that is no registered name, _target_, custom_imports) "
        "needs --trust-config",
    )


__all__ = [
    "RUN_RECORD",
    "HASHED_KEYS",
    "CODE_KEYS",
    "check_config_trust",
    "read_config",
    "check_structure",
    "registered_type",
    "options_naming_code",
    "apply_cfg_options",
    "hashed_config",
    "scale_schedule",
    "set_batch_and_schedule",
    "set_lr_for_init",
    "amp_fallback",
    "launch_rank",
    "paper_deviations",
    "DenseOutcome",
    "transfer_row",
    "add_dense_arguments",
]
