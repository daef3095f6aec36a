"""ADE20K semantic segmentation with UperNet (MAE paper, Table 5) on mmsegmentation / mmengine.

    from tasks.segmentation.run import run_segmentation
    row = run_segmentation("mae_vit_base_patch16", "mae_pretrain_vit_base.pth", "data/ade",
                           config="paper_vit_base", work_dir="work_dirs/seg_mae_b", results="results/main")

or ``bench seg --backbone NAME --checkpoint PATH --data-root DIR [--config ...]``.

One run = one mmengine ``Runner`` built from a config in ``tasks/segmentation/configs/``
(``smoke``, ``paper_vit_base``, ``paper_vit_large``) or a config file of your own, with the
backbone, data root, work dir, seed and (optionally) iterations and crop size filled in here.
mmseg does the rest: ``EncoderDecoder`` with our ``RegistryViT`` backbone + ``UPerHead`` +
auxiliary ``FCNHead``, ``ADE20KDataset`` and its standard pipeline, ``IterBasedTrainLoop``,
``CheckpointHook``, ``IoUMetric``. The shared dense runner (``tasks/dense/runner.py``) does the
rest: the run record in ``work_dir`` (resuming with another backbone / checkpoint / seed /
iterations / config is refused rather than silently mixed: mmengine would restore the old
learning-rate schedule), resume from the newest readable checkpoint, atomic saves, a stop on a
non-finite loss, mmengine's output in the work dir's log file. When training ends, one row goes to
the results store: task 'ade20k', protocol 'upernet', mIoU / aAcc / mAcc in percent from the last
validation (after the final iteration). A config file outside ``tasks/segmentation/configs`` is
read only with ``trust_config`` (mmengine runs it as Python).

The data is never downloaded: ``data_root`` is ADEChallengeData2016 (or its parent), checked with
``validate_ade20k`` before anything is built; ``make_ade20k_dataset`` writes small sets in that
layout for tests and demos.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from bench.core.errors import BenchError, CheckpointError
from bench.core.results import check_outputs
from tasks.dense.runner import (
    RUN_RECORD,
    add_dense_arguments,
    amp_fallback,
    apply_cfg_options,
    dense_row,
    hashed_config,
    launch_rank,
    paper_deviations,
    read_config,
    run_dense,
    set_batch_and_schedule,
    set_lr_for_init,
)
from tasks.segmentation.ade_data import validate_ade20k

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIGS = {
    "smoke": CONFIG_DIR / "smoke.py",
    "paper_vit_base": CONFIG_DIR / "paper_vit_base.py",
    "paper_vit_large": CONFIG_DIR / "paper_vit_large.py",
}
# Labels read per split to check their values (all of them are header-checked).
VALUE_SAMPLE = 50
# The paper's protocol (Table 5; paper_vit_base.py has the sources) and ADE20K's split sizes, for the
# rows' deviations.
PAPER = {"iterations": 160000, "batch": 16, "crop": (512, 512)}
ADE20K_IMAGES = {"training": 20210, "validation": 2000}
PER_EXAMPLE = "per_example.npz"  # in the work dir: per-image intersect / union (tasks/segmentation/per_image.py)


# --------------------------------------------------------------------------------------------
# The config of one run
# --------------------------------------------------------------------------------------------


def resolve_config(config: str | os.PathLike) -> tuple[Path, str]:
    """(config file, its display name) for ``config``: a name of ``CONFIGS`` or a config file."""
    if str(config) in CONFIGS:
        return CONFIGS[str(config)], str(config)
    path = Path(config)
    if path.suffix == ".py" and path.is_file():
        return path, str(path)
    raise BenchError(f"config {str(config)!r}: not one of {', '.join(CONFIGS)} nor an existing .py config file")


def _crop_pair(crop, where: str) -> tuple[int, int]:
    if isinstance(crop, int):
        crop = (crop, crop)
    try:
        h, w = (int(c) for c in crop)
    except (TypeError, ValueError):
        raise BenchError(f"{where}: crop size must be an int or (height, width), got {crop!r}") from None
    if h <= 0 or w <= 0:
        raise BenchError(f"{where}: crop size must be positive, got {h}x{w}")
    return h, w


def _apply_crop_size(cfg, crop: tuple[int, int]) -> None:
    """For a crop other than the config's, set every crop-dependent value the way mmseg's configs
    tie them to the crop: the padded training size, the backbone's position-embedding grid, RandomCrop, the resize scale
    (2048, 512) for 512 -> (4 crop, crop), and the sliding-window test (stride 2/3 crop)."""
    h, w = crop
    cfg.crop_size = crop
    cfg.model.data_preprocessor.size = crop
    cfg.model.backbone.img_size = crop
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for t in cfg[loader].dataset.pipeline if loader in cfg else ():
            if t["type"] == "RandomCrop":
                t["crop_size"] = crop
            elif t["type"] in ("RandomResize", "Resize") and "scale" in t:
                t["scale"] = (4 * w, h)
    if cfg.model.test_cfg.get("mode") == "slide":
        cfg.model.test_cfg.crop_size = crop
        cfg.model.test_cfg.stride = (2 * h // 3, 2 * w // 3)


def load_config(
    config,
    *,
    backbone: str,
    checkpoint=None,
    data_root,
    work_dir,
    seed: int = 0,
    iters: int | None = None,
    crop_size=None,
    resume: bool = True,
    trust_checkpoint: bool = False,
    channels_last: bool | None = None,
    ckpt_interval: int | None = None,
    trust_config: bool = False,
    cfg_options: dict | None = None,
):
    """The mmengine ``Config`` of one run, every override applied and checked (``cfg_options``
    last); builds nothing.

    ``channels_last`` (None: the config's key ``channels_last``, whose None means on for CUDA, off
    on CPU) sets the conv layout (``tasks/dense/memory_format.py``). ``trust_config``: read a config
    file from outside the package.

    Raises BenchError for an unknown config / backbone, a config for another architecture, a crop
    that is not a multiple of the patch size, or a non-positive iteration count."""
    from backbones.registry import INITS, parse_name
    from backbones.vit import arch_config
    from bench.core.distributed import launch_world_size
    from tasks.dense.memory_format import resolve_channels_last

    path, _ = resolve_config(config)
    init, arch = parse_name(backbone)  # BenchError with close names for an unknown backbone
    spec = arch_config(arch)
    cfg = read_config(
        path,
        shipped_dir=CONFIG_DIR,
        trust_config=trust_config,
        required=("model", "train_dataloader", "val_dataloader", "train_cfg", "param_scheduler", "optim_wrapper"),
    )
    if cfg.get("arch") not in (None, arch):
        raise BenchError(
            f"config {path}: key 'arch' is {cfg.arch!r}, backbone {backbone!r} is {arch!r} "
            f"(use a config for {arch}, or smoke)"
        )
    if INITS[init].needs_checkpoint and checkpoint is None:
        raise BenchError(
            f"backbone {backbone!r} needs --checkpoint (official files: {INITS[init].official_files or 'see README'})"
        )
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        if not checkpoint.is_file():
            raise CheckpointError(f"checkpoint not found: {checkpoint}")
        checkpoint = str(checkpoint)

    where = "--crop-size" if crop_size is not None else f"config {path}: key 'crop_size'"
    crop = _crop_pair(crop_size if crop_size is not None else cfg.get("crop_size"), where)
    patch = spec["patch_size"]
    if crop[0] % patch or crop[1] % patch:
        raise BenchError(f"{where}: crop {crop[0]}x{crop[1]} is not a multiple of the patch size {patch} of {backbone}")

    # backbone and the heads' input channels
    bb = cfg.model.backbone
    bb.name, bb.checkpoint, bb.trust_checkpoint = backbone, checkpoint, bool(trust_checkpoint)
    channels = bb.get("out_channels", 256) if bb.get("variant", "fpn") == "simple" else spec["embed_dim"]
    cfg.model.decode_head.in_channels = [channels] * len(cfg.model.decode_head.in_channels)
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.in_channels = channels
    if crop_size is not None:
        _apply_crop_size(cfg, crop)
    set_lr_for_init(cfg, init)
    if channels_last is not None:
        cfg.channels_last = bool(channels_last)
    resolve_channels_last(cfg.get("channels_last"), "cpu")  # a bad config value: BenchError now

    # the config's batch is the global batch (the paper's 16), split over the processes of a
    # torchrun / srun (DDP through mmengine's Runner, process group from bench.core.distributed)
    world = launch_world_size()
    set_batch_and_schedule(
        cfg, f"config {path}", iters=iters, batch_size=None, ckpt_interval=ckpt_interval, world_size=world
    )
    cfg.launcher = "pytorch" if world > 1 else "none"

    # data, work dir, seed, resume
    set_data_root(cfg, data_root)
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.resume = bool(resume)
    cfg.load_from = None
    cfg.cfg_options = apply_cfg_options(cfg, cfg_options, f"config {path}")
    return cfg


def set_data_root(cfg, data_root) -> None:
    data_root = str(Path(data_root).resolve())
    cfg.data_root = data_root
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if loader in cfg:
            cfg[loader].dataset.data_root = data_root


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


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


def run_segmentation(
    backbone: str,
    checkpoint,
    data_root,
    *,
    config="smoke",
    seed: int = 0,
    iters: int | None = None,
    work_dir,
    resume: bool = True,
    results=None,
    suite: str = "adhoc",
    trust_checkpoint: bool = False,
    crop_size=None,
    channels_last: bool | None = None,
    ckpt_interval: int | None = None,
    trust_config: bool = False,
    cfg_options: dict | None = None,
) -> dict | None:
    """Fine-tune ``backbone`` (a registry name, weights from ``checkpoint``) with UperNet on the
    ADE20K folder ``data_root``; return the results row (and append it to the store ``results``,
    a folder or ``.jsonl`` file, when given); None on ranks other than 0 under torchrun / srun.
    See the module docstring.

    ``wall_time_s`` is this call's time (after a resume, only the part trained now; ``extra``
    has ``start_iter``). Resuming a finished run trains nothing and evaluates the restored model."""
    import torch

    from backbones.registry import parse_name
    from bench.core.distributed import launch_world_size
    from bench.core.results import ResultsStore, config_hash

    cfg = load_config(
        config,
        backbone=backbone,
        checkpoint=checkpoint,
        data_root=data_root,
        work_dir=work_dir,
        seed=seed,
        iters=iters,
        crop_size=crop_size,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
        channels_last=channels_last,
        ckpt_interval=ckpt_interval,
        trust_config=trust_config,
        cfg_options=cfg_options,
    )
    summaries = {
        split: validate_ade20k(data_root, split, value_sample=VALUE_SAMPLE)  # DataError naming the
        for split in ("training", "validation")
    }  # first file at fault
    summary = summaries["validation"]
    set_data_root(cfg, summary.data_root)  # data_root may be the parent of ADEChallengeData2016
    init, arch = parse_name(backbone)
    _, config_name = resolve_config(config)
    crop = tuple(cfg.crop_size)
    fp32_fallback = amp_fallback(cfg, torch.cuda.is_available())
    hashed = hashed_config(cfg)
    iterations = int(cfg.train_cfg.max_iters)
    batch = int(cfg.get("total_batch_size", cfg.auto_scale_lr.base_batch_size))
    record = {
        "backbone": backbone,
        "checkpoint": cfg.model.backbone.checkpoint,
        "seed": int(seed),
        "iterations": iterations,
        "batch_size": batch,
        "crop_size": list(crop),
        "cfg_options": cfg.cfg_options,
        "config_hash": config_hash(hashed),
    }

    # per-image areas for per_example.npz: IoUMetric with its areas kept, the same metrics (after the
    # config hash, which names the protocol's metric)
    if cfg.val_evaluator.get("type") == "IoUMetric":
        cfg.val_evaluator.type = "PerImageIoUMetric"

    def register():
        from mmseg.utils import register_all_modules

        import tasks.dense.mm_backbone  # noqa: F401  registers RegistryViT + ViTLayerDecayOptimizerConstructor
        import tasks.segmentation.per_image  # noqa: F401  registers PerImageIoUMetric

        register_all_modules(init_default_scope=False)

    last = _last_validation_hook()

    def evaluate(runner):
        if last.metrics_iter != runner.iter:  # e.g. resumed a finished run: nothing was trained or validated
            last.metrics, last.metrics_iter = dict(runner.val()), runner.iter
        return last.metrics

    runner, metrics, wall = run_dense(
        cfg, name="seg", record=record, resume=resume, register=register, evaluate=evaluate, hooks=[last]
    )
    if launch_rank() != 0:  # under torchrun / srun: rank 0 alone reports and stores the row
        return None
    # IoUMetric reports percent rounded to 2 decimals, as float32: keep exactly those 2 decimals
    metrics = {k: round(float(metrics[k]), 2) for k in ("mIoU", "aAcc", "mAcc") if k in metrics}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise BenchError(f"work dir {cfg.work_dir}: validation gave non-finite metrics {metrics}")
    extra = {
        "img_size": crop[0],
        "crop_size": list(crop),
        "log_dir": str(runner.log_dir),
        "log_file": runner.log_file,
        "fp32_fallback": fp32_fallback,
    }
    per_image = getattr(runner.val_evaluator.metrics[0], "per_image", None)
    if per_image:
        from tasks.segmentation.per_image import write_per_example

        extra["per_example"] = str(write_per_example(Path(cfg.work_dir) / PER_EXAMPLE, per_image))
    deviations = segmentation_deviations(
        config_name=config_name,
        iterations=int(runner.iter),
        batch_size=batch,
        crop=crop,
        amp=cfg.optim_wrapper.get("type") == "AmpOptimWrapper",
        cfg_options=cfg.cfg_options,
        num_images={k: v.num_images for k, v in summaries.items()},
    )
    row = dense_row(
        task="ade20k",
        protocol="upernet",
        init=init,
        arch=arch,
        backbone=backbone,
        seed=seed,
        metrics=metrics,
        suite=suite,
        checkpoint=cfg.model.backbone.checkpoint,
        hashed=hashed,
        iterations=runner.iter,
        wall_time_s=wall,
        config_name=config_name,
        work_dir=cfg.work_dir,
        start_iter=runner.run_watch.start_iter,
        batch_size=batch,
        world_size=launch_world_size(),
        cfg_options=cfg.cfg_options,
        extra=extra,
        deviations=deviations,
    )
    if results is not None:
        ResultsStore(results).append(row)
    return row


def segmentation_deviations(
    *,
    config_name: str,
    iterations: int,
    batch_size: int,
    crop,
    amp: bool,
    cfg_options: dict | None = None,
    num_images: dict | None = None,
) -> list[str]:
    """How an ADE20K run departs from the paper's protocol (the row's ``deviations``)."""
    out = []
    if config_name == "smoke":
        out.append("smoke config (tiny head, 64 px)")
    elif config_name not in CONFIGS:
        out.append(f"config {config_name}")
    out += paper_deviations({"iterations": iterations, "batch": batch_size, "crop": tuple(crop)}, PAPER)
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


def add_seg_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone", required=True, help="registry name <init>_<arch>, e.g. mae_vit_base_patch16 (`bench backbones`)"
    )
    p.add_argument(
        "--checkpoint", default=None, help="backbone weights (official release file or `bench pretrain` output)"
    )
    p.add_argument("--data-root", required=True, help="ADEChallengeData2016 folder (or its parent); never downloaded")
    p.add_argument(
        "--config",
        default="smoke",
        help=f"{' | '.join(CONFIGS)} | path to an mmengine config .py, with --trust-config (default smoke)",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="square training crop (default: the config's; a multiple of the patch size)",
    )
    add_dense_arguments(p, default_out="work_dirs/seg_<config>_<backbone>_seed<seed>")


def seg_main(args) -> int:
    config_name = Path(args.config).stem if str(args.config).endswith(".py") else args.config
    work_dir = args.work_dir or f"work_dirs/seg_{config_name}_{args.backbone}_seed{args.seed}"
    check_outputs(work_dir, args.results)
    row = run_segmentation(
        args.backbone,
        args.checkpoint,
        args.data_root,
        config=args.config,
        seed=args.seed,
        iters=args.iters,
        work_dir=work_dir,
        resume=args.resume,
        results=args.results,
        suite=args.suite,
        trust_checkpoint=args.trust_checkpoint,
        crop_size=args.crop_size,
        channels_last=args.channels_last,
        ckpt_interval=args.ckpt_interval,
        trust_config=args.trust_config,
        cfg_options=args.cfg_options,
    )
    if row is None:  # not rank 0
        return 0
    m = row["metrics"]
    where = f"appended to {args.results}" if args.results else "not stored (no --results)"
    print(
        f"ADE20K UperNet {row['init']} {row['backbone']} seed {row['seed']}: mIoU {m['mIoU']:.2f}  aAcc {m['aAcc']:.2f}  "
        f"({row['iterations']} iterations, {row['wall_time_s']:.0f} s; {where}; work dir {work_dir})"
    )
    return 0


__all__ = [
    "CONFIGS",
    "RUN_RECORD",
    "PAPER",
    "PER_EXAMPLE",
    "add_seg_arguments",
    "seg_main",
    "run_segmentation",
    "resolve_config",
    "load_config",
    "hashed_config",
    "set_data_root",
    "segmentation_deviations",
]
