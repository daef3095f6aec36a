"""COCO object detection + instance segmentation transfer (He et al. 2021, Table 4): Mask R-CNN
on a registry ViT, trained and evaluated with mmdet 3.3 on mmengine's ``Runner`` (the default
engine) or with detectron2 (``engine='detectron2'``, ``tasks/detection/detectron2``; why mmdet is
the default: docs/detectron2.md). Both engines write the same results row (``detection_row``), with
``extra['engine']`` naming the engine and the same task-level ``deviations``.

    from tasks.detection.run import run_detection
    row = run_detection("mae_vit_base_patch16", "mae_pretrain_vit_base.pth", "data/coco",
                        variant="fpn", work_dir="work/coco_mae_b", results="results/paper")

Two protocols (configs in ``tasks/detection/configs``, every value commented with its source):

* ``variant='fpn'`` (row protocol ``maskrcnn_fpn``): the MAE paper's, i.e. Li et al. 2021 (arXiv
  2111.11429): 4 evenly spaced blocks -> deconv / identity / max-pool adapter -> FPN.
* ``variant='vitdet'`` (``maskrcnn_vitdet``): ViTDet (arXiv 2203.16527): last block -> simple
  feature pyramid, no FPN.

``config`` is ``'auto'`` (ViT-B / ViT-L protocol config by the backbone's architecture, the CPU
smoke config for the test-sized ViTs), a name (``'smoke'``, ``'vit_b'``, ``'vit_l'``) or a path to
an mmengine ``.py`` config. What a run does:

1. checks the data (``validate_coco`` on both splits, ``check_same_categories``) and the config,
   before writing anything;
2. fills the config: backbone and checkpoint, data root, classes (from the annotation file), work
   dir, seed, batch size, and a shorter schedule when ``iters`` is given (warm-up, lr steps and
   checkpoint interval scaled with it);
3. trains with mmengine's ``IterBasedTrainLoop`` through the shared dense runner
   (``tasks/dense/runner.py``: run record and resume guard, newest readable checkpoint, atomic
   saves, non-finite stop, mmengine's output in the work dir's log file);
4. runs the model on val2017 in mmengine's test loop and scores it with OUR ``coco_evaluate``
   (pycocotools ``COCOeval``; the tests check mmdet's ``CocoMetric`` gives the same numbers);
5. optionally writes the COCO-format detections (``dets_out``), and appends one row to the
   results store (``results``): APbox, APmask, APbox50, ... in percent.

Under ``torchrun`` the Runner trains with DDP (launcher ``pytorch``) and ``total_batch_size`` is
split over the processes; rank 0 evaluates and writes. A config file outside
``tasks/detection/configs`` is read only with ``trust_config`` (mmengine runs it as Python).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, DataError
from bench.core.results import check_outputs
from tasks.dense.runner import (
    RUN_RECORD,
    add_dense_arguments,
    amp_fallback,
    apply_cfg_options,
    dense_row,
    hashed_config,
    launch_rank,
    read_config,
    run_dense,
    set_batch_and_schedule,
    set_lr_for_init,
)
from tasks.detection.task import ENGINES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VARIANTS = ("fpn", "vitdet")
PROTOCOL_OF_VARIANT = {"fpn": "maskrcnn_fpn", "vitdet": "maskrcnn_vitdet"}
DEFAULT_ENGINE = ENGINES[0]
# The paper's schedule (ViTDet / Li et al. 2021: 100 epochs of LSJ at batch 64, 1024 px crops), for
# the rows' deviations; tasks/detection/configs/coco_lsj_100e.py has the sources.
PAPER_ITERATIONS, PAPER_BATCH, PAPER_IMG_SIZE = 184375, 64, 1024
NAMED_CONFIGS = {
    "fpn": {"smoke": "smoke_fpn.py", "vit_b": "maskrcnn_vit_fpn_b.py", "vit_l": "maskrcnn_vit_fpn_l.py"},
    "vitdet": {"smoke": "smoke_vitdet.py", "vit_b": "vitdet_maskrcnn_b.py", "vit_l": "vitdet_maskrcnn_l.py"},
}
# config='auto': which named config an architecture gets
AUTO_CONFIG_OF_ARCH = {
    "vit_base_patch16": "vit_b",
    "vit_large_patch16": "vit_l",
    "vit_test_patch8": "smoke",
    "vit_demo_patch8": "smoke",
}
SPLITS = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "val": ("annotations/instances_val2017.json", "val2017"),
}


# --------------------------------------------------------------------------------------------------
# Config resolution
# --------------------------------------------------------------------------------------------------
def resolve_config(config: str | os.PathLike | None, variant: str | None, arch: str) -> tuple[Path, str]:
    """(config file, its display name) for ``config`` = 'auto' / a name / a path."""
    if variant is not None and variant not in VARIANTS:
        raise BenchError(f"--variant {variant!r}: choose from {', '.join(VARIANTS)}")
    if config is None or str(config) == "auto":
        if arch not in AUTO_CONFIG_OF_ARCH:
            raise BenchError(
                f"no detection protocol config for architecture {arch!r} (there are ViT-B, ViT-L "
                f"and the CPU smoke sizes); pass --config smoke|vit_b|vit_l|FILE.py"
            )
        config = AUTO_CONFIG_OF_ARCH[arch]
    name = str(config)
    v = variant or "fpn"
    if name in NAMED_CONFIGS[v]:
        return CONFIG_DIR / NAMED_CONFIGS[v][name], f"{v}:{name}"
    path = Path(config)
    if path.suffix != ".py" or not path.is_file():
        raise BenchError(
            f"--config {name!r}: neither a config name ({', '.join(NAMED_CONFIGS[v])}) "
            f"nor an existing mmengine .py config file"
        )
    return path, str(path)


def load_config(path: Path, *, trust_config: bool = False):
    """The config file ``path`` (a shipped one, or any with ``trust_config``), checked; one-line
    errors naming the file."""
    cfg = read_config(
        path,
        shipped_dir=CONFIG_DIR,
        trust_config=trust_config,
        required=("model", "train_dataloader", "test_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"),
    )
    return cfg


# --------------------------------------------------------------------------------------------------
# Data checks
# --------------------------------------------------------------------------------------------------
def check_coco_root(data_root: str | os.PathLike) -> dict:
    """Validate ``data_root`` (COCO 2017 layout) and return ``{'categories': [...] in file order,
    'num_train': .., 'num_val': .., 'train_ann': .., 'val_ann': ..}``."""
    from tasks.detection.coco_data import check_same_categories, validate_coco

    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (key 'data_root')")
    info: dict[str, Any] = {}
    order = {}
    for split, (ann, images) in SPLITS.items():
        summary = validate_coco(root / ann, root / images)
        info[f"num_{split}"] = summary["num_images"]
        info[f"{split}_ann"] = str(root / ann)
        order[split] = [dict(id=c["id"], name=c["name"]) for c in summary["dataset"]["categories"]]
        if split == "train" and summary["num_annotations"] == 0:
            raise DataError(f"{root / ann}: 'annotations' is empty; nothing to train on")
        del summary
    check_same_categories(root / SPLITS["train"][0], root / SPLITS["val"][0])
    # mmdet's CocoDataset numbers the classes in the file's category order, per file.
    if [c["id"] for c in order["train"]] != [c["id"] for c in order["val"]]:
        raise DataError(
            f"{root / SPLITS['val'][0]}: 'categories' are listed in another order than in "
            f"{root / SPLITS['train'][0]} (class indices would differ); list them in the same order"
        )
    names = [c["name"] for c in order["train"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{root / SPLITS['train'][0]}: 'categories' name {dup[0]!r} is used by more than one id")
    if not names:
        raise DataError(f"{root / SPLITS['train'][0]}: 'categories' is empty")
    info["categories"] = order["train"]
    return info


# --------------------------------------------------------------------------------------------------
# Filling the config
# --------------------------------------------------------------------------------------------------
def fill_model(
    cfg, path: Path, *, backbone: str, checkpoint=None, trust_checkpoint: bool = False, num_classes: int | None = None
) -> tuple[str, str]:
    """The model part of the config for ``backbone``: name / checkpoint, the FPN's input channels
    (= embed dim), the layer-decay depth and (when given) the number of classes; (init, arch)."""
    from backbones.registry import parse_name
    from backbones.vit import arch_config

    init, arch = parse_name(backbone)
    a = arch_config(arch)
    depth, dim = a["depth"], a["embed_dim"]
    bb = cfg.model.backbone
    bb.update(
        name=backbone,
        checkpoint=None if checkpoint is None else str(checkpoint),
        trust_checkpoint=bool(trust_checkpoint),
    )
    bad = [b for b in bb.get("global_blocks", ()) if not 0 <= b < depth]
    if bad:
        raise BenchError(
            f"{path}: key 'model.backbone.global_blocks' {list(bb.global_blocks)} does not fit "
            f"{backbone} ({depth} blocks); use the config for this size"
        )
    if bb.get("variant", "fpn") == "fpn" and cfg.model.get("neck", {}).get("type") == "FPN":
        cfg.model.neck.in_channels = [dim] * 4
    cfg.optim_wrapper.setdefault("paramwise_cfg", {})["num_layers"] = depth
    if num_classes is not None:
        for head in ("bbox_head", "mask_head"):
            if head in cfg.model.get("roi_head", {}):
                cfg.model.roi_head[head].num_classes = int(num_classes)
    return init, arch


def prepare_config(
    cfg,
    path: Path,
    *,
    backbone: str,
    checkpoint,
    data: dict,
    data_root,
    work_dir,
    seed: int,
    iters: int | None,
    batch_size: int | None,
    ckpt_interval: int | None,
    trust_checkpoint: bool,
    dets_out,
    world_size: int,
    cfg_options: dict | None = None,
) -> dict:
    """Fill ``cfg`` in place for this run (``cfg_options`` last); returns facts for the results row."""
    import torch

    classes = tuple(c["name"] for c in data["categories"])
    init, arch = fill_model(
        cfg, path, backbone=backbone, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, num_classes=len(classes)
    )
    set_lr_for_init(cfg, init)
    fp32_fallback = amp_fallback(cfg, torch.cuda.is_available())

    # data: root, classes (file order = CocoDataset's label order)
    for key, split in (("train_dataloader", "train"), ("test_dataloader", "val")):
        ds = cfg[key].dataset
        if ds.get("type") != "CocoDataset":
            raise BenchError(f"{path}: key '{key}.dataset.type' must be 'CocoDataset'")
        ds.update(
            data_root=str(data_root),
            ann_file=SPLITS[split][0],
            data_prefix=dict(img=SPLITS[split][1] + "/"),
            metainfo=dict(classes=classes),
        )
    cfg.test_evaluator = dict(
        type="BenchCocoMetric",
        ann_file=data["val_ann"],
        cat_ids=[c["id"] for c in data["categories"]],
        outfile=None if dets_out is None else str(dets_out),
    )
    cfg.pop("val_dataloader", None), cfg.pop("val_cfg", None), cfg.pop("val_evaluator", None)

    # total_batch_size images per iteration over all processes (lr is for that batch), schedule
    batch = set_batch_and_schedule(
        cfg, path, iters=iters, batch_size=batch_size, ckpt_interval=ckpt_interval, world_size=world_size
    )
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.launcher = "pytorch" if world_size > 1 else "none"
    options = apply_cfg_options(cfg, cfg_options, path)
    return dict(
        init=init,
        arch=arch,
        lr=float(cfg.optim_wrapper.optimizer.lr),
        classes=classes,
        fp32_fallback=fp32_fallback,
        cfg_options=options,
        **batch,
    )


# --------------------------------------------------------------------------------------------------
# The results row, one for both engines
# --------------------------------------------------------------------------------------------------
def detection_deviations(*, config_name: str, iterations: int, batch_size: int, img_size: int) -> list[str]:
    """How a detection run departs from the paper's protocol (the row's ``deviations``), the same
    phrases for both engines."""
    out = []
    if config_name.rsplit(":", 1)[-1] == "smoke":
        out.append("smoke config (tiny pyramid and heads)")
    elif config_name.rsplit(":", 1)[-1] not in ("vit_b", "vit_l"):
        out.append(f"config {config_name}")
    if iterations != PAPER_ITERATIONS:
        out.append(f"iterations {iterations} {'<' if iterations < PAPER_ITERATIONS else '>'} paper {PAPER_ITERATIONS}")
    if batch_size != PAPER_BATCH:
        out.append(f"batch {batch_size} {'<' if batch_size < PAPER_BATCH else '>'} paper {PAPER_BATCH}")
    if img_size != PAPER_IMG_SIZE:
        out.append(f"img_size {img_size} != paper {PAPER_IMG_SIZE}")
    return out


def detection_row(
    *,
    engine: str,
    variant: str,
    protocol: str,
    init: str,
    arch: str,
    backbone: str,
    seed: int,
    metrics: dict,
    nan_metrics: list,
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
    img_size: int,
    lr: float,
    layer_decay: float,
    drop_path: float,
    fp32_fallback: bool,
    data: dict,
    log_file,
    dets_out,
    per_example=None,
) -> dict:
    """The results row of a COCO run of either engine: the same keys, ``extra['engine']`` naming it."""
    row = dense_row(
        task="coco",
        protocol=protocol,
        init=init,
        arch=arch,
        backbone=backbone,
        seed=seed,
        metrics=metrics,
        suite=suite,
        checkpoint=checkpoint,
        hashed=hashed,
        iterations=iterations,
        wall_time_s=wall_time_s,
        config_name=config_name,
        work_dir=work_dir,
        start_iter=start_iter,
        batch_size=batch_size,
        world_size=world_size,
        cfg_options=cfg_options,
        extra=dict(
            engine=engine,
            variant=variant,
            img_size=int(img_size),
            lr=float(lr),
            layer_decay=float(layer_decay),
            drop_path=float(drop_path),
            fp32_fallback=bool(fp32_fallback),
            num_train_images=data["num_train"],
            num_val_images=data["num_val"],
            num_categories=len(data["categories"]),
            nan_metrics=list(nan_metrics),
            log_file=None if log_file is None else str(log_file),
            dets_out=None if dets_out is None else str(dets_out),
            per_example=None if per_example is None else str(Path(per_example).resolve()),
        ),
    )
    row["deviations"] = list(
        dict.fromkeys(
            row.get("deviations", [])
            + detection_deviations(
                config_name=config_name, iterations=int(iterations), batch_size=int(batch_size), img_size=int(img_size)
            )
        )
    )
    return row


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run_detection(
    backbone: str,
    checkpoint: str | os.PathLike | None,
    data_root: str | os.PathLike,
    *,
    variant: str | None = None,
    config: str | os.PathLike | None = "auto",
    seed: int = 0,
    iters: int | None = None,
    batch_size: int | None = None,
    ckpt_interval: int | None = None,
    work_dir: str | os.PathLike,
    resume: bool = True,
    results: str | os.PathLike | None = None,
    suite: str = "adhoc",
    dets_out: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    channels_last: bool | None = None,
    trust_config: bool = False,
    cfg_options: dict | None = None,
    engine: str = DEFAULT_ENGINE,
) -> dict | None:
    """Train Mask R-CNN on ``data_root``/train2017, evaluate on val2017, return the results row
    (and append it to ``results`` when given). Returns None on ranks other than 0 under torchrun.

    ``engine``: 'mmdet' (default) or 'detectron2' (``run_detectron2``; ``config`` is then one of
    its names or a LazyConfig, ``cfg_options`` become its ``key=value`` overrides).

    ``iters`` shortens (or lengthens) the schedule, scaling warm-up and lr steps with it;
    ``batch_size`` is the total over all processes (lr scaled linearly, and without ``iters`` the
    iterations scaled to keep the epochs); ``ckpt_interval`` in iterations. ``channels_last``
    (None: the config's key ``channels_last``, whose None means on for CUDA, off on CPU) sets the
    conv layout (``tasks/dense/memory_format.py``). ``trust_config``: read a config file from
    outside the package. ``cfg_options``: ``{'a.b': value}`` applied last (``--cfg-options``).
    """
    from backbones.registry import parse_name
    from bench.core.distributed import launch_world_size
    from bench.core.results import ResultsStore, config_hash
    from tasks.dense.memory_format import resolve_channels_last

    if engine not in ENGINES:
        raise BenchError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    if engine == "detectron2":
        return _run_detectron2_engine(
            backbone,
            checkpoint,
            data_root,
            variant=variant,
            config=config,
            seed=seed,
            iters=iters,
            batch_size=batch_size,
            ckpt_interval=ckpt_interval,
            work_dir=work_dir,
            resume=resume,
            results=results,
            suite=suite,
            dets_out=dets_out,
            trust_checkpoint=trust_checkpoint,
            channels_last=channels_last,
            trust_config=trust_config,
            cfg_options=cfg_options,
        )
    _, arch = parse_name(backbone)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BenchError(f"{checkpoint}: checkpoint file not found (key 'checkpoint')")
    path, config_name = resolve_config(config, variant, arch)
    cfg = load_config(path, trust_config=trust_config)
    cfg_variant = cfg.get("variant", "fpn")
    if variant is not None and cfg_variant != variant:
        raise BenchError(f"{path}: key 'variant' is {cfg_variant!r} but --variant is {variant!r}")
    variant = cfg_variant
    if variant not in VARIANTS:
        raise BenchError(f"{path}: key 'variant' must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if channels_last is not None:
        cfg.channels_last = bool(channels_last)
    resolve_channels_last(cfg.get("channels_last"), "cpu")  # a bad config value: BenchError before anything is built
    data = check_coco_root(data_root)
    world_size = launch_world_size()  # torchrun or srun
    facts = prepare_config(
        cfg,
        path,
        backbone=backbone,
        checkpoint=checkpoint,
        data=data,
        data_root=data_root,
        work_dir=work_dir,
        seed=seed,
        iters=iters,
        batch_size=batch_size,
        ckpt_interval=ckpt_interval,
        trust_checkpoint=trust_checkpoint,
        dets_out=dets_out,
        world_size=world_size,
        cfg_options=cfg_options,
    )
    hashed = hashed_config(cfg)
    record = dict(
        backbone=backbone,
        checkpoint=None if checkpoint is None else str(Path(checkpoint).resolve()),
        seed=int(seed),
        variant=variant,
        iterations=facts["max_iters"],
        batch_size=facts["total_batch_size"],
        cfg_options=facts["cfg_options"],
        config_hash=config_hash(hashed),
    )

    def register():
        from mmdet.utils import register_all_modules

        import tasks.dense.mm_backbone  # noqa: F401 (registers RegistryViT, ViTLayerDecayOptimizerConstructor)
        import tasks.detection.mmdet_plugins  # noqa: F401 (registers LN2d, LastLevelMaxPool, BenchCocoMetric)

        register_all_modules(init_default_scope=False)

    # the test loop directly: runner.test() would look for a checkpoint to load again
    runner, raw, wall = run_dense(
        cfg, name="det", record=record, resume=resume, register=register, evaluate=lambda runner: runner.test_loop.run()
    )
    if launch_rank() != 0:
        return None
    from tasks.detection.evaluation import write_per_example

    metrics = {k.split("/", 1)[-1]: float(v) for k, v in raw.items() if k.startswith("bench/")}
    nan = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    per_example = write_per_example(
        Path(work_dir) / "per_example.npz", data["val_ann"], runner.test_loop.evaluator.metrics[0].detections
    )
    row = detection_row(
        engine="mmdet",
        variant=variant,
        protocol=cfg.get("protocol", PROTOCOL_OF_VARIANT[variant]),
        init=facts["init"],
        arch=facts["arch"],
        backbone=backbone,
        seed=seed,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
        nan_metrics=nan,
        suite=suite,
        checkpoint=checkpoint,
        hashed=hashed,
        iterations=runner.iter,
        wall_time_s=wall,
        config_name=config_name,
        work_dir=work_dir,
        start_iter=runner.run_watch.start_iter,
        batch_size=facts["total_batch_size"],
        world_size=world_size,
        cfg_options=facts["cfg_options"],
        img_size=int(cfg.model.backbone.img_size),
        lr=facts["lr"],
        layer_decay=float(cfg.optim_wrapper.get("paramwise_cfg", {}).get("layer_decay_rate", 1.0)),
        drop_path=float(cfg.model.backbone.get("drop_path_rate", 0.0)),
        fp32_fallback=facts["fp32_fallback"],
        data=data,
        log_file=runner.log_file,
        dets_out=dets_out,
        per_example=per_example,
    )
    if results is not None:
        ResultsStore(results).append(row)
    return row


def _run_detectron2_engine(
    backbone,
    checkpoint,
    data_root,
    *,
    variant,
    config,
    seed,
    iters,
    batch_size,
    ckpt_interval,
    work_dir,
    resume,
    results,
    suite,
    dets_out,
    trust_checkpoint,
    channels_last,
    trust_config,
    cfg_options,
) -> dict | None:
    """``run_detection(engine='detectron2')``: ``run_detectron2`` and the same row as mmdet's."""
    import shutil

    from bench.core.results import ResultsStore

    if channels_last is not None:
        raise BenchError(
            "--channels-last / --no-channels-last: an mmdet engine option (detectron2 keeps its "
            "own memory format); drop it or use --engine mmdet"
        )
    from tasks.detection.detectron2.install import require_detectron2

    require_detectron2()  # one line that says how to install it
    from tasks.detection.detectron2.run import run_detectron2

    overrides = [f"{k}={v!r}" for k, v in (cfg_options or {}).items()]
    out = run_detectron2(
        backbone,
        checkpoint,
        data_root,
        variant=variant or "fpn",
        config=config,
        seed=seed,
        iters=iters,
        batch_size=batch_size,
        ckpt_interval=ckpt_interval,
        work_dir=work_dir,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
        trust_config=trust_config,
        overrides=overrides,
    )
    if out is None:  # not rank 0
        return None
    x = out["extra"]
    if dets_out is not None:
        shutil.copyfile(x["dets_out"], dets_out)
    row = detection_row(
        engine="detectron2",
        variant=x["variant"],
        protocol=out["protocol"],
        init=out["init"],
        arch=out["arch"],
        backbone=backbone,
        seed=seed,
        metrics=out["metrics"],
        nan_metrics=x["nan_metrics"],
        suite=suite,
        checkpoint=checkpoint,
        hashed=out["config"],
        iterations=out["iterations"],
        wall_time_s=out["wall_time_s"],
        config_name=x["config"],
        work_dir=work_dir,
        start_iter=x["start_iter"],
        batch_size=x["batch_size"],
        world_size=x["world_size"],
        cfg_options=dict(cfg_options or {}),
        img_size=x["img_size"],
        lr=x["lr"],
        layer_decay=x["layer_decay"],
        drop_path=x["drop_path"],
        fp32_fallback=x["fp32_fallback"],
        data=out["data"],
        log_file=x["log_file"],
        dets_out=dets_out if dets_out is not None else x["dets_out"],
        per_example=x.get("per_example"),
    )
    if results is not None:
        ResultsStore(results).append(row)
    return row


# --------------------------------------------------------------------------------------------------
# CLI (wired as `bench det` by bench/cli.py)
# --------------------------------------------------------------------------------------------------
def add_det_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backbone", required=True, help="registry backbone name, e.g. mae_vit_base_patch16")
    parser.add_argument("--checkpoint", default=None, help="pre-trained weights (not for random_*)")
    parser.add_argument("--data-root", required=True, help="COCO 2017 layout: annotations/, train2017/, val2017/")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default=None,
        help="fpn: MAE paper / Li et al. 2021 (default); vitdet: ViTDet simple pyramid",
    )
    parser.add_argument(
        "--config",
        default="auto",
        help="auto (by architecture), smoke, vit_b, vit_l, or an mmengine .py config (with --trust-config)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="total batch (default: the config's, 64)")
    parser.add_argument("--dets-out", default=None, help="write the val detections (COCO results JSON) here")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="mmdet (default: the shared dense runner, all options) or detectron2 (the ViTDet / "
        "Li et al. code base; --config takes its names or a LazyConfig, --cfg-options its "
        "overrides); both write the same row with extra.engine",
    )
    add_dense_arguments(parser, default_out="work_dirs/det/<backbone>_<variant>_s<seed>")
    return parser


def det_main(args: argparse.Namespace) -> int:
    engine = getattr(args, "engine", DEFAULT_ENGINE)
    tag = "" if engine == DEFAULT_ENGINE else f"_{engine}"
    work_dir = args.work_dir or f"work_dirs/det/{args.backbone}_{args.variant or 'fpn'}{tag}_s{args.seed}"
    check_outputs(work_dir, args.results, args.dets_out)
    row = run_detection(
        args.backbone,
        args.checkpoint,
        args.data_root,
        variant=args.variant,
        config=args.config,
        seed=args.seed,
        iters=args.iters,
        batch_size=args.batch_size,
        ckpt_interval=args.ckpt_interval,
        work_dir=work_dir,
        resume=args.resume,
        results=args.results,
        suite=args.suite,
        dets_out=args.dets_out,
        trust_checkpoint=args.trust_checkpoint,
        channels_last=args.channels_last,
        trust_config=args.trust_config,
        cfg_options=args.cfg_options,
        engine=engine,
    )
    if row is not None:
        m = row["metrics"]
        shown = ", ".join(f"{k} {m[k]:.1f}" for k in ("APbox", "APmask", "APbox50", "APbox75") if k in m)
        print(
            f"coco {row['protocol']} ({row['extra']['engine']}) {row['backbone']} seed {row['seed']}: {shown} "
            f"({row['iterations']} iterations, {row['wall_time_s']:.0f} s)"
        )
    return 0


__all__ = [
    "ENGINES",
    "DEFAULT_ENGINE",
    "detection_deviations",
    "detection_row",
    "add_det_arguments",
    "det_main",
    "run_detection",
    "check_coco_root",
    "resolve_config",
    "load_config",
    "fill_model",
    "prepare_config",
    "RUN_RECORD",
]
