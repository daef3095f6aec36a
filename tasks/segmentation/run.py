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
``CheckpointHook``, ``IoUMetric``. With ``resume=True`` (the default) mmengine continues from the
last checkpoint in ``work_dir``; ``work_dir/bench_seg_run.json`` records what the run is, and a
different backbone / checkpoint / seed / iterations / config in the same ``work_dir`` is refused
rather than silently mixed (mmengine would restore the old learning-rate schedule). When training
ends, one row goes to the results store: task 'ade20k', protocol 'upernet', mIoU / aAcc / mAcc in
percent from the last validation (after the final iteration).

The data is never downloaded: ``data_root`` is ADEChallengeData2016 (or its parent), checked with
``validate_ade20k`` before anything is built; ``make_ade20k_dataset`` writes small sets in that
layout for tests and demos.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

from bench.core.errors import BenchError, CheckpointError
from bench.core.io import atomic_write_json
from tasks.segmentation.ade_data import validate_ade20k

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIGS = {
    "smoke": CONFIG_DIR / "smoke.py",
    "paper_vit_base": CONFIG_DIR / "paper_vit_base.py",
    "paper_vit_large": CONFIG_DIR / "paper_vit_large.py",
}
RUN_RECORD = "bench_seg_run.json"  # in work_dir: what the run there is (checked on resume)
# Config keys that decide what a run trains and measures; their hash is the row's config_hash
# and part of the run record. Hooks, logging, paths and the seed (a row field of its own) are left
# out, so the seeds of one protocol share a config_hash.
HASHED_KEYS = ("model", "train_dataloader", "val_dataloader", "val_evaluator", "optim_wrapper",
               "param_scheduler", "train_cfg")
# Labels read per split to check their values (all of them are header-checked).
VALUE_SAMPLE = 50


# --------------------------------------------------------------------------------------------
# The config of one run
# --------------------------------------------------------------------------------------------

def resolve_config(config: str | os.PathLike) -> tuple[str, Path]:
    """(name, path) of ``config``: a name of ``CONFIGS`` or a config file."""
    if str(config) in CONFIGS:
        return str(config), CONFIGS[str(config)]
    path = Path(config)
    if path.suffix == ".py" and path.is_file():
        return str(path), path
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


def _apply_iters(cfg, iters: int) -> None:
    """Train ``iters`` iterations with the config's schedule compressed to fit: poly decay ends at
    ``iters``, warmup keeps its fraction of training, validation/checkpoint intervals are capped."""
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = min(cfg.train_cfg.get("val_interval", iters), iters)
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, iters)
    for sched in cfg.param_scheduler:
        for key in ("begin", "end"):
            value = sched.get(key)
            if value:  # 0 and None (= start / end of training) stay
                sched[key] = iters if value >= old else max(1, round(value * iters / old))


def load_config(config, *, backbone: str, checkpoint=None, data_root, work_dir, seed: int = 0,
                iters: int | None = None, crop_size=None, resume: bool = True,
                trust_checkpoint: bool = False, channels_last: bool | None = None):
    """The mmengine ``Config`` of one run, every override applied and checked; builds nothing.

    ``channels_last`` (None: the config's key ``channels_last``, whose None means on for CUDA, off
    on CPU) sets the conv layout (``tasks/dense/memory_format.py``).

    Raises BenchError for an unknown config / backbone, a config for another architecture, a crop
    that is not a multiple of the patch size, or a non-positive iteration count."""
    from mmengine.config import Config

    from backbones.registry import INITS, parse_name
    from backbones.vit import arch_config
    from tasks.dense.memory_format import resolve_channels_last

    _, path = resolve_config(config)
    init, arch = parse_name(backbone)  # BenchError with close names for an unknown backbone
    spec = arch_config(arch)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # mmengine raises many types for a broken file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchError(f"config {path}: cannot be read ({first})") from None
    for key in ("model", "train_dataloader", "val_dataloader", "train_cfg", "param_scheduler", "optim_wrapper"):
        if key not in cfg:
            raise BenchError(f"config {path}: missing key {key!r}")
    if cfg.model.backbone.get("type") != "RegistryViT":
        raise BenchError(f"config {path}: key 'model.backbone.type' must be 'RegistryViT', got {cfg.model.backbone.get('type')!r}")
    if cfg.get("arch") not in (None, arch):
        raise BenchError(f"config {path}: key 'arch' is {cfg.arch!r}, backbone {backbone!r} is {arch!r} "
                         f"(use a config for {arch}, or smoke)")
    if INITS[init].needs_checkpoint and checkpoint is None:
        raise BenchError(f"backbone {backbone!r} needs --checkpoint (official files: {INITS[init].official_files or 'see README'})")
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
    if iters is not None and (isinstance(iters, bool) or int(iters) != iters or iters < 1):
        raise BenchError(f"--iters must be a positive integer, got {iters!r}")

    # backbone and the heads' input channels
    bb = cfg.model.backbone
    bb.name, bb.checkpoint, bb.trust_checkpoint = backbone, checkpoint, bool(trust_checkpoint)
    channels = bb.get("out_channels", 256) if bb.get("variant", "fpn") == "simple" else spec["embed_dim"]
    cfg.model.decode_head.in_channels = [channels] * len(cfg.model.decode_head.in_channels)
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.in_channels = channels
    if crop_size is not None:
        _apply_crop_size(cfg, crop)
    if iters is not None:
        _apply_iters(cfg, int(iters))
    if channels_last is not None:
        cfg.channels_last = bool(channels_last)
    resolve_channels_last(cfg.get("channels_last"), "cpu")  # a bad config value: BenchError now

    # data, work dir, seed, resume
    set_data_root(cfg, data_root)
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    # Under torchrun / srun: DDP through mmengine's Runner (process group from
    # bench.core.distributed, see DenseRunner); the config's batch is the global batch (the paper's 16),
    # split evenly over the processes.
    from bench.core.distributed import launch_world_size
    world = launch_world_size()
    cfg.launcher = "pytorch" if world > 1 else "none"
    if world > 1:
        total = int(cfg.train_dataloader.batch_size)
        if total % world:
            raise BenchError(f"train_dataloader.batch_size {total} (the global batch) is not divisible by "
                             f"the {world} processes of this torchrun")
        cfg.train_dataloader.batch_size = total // world
    cfg.resume = bool(resume)
    cfg.load_from = None
    return cfg


