"""The mmdet engine of COCO Mask R-CNN transfer (the default; the other is ``tasks/detection/detectron2``):
mmdet 3.3 models on mmengine's ``Runner`` through the shared dense runner (``tasks/dense/runner.py``:
run record and resume guard, newest readable checkpoint, atomic saves, non-finite stop, mmengine's
output in the work dir's log file).

    from tasks.detection.mmdet_run import run_mmdet
    row = run_mmdet(TransferRun(task="coco", protocol="maskrcnn_fpn", backbone="mae_vit_base_patch16", ...))

A run is prepare -> train (``tasks.dense.mm_runner.run_dense``; or, with ``eval_only``, load
``weights``: an mmengine checkpoint, ours or mmdet's own) -> evaluate on val2017 in mmengine's test loop, scored by OUR ``coco_evaluate``
(pycocotools ``COCOeval``) -> the row (``tasks.detection.protocol.detection_row``). The config
(``tasks/detection/configs``, every value commented with its source) is filled with the backbone and
checkpoint, data root, classes, work dir, seed, batch and a scaled schedule; ``--cfg-options`` come
last, and those naming code need ``trust_config``. The config mmengine saves in the work dir carries
``custom_imports``, so mmdet's own ``tools/test.py`` rebuilds the model from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from backbones.registry import parse_name
from backbones.vit import arch_config
from bench.core.device import pick_device
from bench.core.distributed import launch_world_size
from bench.core.errors import BenchError
from bench.core.results import ResultsStore, config_hash, sha256_file
from tasks.dense.memory_format import resolve_channels_last
from tasks.dense.runner import (
    amp_fallback,
    apply_cfg_options,
    hashed_config,
    launch_rank,
    read_config,
    set_batch_and_schedule,
    set_lr_for_init,
)
from tasks.detection.evaluation import write_per_example
from tasks.detection.protocol import (
    CONFIG_DIRS,
    PROTOCOL_OF_VARIANT,
    SPLITS,
    VARIANTS,
    DetResult,
    check_batch,
    check_run,
    data_identity,
    det_options,
    detection_row,
    resolve_config,
    run_data,
)
from tasks.spec import TransferRun

CONFIG_DIR = CONFIG_DIRS["mmdet"]
# what a saved config needs for mmdet's tools/test.py to rebuild the run (RegistryViT, LN2d, the
# evaluator, and the checkpoint hook / resumable sampler DenseRunner puts into the config it saves)
CUSTOM_IMPORTS = dict(
    imports=["tasks.dense.mm_backbone", "tasks.dense.mm_runner", "tasks.detection.mmdet_plugins"],
    allow_failed_imports=False,
)
REQUIRED_KEYS = ("model", "train_dataloader", "test_dataloader", "train_cfg", "optim_wrapper", "param_scheduler")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def load_config(path: Path, *, trust_config: bool = False):
    """The config file ``path`` (a shipped one, or any with ``trust_config``), checked; one-line
    errors naming the file."""
    return read_config(path, shipped_dir=CONFIG_DIR, trust_config=trust_config, required=REQUIRED_KEYS)


def fill_model(
    cfg, path: Path, *, backbone: str, checkpoint=None, trust_checkpoint: bool = False, num_classes: int | None = None
) -> tuple[str, str]:
    """The model part of the config for ``backbone``: name / checkpoint, the FPN's input channels
    (= embed dim), the layer-decay depth and (when given) the number of classes; (init, arch)."""
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


def _set_data(cfg, path: Path, data: dict, data_root, dets_out) -> None:
    """Data root and classes (file order = CocoDataset's label order), our evaluator, no val loop.
    The COCO layout's files go relative to the data root (the config hash holds no machine path);
    a held-out split's (``data['splits']``) absolute."""
    classes = tuple(c["name"] for c in data["categories"])
    splits = data.get("splits") or {s: (Path(data_root) / a, Path(data_root) / i) for s, (a, i) in SPLITS.items()}
    for key, split in (("train_dataloader", "train"), ("test_dataloader", "val")):
        ds = cfg[key].dataset
        if ds.get("type") != "CocoDataset":
            raise BenchError(f"{path}: key '{key}.dataset.type' must be 'CocoDataset'")
        ann, images = splits[split]
        if Path(ann) == Path(data_root) / SPLITS[split][0] and Path(images) == Path(data_root) / SPLITS[split][1]:
            ann, images = SPLITS[split]
        ds.update(
            data_root=str(data_root),
            ann_file=str(ann),
            data_prefix=dict(img=str(images) + "/"),
            metainfo=dict(classes=classes),
        )
    cfg.test_evaluator = dict(
        type="BenchCocoMetric",
        ann_file=data["val_ann"],
        cat_ids=[c["id"] for c in data["categories"]],
        outfile=None if dets_out is None else str(dets_out),
    )
    cfg.pop("val_dataloader", None), cfg.pop("val_cfg", None), cfg.pop("val_evaluator", None)


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
    trust_config: bool = False,
    amp: bool | None = None,
) -> dict:
    """Fill ``cfg`` in place for this run (``cfg_options`` last); returns facts for the row."""
    init, arch = fill_model(
        cfg,
        path,
        backbone=backbone,
        checkpoint=checkpoint,
        trust_checkpoint=trust_checkpoint,
        num_classes=len(data["categories"]),
    )
    set_lr_for_init(cfg, init)
    if amp is not None:  # None: the config's (the recipe's AMP on CUDA, fp32 on the CPU)
        cfg.optim_wrapper.type = "AmpOptimWrapper" if amp else "OptimWrapper"
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        cfg.optim_wrapper.dtype = "float16"  # mmcv's CUDA RoIAlign has no bf16 kernel
    else:  # an fp32 run (e.g. the smoke configs' OptimWrapper over the base's AMP): AMP-only keys go
        for key in ("loss_scale", "dtype"):
            cfg.optim_wrapper.pop(key, None)
    fp32_fallback = amp_fallback(cfg, torch.cuda.is_available())
    _set_data(cfg, path, data, data_root, dets_out)
    # total_batch_size images per iteration over all processes (lr is for that batch), schedule
    batch = set_batch_and_schedule(
        cfg, path, iters=iters, batch_size=batch_size, ckpt_interval=ckpt_interval, world_size=world_size
    )
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.launcher = "pytorch" if world_size > 1 else "none"
    cfg.custom_imports = dict(CUSTOM_IMPORTS)
    options = apply_cfg_options(cfg, cfg_options, path, trust_config=trust_config)
    return dict(
        init=init,
        arch=arch,
        lr=float(cfg.optim_wrapper.optimizer.lr),
        fp32_fallback=fp32_fallback,
        cfg_options=options,
        **batch,
    )


