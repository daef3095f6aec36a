"""``bench perf det``: the Mask R-CNN training step of both detection engines, on random images,
boxes, masks and labels, timed one after the other in one process with the same helper.

On CUDA the reduced precision is fp16 (with a GradScaler): mmcv's CUDA RoIAlign has no bf16 kernel.
On CPU it is bf16 (mmcv's CPU kernels get fp32 inputs, ``mmcv_ops_fp32_on_cpu``)."""

from __future__ import annotations

import numpy as np
import torch

from backbones.registry import parse_name
from backbones.vit import arch_config
from bench.core.device import pick_device
from bench.core.errors import BenchError
from bench.core.optional import require
from tasks.detection.coco_generate import ellipse_boxes
from tasks.detection.mmdet_run import fill_model, load_config
from tasks.detection.protocol import resolve_config

from .dense import (
    build_dense_model,
    dense_loss,
    dense_peaks,
    layouts_for,
    mmcv_ops_fp32_on_cpu,
    peak_names,
    time_dense,
)

DET_ENGINES = ("mmdet", "detectron2", "both")


def random_det_samples(batch_size: int, size: int, boxes: int, num_classes: int, seed: int = 0):
    """``batch_size`` DetDataSamples for ``size`` x ``size`` inputs, each with ``boxes`` random boxes
    (sides 5-40 % of the image), their masks (the box's inscribed ellipse, BitmapMasks) and labels."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        bb, masks = ellipse_boxes(rng, size, boxes)
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        s.gt_instances = InstanceData(
            bboxes=torch.from_numpy(bb),
            labels=torch.from_numpy(rng.integers(0, num_classes, boxes)),
            masks=BitmapMasks(masks.astype(np.uint8), size, size),
        )
        samples.append(s)
    return samples


def check_det_options(engine: str, config, backbone: str, img_size: int) -> None:
    """Refuse an unknown engine, a config file with both engines, or an input size the pyramid can't take."""
    if engine not in DET_ENGINES:
        raise BenchError(f"--engine {engine!r}: choose from {', '.join(DET_ENGINES)}")
    if engine == "both" and str(config) not in ("smoke", "vit_b", "vit_l"):
        raise BenchError(
            f"--config {config}: a config file belongs to one engine (an mmengine config or a "
            f"detectron2 LazyConfig); pass --engine mmdet or --engine detectron2"
        )
    stride = 32 * arch_config(parse_name(backbone)[1])["patch_size"] // 16  # the coarsest pyramid level
    if img_size < 2 * stride or img_size % stride:
        raise BenchError(
            f"--img-size {img_size}: must be a multiple of {stride} (the stride-32 level of {backbone}) "
            f"and at least {2 * stride}"
        )


def perf_det(
    config="vit_b",
    variants=("fpn",),
    backbone="random_vit_base_patch16",
    img_size=512,
    batch_size=1,
    boxes=8,
    iters=2,
    threads=None,
    baseline=False,
    channels_last=None,
    repeats=1,
    engine="both",
    trust_config=False,
    device="auto",
):
    """Mask R-CNN training step (variant 'fpn' = ViT -> FPN [Li21] / 'vitdet' = simple pyramid, for
    one process) on random images, boxes, masks and labels: img/s, step time, GFLOP/s and the
    fraction of the matmul peak. ``engine``: 'mmdet' (the model of the detection task's mmengine
    config), 'detectron2' (``tasks.detection.detectron2.perf.build_step``: the model of its
    LazyConfig of the same name) or 'both'. ``img_size``: the square input (the protocols train at
    1024; smaller for CPU)."""
    check_det_options(engine, config, backbone, img_size)
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    engines = ("mmdet", "detectron2") if engine == "both" else (engine,)
    if "mmdet" in engines:
        require("bench perf det", ("mmcv.ops", "mmdet"))
    if "detectron2" in engines:
        # importing the detectron2 package needs detectron2 installed: lazy, like the library itself
        from tasks.detection.detectron2.install import require_detectron2

        require_detectron2()  # before timing anything: one line that says how to install it
    low = "fp16" if dev.type == "cuda" else "bf16"
    precisions = [low] + (["fp32"] if baseline else [])
    peaks = dense_peaks(dev, peak_names(precisions))  # once for every model of this run
    settings = dict(
        config=config,
        backbone=backbone,
        img_size=img_size,
        batch_size=batch_size,
        boxes=boxes,
        trust_config=trust_config,
    )
    timing = dict(precisions=precisions, iters=iters, repeats=repeats, device=dev, peaks=peaks)
    layouts = layouts_for(channels_last, dev)
    rows = []
    for variant in [variants] if isinstance(variants, str) else variants:
        for eng in engines:
            build = _build_mmdet if eng == "mmdet" else _build_detectron2
            title, model, loss_of, notes = build(variant=variant, device=dev, channels_last=layouts[0], **settings)
            torch.manual_seed(0)  # the RPN / RoI samplers draw from torch's generator
            timed = time_dense(title, model, loss_of, batch_size, layouts, notes=notes, **timing)
            rows += [dict(r, engine=eng, variant=variant) for r in timed]
            del model
    if len(engines) > 1:
        print("same config, same run:")
        for r in rows:
            print(
                f"  {r['variant']} {r['prec']} {r['engine']:>10}: {r['img_s']:.3f} img/s, {r['gflop_img']:.4g} GFLOP/img, "
                f"{100 * r['of_peak']:.0f}% of peak"
            )
    return rows


def _build_mmdet(config, variant, backbone, img_size, batch_size, boxes, trust_config, device, channels_last):
    from mmcv.ops import RoIAlign
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT)
    import tasks.detection.mmdet_plugins  # noqa: F401  (LN2d, LastLevelMaxPool)

    register_all_modules(init_default_scope=True)
    path, name = resolve_config(config, variant, parse_name(backbone)[1], engine="mmdet")
    cfg = load_config(path, trust_config=trust_config)
    fill_model(cfg, path, backbone=backbone)
    cfg.model.backbone.img_size = img_size  # position embedding for this input (the config's: 1024)
    model = build_dense_model(MODELS, cfg.model, channels_last, device)
    mmcv_ops_fp32_on_cpu(model)
    num_classes = int(cfg.model.roi_head.bbox_head.num_classes)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    samples = [s.to(device) for s in random_det_samples(batch_size, img_size, boxes, num_classes)]
    notes = []
    if any(isinstance(mm, RoIAlign) for mm in model.modules()):
        notes.append(
            "FLOPs are the aten matmul / conv / attention ops torch.utils.flop_counter sees; mmcv's RoIAlign "
            "and NMS are extension calls it does not count (bilinear sampling / box overlaps, no matmul)"
        )
    title = (
        f"mmdet Mask R-CNN ({name}, {cfg.model.backbone.variant} pyramid) on {backbone} @ {img_size}, {boxes} boxes/img"
    )
    return title, model, lambda mm: dense_loss(mm, x, samples), notes


def _build_detectron2(config, variant, backbone, img_size, batch_size, boxes, trust_config, device, channels_last):
    del channels_last  # time_dense sets the layout of each timed variant
    from tasks.detection.detectron2.perf import build_step

    model, loss_of, title = build_step(
        config, variant, backbone, img_size, batch_size, boxes, trust_config=trust_config
    )
    # detectron2's model moves each batch (images and instances) to the device of its parameters
    notes = ["FLOPs as for mmdet: torchvision's RoIAlign and NMS (detectron2's ROIAlign, batched_nms) are not counted"]
    return title, model.to(device), loss_of, notes
