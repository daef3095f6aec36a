"""ADE20K semantic segmentation with UperNet (MAE paper, Table 5) on mmsegmentation / mmengine.

    from tasks.segmentation.run import run_segmentation, seg_run
    row = run_segmentation(seg_run("mae_vit_base_patch16", "mae_pretrain_vit_base.pth", "data/ade",
                                   config="paper_vit_base", work_dir="work_dirs/seg_mae_b"))

or ``bench seg --backbone NAME --checkpoint PATH --data-root DIR [--config ...]``.

One run = one ``tasks.spec.TransferRun`` (built once by ``bench seg``, or by the suite runner), in
four steps: ``prepare`` (the config, ``tasks/segmentation/config.py``; the data checked with
``validate_ade20k``; the run record: checkpoint sha256, data identity, label, effective config),
``train`` (the shared mmengine runner ``tasks.dense.mm_runner.run_dense``: settings guard, resume
from the newest readable checkpoint, ``--no-resume`` moving old checkpoints aside, a stop agreed
by all ranks on a non-finite loss), ``evaluate`` (the last validation after the final iteration:
mIoU / aAcc / mAcc in percent, per-image areas) and ``row`` (``tasks.dense.runner.transfer_row``).
``--eval-only --weights FILE`` skips training: the trained model in FILE (ours, or mmseg's own
checkpoint format) is evaluated and the same row is written, marked ``extra['eval_only']``.

The config saved in the work dir carries ``custom_imports``, so mmseg's own ``tools/test.py``
rebuilds the model from it. The data is never downloaded: ``data_root`` is ADEChallengeData2016
(or its parent); ``make_ade20k_dataset`` writes small sets in that layout for tests and demos.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from backbones.provenance import provenance_of
from bench.core.distributed import launch_world_size
from bench.core.errors import BenchError
from bench.core.options import default_out, join_launcher, run_fields
from bench.core.results import ResultsStore, check_outputs, config_hash, sha256_file
from tasks.dense.mm_runner import run_dense
from tasks.dense.runner import (
    RUN_RECORD,
    DenseOutcome,
    amp_fallback,
    hashed_config,
    launch_rank,
    paper_deviations,
    transfer_row,
)
from tasks.segmentation.ade_data import data_identity, validate_ade20k
from tasks.segmentation.config import CONFIGS, HELDOUT_SEED, config_of, resolve_config, set_data
from tasks.segmentation.per_image import write_per_example
from tasks.spec import TransferRun

# Labels read per split to check their values (all of them are header-checked).
VALUE_SAMPLE = 50
# The paper's protocol (Table 5; paper_vit_base.py has the sources) and ADE20K's split sizes, for the
# rows' deviations. The paper fine-tunes 100 epochs (20210 images at batch 16: 126313 iterations);
# mmseg's BEiT schedule, which the paper configs keep, runs 160k.
ADE20K_IMAGES = {"training": 20210, "validation": 2000}
PAPER = {"iterations": math.ceil(100 * ADE20K_IMAGES["training"] / 16), "batch": 16, "crop": (512, 512)}
PER_EXAMPLE = "per_example.npz"  # in the work dir: per-image intersect / union (tasks/segmentation/per_image.py)
TASK, PROTOCOL = "ade20k", "upernet"


@dataclass
class SegPlan:
    """What ``prepare`` settled before anything is built."""

    cfg: object  # the mmengine Config
    config_name: str
    config_file: str
    num_images: dict  # split -> images
    record: dict  # the run record (settings guard)
    hashed: dict
    fp32_fallback: bool


def seg_run(backbone: str, checkpoint, data_root, *, work_dir, **fields) -> TransferRun:
    """A ``TransferRun`` for ADE20K UperNet from Python (``bench seg`` builds it from its options):
    ``fields`` are TransferRun's, plus the family options ``crop_size``, ``channels_last``,
    ``ckpt_interval``."""
    options = {k: fields.pop(k) for k in ("crop_size", "channels_last", "ckpt_interval") if k in fields}
    return TransferRun(
        task=TASK,
        protocol=PROTOCOL,
        backbone=backbone,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        data_root=Path(data_root),
        work_dir=Path(work_dir),
        seed=int(fields.pop("seed", 0)),
        suite=fields.pop("suite", "adhoc"),
        config=fields.pop("config", "smoke"),
        options={k: v for k, v in options.items() if v is not None},
        **fields,
    )


# --------------------------------------------------------------------------------------------
# prepare -> train -> evaluate -> row
# --------------------------------------------------------------------------------------------
def prepare(run: TransferRun) -> SegPlan:
    """The config and the run record; the data checked (DataError naming the first file at fault)."""
    cfg = config_of(run)
    summaries = {split: validate_ade20k(run.data_root, split, value_sample=VALUE_SAMPLE) for split in ADE20K_IMAGES}
    set_data(cfg, summaries["validation"].data_root, run.select)  # data_root may be the parent folder
    if run.amp and cfg.optim_wrapper.get("type") == "OptimWrapper":
        cfg.optim_wrapper.update(type="AmpOptimWrapper", dtype="float16")  # fp16 (mmcv ops have no bf16)
    fp32_fallback = amp_fallback(cfg, torch.cuda.is_available())
    hashed = hashed_config(cfg)
    checkpoint = cfg.model.backbone.checkpoint
    record = {
        "backbone": run.backbone,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "label": run.row_label,
        "data": data_identity(summaries["validation"].data_root),
        "seed": int(run.seed),
        "iterations": int(cfg.train_cfg.max_iters),
        "batch_size": int(cfg.get("total_batch_size", cfg.auto_scale_lr.base_batch_size)),
        "crop_size": list(cfg.crop_size),
        "cfg_options": cfg.cfg_options,
        "select": run.select,
        "config_hash": config_hash(hashed),
    }
    # per-image areas for per_example.npz: IoUMetric with its areas kept, the same metrics (after the
    # config hash, which names the protocol's metric)
    for key in ("val_evaluator", "test_evaluator"):
        if cfg.get(key, {}).get("type") == "IoUMetric":
            cfg[key].type = "PerImageIoUMetric"
    path, name = resolve_config(run.config or "smoke")
    return SegPlan(cfg, name, str(path), {k: v.num_images for k, v in summaries.items()}, record, hashed, fp32_fallback)


def register_mmseg() -> None:
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)


def _last_validation_hook():
    from mmengine.hooks import Hook

    class LastValidation(Hook):
        """The metrics of the last validation and the iteration they were taken at."""

        priority = "LOWEST"

        def __init__(self):
            self.metrics, self.metrics_iter = None, None

        def after_val_epoch(self, runner, metrics=None):
            self.metrics, self.metrics_iter = dict(metrics or {}), runner.iter

    return LastValidation()


def train(run: TransferRun, plan: SegPlan):
    """Train (or, evaluate-only, load ``run.weights``) and evaluate: ``(runner, metrics, wall)``. A
    resumed finished run trains nothing and evaluates the restored model."""
    last = _last_validation_hook()

    def evaluate(runner):
        if run.eval_only or last.metrics_iter != runner.iter:
            last.metrics, last.metrics_iter = dict(runner.val()), runner.iter
        return last.metrics

    return run_dense(
        plan.cfg,
        name="seg",
        record=plan.record,
        resume=run.resume,
        register=register_mmseg,
        evaluate=evaluate,
        hooks=[last],
        weights=run.weights if run.eval_only else None,
    )


def evaluate(run: TransferRun, plan: SegPlan, runner, metrics: dict, wall: float) -> DenseOutcome:
    """What the run measured: IoUMetric's percent (rounded to its 2 decimals), the per-image areas."""
    metrics = {k: round(float(metrics[k]), 2) for k in ("mIoU", "aAcc", "mAcc") if k in metrics}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise BenchError(f"work dir {plan.cfg.work_dir}: validation gave non-finite metrics {metrics}")
    crop = tuple(plan.cfg.crop_size)
    iterations = int(runner.weights_iter if run.eval_only else runner.iter)
    extra = {
        "img_size": crop[0],
        "crop_size": list(crop),
        "log_dir": str(runner.log_dir),
        "log_file": runner.log_file,
        "fp32_fallback": plan.fp32_fallback,
        "data": plan.record["data"],
    }
    per_image = getattr(runner.val_evaluator.metrics[0], "per_image", None)
    if per_image:
        extra["per_example"] = str(write_per_example(Path(plan.cfg.work_dir) / PER_EXAMPLE, per_image))
    deviations = segmentation_deviations(
        config_name=plan.config_name,
        iterations=iterations,
        batch_size=plan.record["batch_size"],
        crop=crop,
        amp=plan.cfg.optim_wrapper.get("type") == "AmpOptimWrapper",
        cfg_options=plan.cfg.cfg_options,
        num_images=plan.num_images,
        select=run.select,
    )
    return DenseOutcome(
        metrics=metrics,
        hashed=plan.hashed,
        iterations=iterations,
        start_iter=0 if run.eval_only else runner.run_watch.start_iter,
        wall_time_s=wall,
        batch_size=plan.record["batch_size"],
        world_size=launch_world_size(),
        config_name=plan.config_name,
        config_file=plan.config_file,
        cfg_options=plan.cfg.cfg_options,
        checkpoint=plan.cfg.model.backbone.checkpoint,
        extra=extra,
        deviations=deviations,
    )