# --------------------------------------------------------------------------------------------------
# prepare -> train / load -> evaluate -> row
# --------------------------------------------------------------------------------------------------
@dataclass
class MMJob:
    """One mmdet run, prepared: the filled config and what the row needs."""

    run: TransferRun
    cfg: object
    path: Path
    config_name: str
    variant: str
    data: dict
    facts: dict
    world_size: int
    dets_out: str | None


def use_device(name: str) -> None:
    """``--device`` for mmengine, which trains on the current CUDA device whenever CUDA is visible:
    that device is set; the CPU while CUDA is visible is refused in one line."""
    device = pick_device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif torch.cuda.is_available():
        raise BenchError(
            f"--device {name}: the mmdet engine trains on the GPU whenever CUDA is visible; hide the GPUs "
            f"(CUDA_VISIBLE_DEVICES=) or use --engine detectron2"
        )


def prepare(run: TransferRun) -> MMJob:
    """Check everything and fill the config, before anything is written."""
    check_run(run)
    use_device(run.device)
    opts = det_options(run)
    path, config_name = resolve_config(run.config, opts["variant"], parse_name(run.backbone)[1], "mmdet")
    cfg = load_config(path, trust_config=run.trust_config)
    variant = cfg.get("variant", "fpn")
    if opts["variant"] is not None and variant != opts["variant"]:
        raise BenchError(f"{path}: key 'variant' is {variant!r} but --variant is {opts['variant']!r}")
    if variant not in VARIANTS:
        raise BenchError(f"{path}: key 'variant' must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if opts["channels_last"] is not None:
        cfg.channels_last = bool(opts["channels_last"])
    resolve_channels_last(cfg.get("channels_last"), "cpu")  # a bad config value: BenchError before anything is built
    data = run_data(run)
    world_size = launch_world_size()  # torchrun or srun
    facts = prepare_config(
        cfg,
        path,
        backbone=run.backbone,
        checkpoint=run.checkpoint,
        data=data,
        data_root=run.data_root,
        work_dir=run.work_dir,
        seed=run.seed,
        iters=run.iters,
        batch_size=run.batch_size,
        ckpt_interval=opts["ckpt_interval"],
        trust_checkpoint=run.trust_checkpoint,
        dets_out=opts["dets_out"],
        world_size=world_size,
        cfg_options=run.cfg_options,
        trust_config=run.trust_config,
        amp=run.amp,
    )
    check_batch(run, data, facts["total_batch_size"])
    return MMJob(run, cfg, path, config_name, variant, data, facts, world_size, opts["dets_out"])


def _register() -> None:
    """mmdet's modules and ours in mmengine's registries (inside the run, so their import-time
    warnings go to the run's log)."""
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401 (registers RegistryViT, ViTLayerDecayOptimizerConstructor)
    import tasks.detection.mmdet_plugins  # noqa: F401 (registers LN2d, LastLevelMaxPool, BenchCocoMetric)

    register_all_modules(init_default_scope=False)


def train(job: MMJob):
    """Train (resuming with ``run.resume``), or with ``eval_only`` load ``run.weights`` (an mmengine
    checkpoint: ours, or mmdet's own); then the test loop on val. (runner, metrics, seconds)."""
    from tasks.dense.mm_runner import run_dense  # imports mmengine

    run, f = job.run, job.facts
    record = dict(
        backbone=run.backbone,
        checkpoint=None if run.checkpoint is None else str(Path(run.checkpoint).resolve()),
        checkpoint_sha256=None if run.checkpoint is None else sha256_file(run.checkpoint),
        label=run.row_label,
        data=data_identity(job.data),
        seed=int(run.seed),
        variant=job.variant,
        iterations=f["max_iters"],
        batch_size=f["total_batch_size"],
        cfg_options=f["cfg_options"],
        config_hash=config_hash(hashed_config(job.cfg)),
    )

    # the test loop directly: runner.test() would look for a checkpoint to load again; an evaluate-only
    # run first gives the hooks the before_run that training would have (the logger's file names)
    def evaluate(runner):
        if run.eval_only:
            runner.call_hook("before_run")
        return runner.test_loop.run()

    return run_dense(
        job.cfg,
        name="det",
        record=record,
        resume=run.resume,
        register=_register,
        evaluate=evaluate,
        hooks=(fg_accuracy_hook(),),
        weights=run.weights if run.eval_only else None,
    )


def fg_accuracy(cls_score: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Percent of the foreground RoIs (label < ``num_classes``) whose highest score, background
    included, is their class: detectron2's ``fast_rcnn/fg_cls_accuracy`` (a fraction there); 0
    when a batch has no foreground RoI."""
    with torch.no_grad():
        fg = (labels >= 0) & (labels < num_classes)
        correct = (cls_score.argmax(dim=1)[fg] == labels[fg]).sum()
        return 100.0 * correct.float() / fg.sum().clamp(min=1).float()


def fg_accuracy_hook():
    """An mmengine hook that makes the box head's losses log ``fg_acc`` (``fg_accuracy``) beside
    mmdet's ``acc``, which counts the background RoIs too (three in four of a batch): whether classes
    separate, comparable with detectron2's log. Logging only; a head without a class score per class
    and background is left alone."""
    from mmengine.hooks import Hook

    class FgAccuracy(Hook):
        def before_train(self, runner):
            model = getattr(runner.model, "module", runner.model)
            head = getattr(getattr(model, "roi_head", None), "bbox_head", None)
            if head is None or not hasattr(head, "num_classes") or getattr(head, "custom_activation", False):
                return
            loss = head.loss

            def loss_and_fg_acc(cls_score, bbox_pred, rois, labels, *args, **kwargs):
                out = loss(cls_score, bbox_pred, rois, labels, *args, **kwargs)
                if cls_score is not None and cls_score.numel() and cls_score.shape[-1] == head.num_classes + 1:
                    out["fg_acc"] = fg_accuracy(cls_score, labels, head.num_classes)
                return out

            head.loss = loss_and_fg_acc

    return FgAccuracy()


def result_of(job: MMJob, runner, raw: dict, wall: float) -> DetResult:
    """What the run measured, for the row (rank 0)."""
    cfg, f = job.cfg, job.facts
    metrics = {k.split("/", 1)[-1]: float(v) for k, v in raw.items() if k.startswith("bench/")}
    per_example = write_per_example(
        Path(job.run.work_dir) / "per_example.npz",
        job.data["val_ann"],
        runner.test_loop.evaluator.metrics[0].detections,
    )
    return DetResult(
        engine="mmdet",
        variant=job.variant,
        protocol=cfg.get("protocol", PROTOCOL_OF_VARIANT[job.variant]),
        config_name=job.config_name,
        config_file=job.path,
        metrics={k: v if math.isfinite(v) else math.nan for k, v in metrics.items()},
        hashed=hashed_config(cfg),
        data=job.data,
        iterations=(runner.weights_iter or f["max_iters"]) if job.run.eval_only else runner.iter,
        start_iter=0 if job.run.eval_only else runner.run_watch.start_iter,
        wall_time_s=wall,
        batch_size=f["total_batch_size"],
        world_size=job.world_size,
        img_size=int(cfg.model.backbone.img_size),
        lr=f["lr"],
        layer_decay=float(cfg.optim_wrapper.get("paramwise_cfg", {}).get("layer_decay_rate", 1.0)),
        drop_path=float(cfg.model.backbone.get("drop_path_rate", 0.0)),
        fp32_fallback=f["fp32_fallback"],
        amp=cfg.optim_wrapper.get("type") == "AmpOptimWrapper",
        log_file=runner.log_file,
        dets_out=job.dets_out,
        per_example=per_example,
    )


def run_mmdet(run: TransferRun) -> dict | None:
    """Train Mask R-CNN on ``run.data_root``/train2017 (or load ``run.weights`` with ``eval_only``),
    evaluate on val2017, return the row (appended to ``run.results`` when given); None on ranks > 0."""
    job = prepare(run)
    runner, raw, wall = train(job)
    if launch_rank() != 0:
        return None
    row = detection_row(run, result_of(job, runner, raw, wall))
    if run.results is not None:
        ResultsStore(run.results).append(row)
    return row
