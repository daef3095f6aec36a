"""The mmengine config of one ADE20K UperNet run, from its facts object (``tasks.spec.TransferRun``).

``config_of(run)`` reads a config of ``tasks/segmentation/configs/`` (``smoke``, ``paper_vit_base``,
``paper_vit_large``) or a file of the user's (with ``trust_config``), then fills in the backbone and
the heads' widths, the crop, the lr of the initialisation, the batch and schedule, the data (the
held-out selection included), work dir and seed, and last ``--cfg-options``. Builds nothing.

Family options (``run.options``): ``crop_size`` (int or (h, w)), ``channels_last`` (bool),
``ckpt_interval`` (int).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from backbones.registry import INITS, parse_name
from backbones.vit import arch_config
from bench.core.distributed import launch_world_size
from bench.core.errors import BenchError, CheckpointError
from tasks.dense.memory_format import resolve_channels_last
from tasks.dense.runner import apply_cfg_options, read_config, set_batch_and_schedule, set_lr_for_init
from tasks.segmentation.ade_data import ade20k_pairs
from tasks.spec import TransferRun

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIGS = {
    "smoke": CONFIG_DIR / "smoke.py",
    "paper_vit_base": CONFIG_DIR / "paper_vit_base.py",
    "paper_vit_large": CONFIG_DIR / "paper_vit_large.py",
}
OPTIONS = ("crop_size", "channels_last", "ckpt_interval")  # the family's keys of TransferRun.options
MAX_CROP = 4096  # px: 8x the paper's 512 crop; a larger one is a typo, refused before any allocation
REQUIRED = ("model", "train_dataloader", "val_dataloader", "train_cfg", "param_scheduler", "optim_wrapper")
# Held-out selection (search candidates, issue 22): a fixed part of ADE20K *training*, drawn with one
# seed whatever the initialisation, the size of the validation set (2000 of 20210 images, ~10%);
# a small generated set keeps 10% (at least 1 image). It never touches validation/.
HELDOUT_SEED = 20210
HELDOUT_IMAGES = 2000
HELDOUT_FRACTION = 0.1
# Modules a saved config imports (mmengine ``custom_imports``), so mmseg's own tools rebuild the
# model: RegistryViT and its optimiser constructor, our checkpoint hook and resume sampler, the
# per-image metric.
CUSTOM_IMPORTS = ["tasks.dense.mm_runner", "tasks.segmentation.per_image"]


def resolve_config(config: str | os.PathLike) -> tuple[Path, str]:
    """(config file, its display name): a name of ``CONFIGS`` is always the package's file (a stray
    ``./smoke`` in the working folder is never read); anything else must look like a path (a
    ``/`` in it, or a ``.py`` name) and be a file."""
    text = str(config)
    if text in CONFIGS:
        return CONFIGS[text], text
    path = Path(text)
    if ("/" in text or path.suffix == ".py") and path.is_file() and path.suffix == ".py":
        return path, text
    raise BenchError(
        f"--config {text!r}: not one of {', '.join(CONFIGS)} nor an existing .py config file "
        f"(a file of your own is given as a path: ./name.py)"
    )


def heldout_indices(n_train: int) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) into the sorted training images: the same for every
    initialisation and seed (``HELDOUT_SEED``), ``min(HELDOUT_IMAGES, 10%)`` held out."""
    k = max(1, min(HELDOUT_IMAGES, round(HELDOUT_FRACTION * n_train)))
    if n_train < 2:
        raise BenchError(f"held-out selection needs at least 2 training images, the set has {n_train}")
    held = sorted(np.random.default_rng(HELDOUT_SEED).permutation(n_train)[:k].tolist())
    chosen = set(held)
    return [i for i in range(n_train) if i not in chosen], held


def crop_pair(crop, where: str) -> tuple[int, int]:
    if isinstance(crop, int):
        crop = (crop, crop)
    try:
        h, w = (int(c) for c in crop)
    except (TypeError, ValueError):
        raise BenchError(f"{where}: crop size must be an int or (height, width), got {crop!r}") from None
    if h <= 0 or w <= 0:
        raise BenchError(f"{where}: crop size must be positive, got {h}x{w}")
    if max(h, w) > MAX_CROP:
        raise BenchError(f"{where}: crop {h}x{w} is larger than {MAX_CROP} px (the paper's is 512)")
    return h, w


def apply_crop_size(cfg, crop: tuple[int, int]) -> None:
    """For a crop other than the config's, set every crop-dependent value the way mmseg's configs
    tie them to the crop: the padded training size, the backbone's position-embedding grid,
    RandomCrop, the resize scale (2048, 512) for 512 -> (4 crop, crop), and the sliding-window test
    (stride 2/3 crop)."""
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