def run_segmentation(run: TransferRun) -> dict | None:
    """Fine-tune ``run.backbone`` with UperNet on the ADE20K folder ``run.data_root`` (or evaluate
    ``run.weights`` with ``run.eval_only``); return the results row (appended to ``run.results``
    when set); None on ranks other than 0 under torchrun / srun. ``wall_time_s`` is this call's time
    (after a resume, only the part trained now; ``extra`` has ``start_iter``)."""
    plan = prepare(run)
    runner, metrics, wall = train(run, plan)
    if launch_rank() != 0:  # under torchrun / srun: rank 0 alone reports and stores the row
        return None
    outcome = evaluate(run, plan, runner, metrics, wall)
    row = transfer_row(run, outcome, provenance=provenance_of(outcome.checkpoint, plan.record["checkpoint_sha256"]))
    if run.results is not None:
        ResultsStore(run.results).append(row)
    return row


def load_config(config, *, backbone: str, data_root, work_dir, checkpoint=None, **fields):
    """The mmengine config of a run given by keywords (``bench perf`` times the task's own model)."""
    return config_of(seg_run(backbone, checkpoint, data_root, work_dir=work_dir, config=config, **fields))


def segmentation_deviations(
    *,
    config_name: str,
    iterations: int,
    batch_size: int,
    crop,
    amp: bool,
    cfg_options: dict | None = None,
    num_images: dict | None = None,
    select: str | None = None,
) -> list[str]:
    """How an ADE20K run departs from the paper's protocol (the row's ``deviations``)."""
    out = []
    if config_name == "smoke":
        out.append("smoke config (tiny head, 64 px)")
    elif config_name not in CONFIGS:
        out.append(f"config {config_name}")
    out += paper_deviations({"iterations": iterations, "batch": batch_size, "crop": tuple(crop)}, PAPER)
    if select == "heldout":
        out.append(f"metrics on a held-out part of training (seed {HELDOUT_SEED}), not validation")
    for split, n in (num_images or {}).items():
        if n != ADE20K_IMAGES[split]:
            out.append(f"{split} images {n} != ADE20K {ADE20K_IMAGES[split]}")
    if not amp:
        out.append("fp32 instead of AMP")  # the paper's configs train with mixed precision
    out += [f"cfg-options {k}={v}" for k, v in (cfg_options or {}).items()]
    return out


