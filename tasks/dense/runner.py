"""One runner for the dense tasks (``bench det``, ``bench seg``): everything the two families share.

The family modules (``tasks/detection/run.py``, ``tasks/segmentation/run.py``) keep what really
differs: their data checks, named configs and variants, metrics and row extras. Here:

* **config reading**: the trust gate (a config outside the package is Python that runs when read:
  refused without ``trust_config``), one-line read errors, the structural checks both need, and
  ``--cfg-options`` (mmengine's ``DictAction`` pairs, applied after our edits and recorded);
* **lr**: the config's ``lr_by_init`` entry for the backbone's initialisation;
* **schedule**: one rule for scaling an iteration schedule to ``--iters`` (warm-up, milestones and
  intervals keep their fraction of training), the total batch over the processes (lr scaled
  linearly by mmengine's ``auto_scale_lr``), the checkpoint interval;
* **AMP fallback**: ``AmpOptimWrapper`` becomes a plain fp32 ``OptimWrapper`` without CUDA;
* **run record**: ``bench.core.run_record``'s one resume guard over the settings a run is defined
  by, the settings a user sets checked (and named) before the config hash;
* **resume**: the newest *readable* checkpoint of the folder (``resume_candidates``; a truncated
  file, a ``last_checkpoint`` naming nothing or a file elsewhere, a refused pickle: the one before);
* **the run** (``run_dense``): build, train, evaluate with mmengine's output in the run's log file
  and a line or two on the terminal; a non-finite loss stops training; rank 0 alone writes;
* **the row** (``dense_row``).

Only ``run_dense`` needs mmengine (imported when called); the rest works on plain dicts too, so
another engine (detectron2) can share the record, resume guard, schedule rules and row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from bench.core.errors import BenchError, first_line

RUN_RECORD = "bench_dense_run.json"  # in the work dir: the settings its checkpoints belong to
CHECKPOINT_PATTERN = re.compile(r"^iter_(\d+)\.pth$")
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
_LOADER_RUNTIME_KEYS = ("num_workers", "persistent_workers", "pin_memory", "prefetch_factor")
_EVALUATOR_PATH_KEYS = ("ann_file", "outfile", "outfile_prefix")
# Settings a user sets by option; the run record holds them, and a resume with other values is refused
# naming them (before the config hash, which changes with most of them too).
EXPLICIT_KEYS = ("backbone", "checkpoint", "seed", "iterations", "batch_size", "variant", "crop_size", "cfg_options")


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


def apply_cfg_options(cfg, options: dict | None, where) -> dict:
    """Merge ``--cfg-options`` (``{'a.b': value}``, mmengine's ``DictAction``) into ``cfg``, after our
    own edits: they win. Returns them as JSON values (for the run record and the row)."""
    if not options:
        return {}
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
    """Train ``iters`` iterations with the config's schedule compressed (or stretched) to fit:
    scheduler boundaries and milestones keep their fraction of training (at least iteration 1;
    0 and None, the ends of training, stay), validation and checkpoint intervals are capped."""
    if isinstance(iters, bool) or int(iters) != iters or iters < 1:
        raise BenchError(f"--iters {iters!r}: must be a positive integer")
    iters = int(iters)
    old = int(cfg["train_cfg"]["max_iters"])
    cfg["train_cfg"]["max_iters"] = iters
    cfg["train_cfg"]["val_interval"] = min(int(cfg["train_cfg"].get("val_interval", iters)), iters)
    ck = (cfg.get("default_hooks") or {}).get("checkpoint")
    if ck is not None and "interval" in ck:
        ck["interval"] = min(int(ck["interval"]), iters)
    f = iters / old

    def scaled(value):
        return iters if value >= old else max(1, int(round(value * f)))

    for i, s in enumerate(cfg["param_scheduler"]):
        if s.get("by_epoch", True):
            raise BenchError(f"{where}: key 'param_scheduler[{i}].by_epoch' must be False (iteration schedule)")
        for key in ("begin", "end"):
            if s.get(key):
                s[key] = scaled(s[key])
        if "milestones" in s:
            s["milestones"] = [scaled(m) for m in s["milestones"]]
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
        if isinstance(ckpt_interval, bool) or int(ckpt_interval) != ckpt_interval or ckpt_interval < 1:
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
    from bench.core.distributed import launch_env

    return int((launch_env() or {"rank": 0})["rank"])


# --------------------------------------------------------------------------------------------------
# Work dir: run record, checkpoints
# --------------------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def resume_candidates(work_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of ``work_dir`` to try, best first: the file ``last_checkpoint`` names (by
    its file name, looked up in ``work_dir`` itself, so a copied or moved folder resumes from its
    own files), then every ``iter_N.pth`` newest first."""
    work_dir = Path(work_dir)
    found = sorted(
        (p for p in work_dir.glob("iter_*.pth") if checkpoint_step(p) is not None), key=checkpoint_step, reverse=True
    )
    try:
        named = (work_dir / "last_checkpoint").read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    if named and (work_dir / Path(named).name).is_file():
        first = work_dir / Path(named).name
        found = [first] + [p for p in found if p != first]
    return found


def has_checkpoints(work_dir: Path) -> bool:
    return bool(resume_candidates(work_dir))


def clear_checkpoints(work_dir: Path) -> None:
    """``--no-resume``: the folder's checkpoints (and the pointer to them) go, so that a later resume
    cannot continue the run this one replaces."""
    for p in resume_candidates(work_dir):
        p.unlink(missing_ok=True)
    (Path(work_dir) / "last_checkpoint").unlink(missing_ok=True)


def check_record(work_dir: Path, record: dict, resume: bool) -> None:
    """The resume guard (``bench.core.run_record``): a folder whose checkpoints belong to a run with
    other settings is refused, naming the first differing option before the config hash."""
    from bench.core.run_record import check_run_record, read_run_record

    if not resume or not has_checkpoints(work_dir):
        return  # nothing to continue: the record is rewritten
    path = Path(work_dir) / RUN_RECORD
    hint = "use the same settings, another --out folder, or --no-resume"
    old = read_run_record(path)
    if old is None:
        raise BenchError(
            f"{work_dir}: holds checkpoints but no run record ({RUN_RECORD}), so what they "
            f"belong to is unknown; use another --out folder or --no-resume"
        )
    check_run_record(path, {**old, **{k: v for k, v in record.items() if k in EXPLICIT_KEYS}}, hint=hint)
    check_run_record(path, record, hint=hint)


# --------------------------------------------------------------------------------------------------
# The run (mmengine)
# --------------------------------------------------------------------------------------------------
def run_dense(
    cfg,
    *,
    name: str,
    record: dict,
    resume: bool,
    register: Callable[[], None],
    evaluate: Callable[[Any], dict],
    hooks=(),
) -> tuple[Any, dict, float]:
    """Build the runner of ``cfg`` (``tasks.dense.mm_runner.DenseRunner``; ``name``: 'det' / 'seg'), train (resuming from the
    newest readable checkpoint with ``resume``), then ``evaluate(runner)``. Returns ``(runner,
    metrics, wall seconds)``; ``runner.run_watch.start_iter`` is where training started.

    Before anything is written the resume guard checks ``record`` against the folder's; after the
    runner is built rank 0 writes it. mmengine's output (environment, config, hooks, progress,
    Python warnings) goes to the log file in the work dir; the terminal gets the log file's name and
    errors. A user error while building (e.g. a checkpoint of another architecture) removes a work
    dir this call created."""
    work = Path(cfg.work_dir)
    check_record(work, record, resume)
    cfg.resume, cfg.load_from = bool(resume), None
    cfg.experiment_name = f"{name}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"  # the logger's name
    main = launch_rank() == 0
    created = not work.exists()
    if main and not created:
        for tmp in work.glob(".iter_*.pth.tmp"):  # a save killed half-way
            tmp.unlink(missing_ok=True)
        if not resume:
            clear_checkpoints(work)
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        runner = None
        try:
            register()  # mmseg / mmdet: their import-time warnings are caught too
            from bench.core.run_record import write_run_record
            from tasks.dense.mm_runner import DenseRunner, RunWatch, enable_mmengine_checkpoints

            enable_mmengine_checkpoints()  # mmengine's own checkpoints under torch's weights_only loading
            try:
                runner = DenseRunner.from_cfg(cfg)
            except BenchError:
                if created and main:  # a user error: leave nothing behind
                    shutil.rmtree(work, ignore_errors=True)
                raise
            if main:
                write_run_record(work / RUN_RECORD, record)
            runner.run_watch = RunWatch()
            runner.register_hook(runner.run_watch)
            for hook in hooks:
                runner.register_hook(hook)
            runner.announce()
            runner.train()
            metrics = evaluate(runner)
        finally:
            if runner is not None:
                runner.log_warnings(caught)
    return runner, metrics, time.time() - t0


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


def dense_row(
    *,
    task: str,
    protocol: str,
    init: str,
    arch: str,
    backbone: str,
    seed: int,
    metrics: dict,
    suite: str,
    checkpoint,
    hashed: dict,
    iterations: int,
    wall_time_s: float,
    config_name: str,
    work_dir,
    start_iter: int,
    batch_size: int,
    world_size: int,
    cfg_options: dict,
    extra: dict | None = None,
    deviations=(),
) -> dict:
    """The results row of a dense run; ``extra``: the family's own fields; ``deviations``: how the
    run departs from the paper's protocol (e.g. ``paper_deviations``)."""
    from bench.core.results import make_row

    return make_row(
        task=task,
        protocol=protocol,
        init=init,
        backbone=arch,
        seed=int(seed),
        metrics=metrics,
        suite=suite,
        checkpoint=checkpoint,
        config=hashed,
        iterations=int(iterations),
        wall_time_s=wall_time_s,
        deviations=list(deviations),
        extra=dict(
            backbone_name=backbone,
            config=config_name,
            work_dir=str(work_dir),
            start_iter=int(start_iter or 0),
            batch_size=int(batch_size),
            world_size=int(world_size),
            cfg_options=cfg_options,
            **(extra or {}),
        ),
    )


# --------------------------------------------------------------------------------------------------
# Command line: the options bench det and bench seg share
# --------------------------------------------------------------------------------------------------
def add_dense_arguments(p: argparse.ArgumentParser, *, default_out: str) -> None:
    from mmengine.config import DictAction

    class CfgOptions(DictAction):
        """mmengine's KEY=VALUE parsing; a malformed pair is an argparse error, not a traceback."""

        def __call__(self, parser, namespace, values, option_string=None):
            for kv in values:
                key, sep, _ = kv.partition("=")
                if not sep or not key.strip():
                    raise argparse.ArgumentError(self, f"expects KEY=VALUE pairs, got {kv!r}")
            super().__call__(parser, namespace, values, option_string)

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
    p.add_argument("--seed", type=int, default=0, help="random seed of the run (weights of new layers, data order)")
    p.add_argument(
        "--out",
        "--work-dir",
        dest="work_dir",
        default=None,
        metavar="DIR",
        help=f"the run's folder: checkpoints, run record, log file (default {default_out})",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue the run in --out from its newest readable checkpoint (default; a truncated "
        "or unreadable one is skipped for the one before it; a folder holding a run with other "
        "settings is refused). --no-resume deletes the folder's checkpoints and starts over",
    )
    p.add_argument("--results", default=None, help="results store (folder or .jsonl) to append the row to")
    p.add_argument("--suite", default="adhoc", help="suite name recorded in the row")
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow a backbone checkpoint that needs arbitrary unpickling"
    )
    p.add_argument(
        "--trust-config",
        action="store_true",
        help="allow a --config file from outside the package (mmengine runs it as Python when reading it)",
    )
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=CfgOptions,
        default=None,
        metavar="KEY=VALUE",
        help="override config keys (mmengine syntax, e.g. optim_wrapper.optimizer.lr=2e-4), applied "
        "after bench's own settings; recorded in the run record and the row",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last (NHWC) convolutions in the pyramid and heads (default: the config's "
        "channels_last; unset = on for CUDA, off on CPU)",
    )


__all__ = [
    "RUN_RECORD",
    "HASHED_KEYS",
    "check_config_trust",
    "read_config",
    "check_structure",
    "apply_cfg_options",
    "hashed_config",
    "scale_schedule",
    "set_batch_and_schedule",
    "set_lr_for_init",
    "amp_fallback",
    "launch_rank",
    "resume_candidates",
    "clear_checkpoints",
    "check_record",
    "run_dense",
    "paper_deviations",
    "dense_row",
    "add_dense_arguments",
]