def checked_checkpoint(run: TransferRun) -> str | None:
    """The backbone's pretrained weights as an absolute path (None for a random init)."""
    init, _ = parse_name(run.backbone)
    if INITS[init].needs_checkpoint and run.checkpoint is None:
        raise BenchError(
            f"backbone {run.backbone!r} needs --checkpoint (official files: {INITS[init].official_files or 'see README'})"
        )
    if run.checkpoint is None:
        return None
    path = Path(run.checkpoint).resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return str(path)


def fit_backbone(cfg, run: TransferRun, path: Path) -> None:
    """The backbone, its weights, the heads' input widths, the crop and the lr of its init."""
    init, arch = parse_name(run.backbone)  # BenchError with close names for an unknown backbone
    spec = arch_config(arch)
    if cfg.get("arch") not in (None, arch):
        raise BenchError(
            f"config {path}: key 'arch' is {cfg.arch!r}, backbone {run.backbone!r} is {arch!r} "
            f"(use a config for {arch}, or smoke)"
        )
    given = run.options.get("crop_size")
    where = "--crop-size" if given is not None else f"config {path}: key 'crop_size'"
    crop = crop_pair(given if given is not None else cfg.get("crop_size"), where)
    patch = spec["patch_size"]
    if crop[0] % patch or crop[1] % patch:
        raise BenchError(
            f"{where}: crop {crop[0]}x{crop[1]} is not a multiple of the patch size {patch} of {run.backbone}"
        )
    bb = cfg.model.backbone
    bb.name, bb.checkpoint, bb.trust_checkpoint = run.backbone, checked_checkpoint(run), bool(run.trust_checkpoint)
    channels = bb.get("out_channels", 256) if bb.get("variant", "fpn") == "simple" else spec["embed_dim"]
    cfg.model.decode_head.in_channels = [channels] * len(cfg.model.decode_head.in_channels)
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.in_channels = channels
    if given is not None:
        apply_crop_size(cfg, crop)
    set_lr_for_init(cfg, init)


def set_data(cfg, data_root, select: str | None = None) -> None:
    """The data root of every loader; ``select='heldout'`` trains on training minus the held-out
    part (``heldout_indices``) and validates on that part instead of validation/."""
    data_root = str(Path(data_root).resolve())
    cfg.data_root = data_root
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if loader in cfg:
            cfg[loader].dataset.data_root = data_root
    if select is None:
        return
    if select != "heldout":
        raise BenchError(f"ade20k: select={select!r}: only 'heldout' (a held-out part of training) or none")
    rest, held = heldout_indices(len(ade20k_pairs(data_root, "training")))
    cfg.train_dataloader.dataset.indices = rest
    train_prefix = dict(cfg.train_dataloader.dataset.data_prefix)
    for loader in ("val_dataloader", "test_dataloader"):
        if loader in cfg:
            cfg[loader] = dict(cfg[loader], dataset=dict(cfg[loader].dataset, data_prefix=train_prefix, indices=held))


def config_of(run: TransferRun):
    """The mmengine ``Config`` of ``run``, every override applied and checked (``cfg_options``
    last); builds nothing. Raises BenchError for an unknown config / backbone, a config for another
    architecture, a crop that is not a multiple of the patch size, or a non-positive iteration count."""
    unknown = sorted(set(run.options) - set(OPTIONS))
    if unknown:
        raise BenchError(f"ade20k: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    path, _ = resolve_config(run.config or "smoke")
    cfg = read_config(path, shipped_dir=CONFIG_DIR, trust_config=run.trust_config, required=REQUIRED)
    fit_backbone(cfg, run, path)
    if run.options.get("channels_last") is not None:
        cfg.channels_last = bool(run.options["channels_last"])
    resolve_channels_last(cfg.get("channels_last"), "cpu")  # a bad config value: BenchError now
    # the config's batch is the global batch (the paper's 16), split over the processes of a
    # torchrun / srun (DDP through mmengine's Runner, process group from bench.core.distributed)
    world = launch_world_size()
    set_batch_and_schedule(
        cfg,
        f"config {path}",
        iters=run.iters,
        batch_size=run.batch_size,
        ckpt_interval=run.options.get("ckpt_interval"),
        world_size=world,
    )
    cfg.launcher = "pytorch" if world > 1 else "none"
    cfg.device = run.device
    set_data(cfg, run.data_root, run.select)
    cfg.work_dir = str(Path(run.work_dir).resolve())
    cfg.randomness = dict(seed=int(run.seed), deterministic=False)
    cfg.resume, cfg.load_from = bool(run.resume), None
    cfg.custom_imports = dict(imports=list(CUSTOM_IMPORTS), allow_failed_imports=False)
    cfg.cfg_options = apply_cfg_options(
        cfg, run.cfg_options, f"config {path}", trust_config=run.trust_config, scopes=("mmseg",)
    )
    return cfg


__all__ = [
    "CONFIG_DIR",
    "CONFIGS",
    "OPTIONS",
    "HELDOUT_IMAGES",
    "HELDOUT_SEED",
    "resolve_config",
    "heldout_indices",
    "crop_pair",
    "apply_crop_size",
    "set_data",
    "config_of",
]