def set_data_root(cfg, data_root) -> None:
    data_root = str(Path(data_root).resolve())
    cfg.data_root = data_root
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if loader in cfg:
            cfg[loader].dataset.data_root = data_root


def hashed_config(cfg) -> dict:
    """The parts of ``cfg`` that decide what is trained and measured, with the data root and
    checkpoint path blanked (the row has the checkpoint's sha256; the data may move)."""
    full = cfg.to_dict()
    d = {k: full[k] for k in HASHED_KEYS if k in full}
    d["model"]["backbone"]["checkpoint"] = None
    for loader in ("train_dataloader", "val_dataloader"):
        if loader in d:
            d[loader]["dataset"]["data_root"] = None
    return d


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

class _ConsoleFilter(logging.Filter):
    """Keeps mmseg's 150-row per-class IoU table out of the console (it stays in the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg == "per class results:" or msg.startswith("\n+-"))


def _check_run_record(work_dir: Path, record: dict, resume: bool) -> None:
    path = work_dir / RUN_RECORD
    if not (resume and path.is_file()):
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: unreadable run record ({e}); use another --work-dir or --no-resume") from None
    for key, value in record.items():
        if old.get(key) != value:
            raise BenchError(f"{path}: key {key!r} is {old.get(key)!r} but this run has {value!r}; resuming would mix "
                             f"two runs (use the same settings, another --work-dir, or --no-resume)")


def run_segmentation(backbone: str, checkpoint, data_root, *, config="smoke", seed: int = 0,
                     iters: int | None = None, work_dir, resume: bool = True, results=None,
                     suite: str = "adhoc", trust_checkpoint: bool = False, crop_size=None,
                     channels_last: bool | None = None) -> dict:
    """Fine-tune ``backbone`` (a registry name, weights from ``checkpoint``) with UperNet on the
    ADE20K folder ``data_root``; return the results row (and append it to the store ``results``,
    a folder or ``.jsonl`` file, when given); None on ranks other than 0 under torchrun / srun.
    See the module docstring.

    ``wall_time_s`` is this call's time (after a resume, only the part trained now; ``extra``
    has ``start_iter``). Resuming a finished run trains nothing and evaluates the restored model."""
    from mmengine.hooks import Hook

    import tasks.dense.mm_backbone  # noqa: F401  registers RegistryViT + ViTLayerDecayOptimizerConstructor
    from backbones.registry import parse_name
    from bench.core.results import ResultsStore, config_hash, make_row
    from tasks.dense.memory_format import DenseRunner
    from tasks.dense.mmengine_compat import enable_mmengine_checkpoints

    cfg = load_config(config, backbone=backbone, checkpoint=checkpoint, data_root=data_root, work_dir=work_dir,
                      seed=seed, iters=iters, crop_size=crop_size, resume=resume, trust_checkpoint=trust_checkpoint,
                      channels_last=channels_last)
    for split in ("training", "validation"):  # DataError naming the first file at fault
        summary = validate_ade20k(data_root, split, value_sample=VALUE_SAMPLE)
    set_data_root(cfg, summary.data_root)  # data_root may be the parent of ADEChallengeData2016
    init, arch = parse_name(backbone)
    config_name, _ = resolve_config(config)
    crop = tuple(cfg.crop_size)

    import torch
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        cfg.optim_wrapper.type = "OptimWrapper"  # mmengine's AMP wrapper needs a GPU
        cfg.optim_wrapper.pop("loss_scale", None)

    hashed = hashed_config(cfg)
    record = {"backbone": backbone, "checkpoint": cfg.model.backbone.checkpoint, "seed": int(seed),
              "iterations": int(cfg.train_cfg.max_iters), "crop_size": list(crop), "config_hash": config_hash(hashed)}
    work = Path(cfg.work_dir)
    _check_run_record(work, record, resume)
    work.mkdir(parents=True, exist_ok=True)
    from bench.core.distributed import launch_env
    main_process = (launch_env() or {"rank": 0})["rank"] == 0  # only rank 0 writes the record and the row
    if main_process:
        atomic_write_json(record, work / RUN_RECORD, indent=1, sort_keys=True)

    class LastValidation(Hook):
        """Where training started (after any resume) and the metrics of the last validation."""
        priority = "LOWEST"

        def __init__(self):
            self.start_iter, self.metrics, self.metrics_iter = None, None, None

        def before_train(self, runner):
            self.start_iter = runner.iter

        def after_val_epoch(self, runner, metrics=None):
            self.metrics, self.metrics_iter = dict(metrics or {}), runner.iter

    enable_mmengine_checkpoints()  # resume reads mmengine's own checkpoints with weights_only=True
    t0 = time.time()
    runner = DenseRunner.from_cfg(cfg)  # mmengine's Runner + the conv layout / RoI guard of tasks.dense
    for handler in runner.logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.addFilter(_ConsoleFilter())
    last = LastValidation()
    runner.register_hook(last)
    runner.train()
    if last.metrics_iter != runner.iter:  # e.g. resumed a finished run: nothing was trained or validated
        last.metrics, last.metrics_iter = dict(runner.val()), runner.iter
    wall = time.time() - t0

    # IoUMetric reports percent rounded to 2 decimals, as float32: keep exactly those 2 decimals
    metrics = {k: round(float(last.metrics[k]), 2) for k in ("mIoU", "aAcc", "mAcc") if k in last.metrics}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise BenchError(f"work dir {work}: validation gave non-finite metrics {metrics}")
    row = make_row(task="ade20k", protocol="upernet", init=init, backbone=arch, seed=int(seed), metrics=metrics,
                   suite=suite, checkpoint=cfg.model.backbone.checkpoint, config=hashed,
                   iterations=int(runner.iter), wall_time_s=wall,
                   extra={"img_size": crop[0], "crop_size": list(crop), "config": config_name,
                          "work_dir": str(work), "log_dir": str(runner.log_dir),
                          "start_iter": int(last.start_iter or 0)})
    if not main_process:  # under torchrun / srun: rank 0 alone reports and stores the row
        return None
    if results is not None:
        ResultsStore(results).append(row)
    return row


# --------------------------------------------------------------------------------------------
# Command line: bench seg
# --------------------------------------------------------------------------------------------

def add_seg_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="registry name <init>_<arch>, e.g. mae_vit_base_patch16 (`bench backbones`)")
    p.add_argument("--checkpoint", default=None, help="backbone weights (official release file or `bench pretrain` output)")
    p.add_argument("--data-root", required=True, help="ADEChallengeData2016 folder (or its parent); never downloaded")
    p.add_argument("--config", default="smoke", help=f"{' | '.join(CONFIGS)} | path to an mmengine config .py (default smoke)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's; the schedule is compressed to fit)")
    p.add_argument("--crop-size", type=int, default=None, help="square training crop (default: the config's; a multiple of the patch size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="mmengine work dir: logs, checkpoints (default work_dirs/seg_<config>_<backbone>_seed<seed>)")
    p.add_argument("--results", default=None, help="results store (folder or .jsonl) to append the row to")
    p.add_argument("--suite", default="adhoc", help="suite name recorded in the row")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the last checkpoint in --work-dir (default) or start over")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a backbone checkpoint that needs arbitrary unpickling")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last (NHWC) convolutions in the pyramid and heads (default: the config's "
                        "channels_last; unset = on for CUDA, off on CPU)")


def seg_main(args) -> int:
    config_name = Path(args.config).stem if str(args.config).endswith(".py") else args.config
    work_dir = args.work_dir or f"work_dirs/seg_{config_name}_{args.backbone}_seed{args.seed}"
    row = run_segmentation(args.backbone, args.checkpoint, args.data_root, config=args.config, seed=args.seed,
                           iters=args.iters, work_dir=work_dir, resume=args.resume, results=args.results,
                           suite=args.suite, trust_checkpoint=args.trust_checkpoint, crop_size=args.crop_size,
                           channels_last=args.channels_last)
    if row is None:  # not rank 0
        return 0
    m = row["metrics"]
    where = f"appended to {args.results}" if args.results else "not stored (no --results)"
    print(f"ADE20K UperNet {row['init']} {row['backbone']} seed {row['seed']}: mIoU {m['mIoU']:.2f}  aAcc {m['aAcc']:.2f}  "
          f"({row['iterations']} iterations, {row['wall_time_s']:.0f} s; {where}; work dir {work_dir})")
    return 0