# --------------------------------------------------------------------------------------------
# Command line: bench seg
# --------------------------------------------------------------------------------------------


def run_from_args(a: argparse.Namespace) -> TransferRun:
    """The run's facts object, built once from ``bench seg``'s options."""
    fields = run_fields(a)
    name = a.label or a.backbone
    work_dir = a.work_dir or default_out("seg", TASK, PROTOCOL, name, fields["seed"])
    return seg_run(
        a.backbone,
        a.checkpoint,
        a.data_root,
        work_dir=work_dir,
        config=a.config,
        iters=a.iters,
        batch_size=a.batch_size,
        crop_size=a.crop_size,
        channels_last=a.channels_last,
        ckpt_interval=a.ckpt_interval,
        **fields,
    )


def seg_main(args) -> int:
    run = run_from_args(args)
    check_outputs(run.work_dir, run.results)
    if args.launcher not in (None, "none"):
        join_launcher(args.launcher, args.device)
    row = run_segmentation(run)
    if row is None:  # not rank 0
        return 0
    m = row["metrics"]
    where = f"appended to {run.results}" if run.results else "not stored (no --results)"
    what = "evaluated" if run.eval_only else f"{row['iterations']} iterations"
    print(
        f"ADE20K UperNet {row['label']} {row['backbone']} seed {row['seed']}: mIoU {m['mIoU']:.2f}  "
        f"aAcc {m['aAcc']:.2f}  ({what}, {row['wall_time_s']:.0f} s; {where}; work dir {run.work_dir})"
    )
    return 0


__all__ = [
    "CONFIGS",
    "RUN_RECORD",
    "PAPER",
    "PER_EXAMPLE",
    "seg_main",
    "seg_run",
    "run_from_args",
    "prepare",
    "train",
    "evaluate",
    "run_segmentation",
    "resolve_config",
    "load_config",
    "config_of",
    "hashed_config",
    "set_data",
    "segmentation_deviations",
]
