"""Training-step speed of a detectron2 Mask R-CNN from this package's LazyConfigs, for
``bench perf det --engine detectron2`` (the same random images, boxes and masks as the mmdet
engine's ``bench.perf.random_det_samples``: ``boxes`` per image, sides 5-40 %, inscribed ellipses).

    model, loss_of, title = build_step("vit_b", "vitdet", "random_vit_base_patch16", img_size=512)
    loss_of(model).backward()          # one training step's forward + backward
    perf_step(...)                     # -> {'img_s', 'step_s', 'gflop_img', 'gflop_s'}
"""

from __future__ import annotations

import time

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.utils.flop_counter import FlopCounterMode

from backbones.registry import parse_name
from backbones.vit import arch_config
from bench.core.errors import BenchError
from tasks.detection.coco_generate import ellipse_boxes
from tasks.detection.detectron2.backbone import check_model
from tasks.detection.detectron2.config import load_lazy_config, registry_backbone_node
from tasks.detection.protocol import resolve_config


def random_batch(batch_size: int, size: int, boxes: int, num_classes: int, seed: int = 0) -> list[dict]:
    """detectron2 ``batched_inputs``: (3, size, size) images in 0-255 with ``Instances`` of
    ``boxes`` random boxes, their inscribed-ellipse ``BitMasks`` and classes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch_size):
        bb, masks = ellipse_boxes(rng, size, boxes)
        inst = Instances(
            (size, size),
            gt_boxes=Boxes(torch.from_numpy(bb)),
            gt_classes=torch.from_numpy(rng.integers(0, num_classes, boxes)),
            gt_masks=BitMasks(torch.from_numpy(masks)),
        )
        img = torch.from_numpy(rng.uniform(0, 255, (3, size, size)).astype(np.float32))
        out.append({"image": img, "instances": inst, "height": size, "width": size})
    return out


def build_step(
    config="vit_b",
    variant="vitdet",
    backbone="random_vit_base_patch16",
    img_size=512,
    batch_size=1,
    boxes=8,
    num_classes=80,
    trust_config=False,
):
    """(model in train mode, ``loss_of(model) -> summed loss``, title) for one training step of the
    named config (``smoke``, ``vit_b``, ``vit_l`` or a LazyConfig file, read only with
    ``trust_config``) at ``img_size``."""
    arch = parse_name(backbone)[1]
    stride = 32 * arch_config(arch)["patch_size"] // 16
    if img_size < 2 * stride or img_size % stride:
        raise BenchError(
            f"--img-size {img_size}: must be a multiple of {stride} (the stride-32 level of {backbone}) "
            f"and at least {2 * stride}"
        )
    path, name = resolve_config(config, variant, arch, "detectron2")
    cfg = load_lazy_config(path, trust_config)
    node, _ = registry_backbone_node(cfg, path)
    node.update(name=backbone, checkpoint=None, img_size=img_size, square_pad=img_size)
    cfg.model.roi_heads.num_classes = num_classes
    model = instantiate(cfg.model)
    check_model(model)
    model.train()
    batch = random_batch(batch_size, img_size, boxes, num_classes)

    def loss_of(m):
        with EventStorage(0):  # detectron2's heads log to an event storage during training
            return sum(m(batch).values())

    return model, loss_of, f"detectron2 Mask R-CNN ({name}) on {backbone} @ {img_size}, {boxes} boxes/img"


def perf_step(
    config="vit_b",
    variant="vitdet",
    backbone="random_vit_base_patch16",
    img_size=512,
    batch_size=1,
    boxes=8,
    iters=2,
    bf16=False,
) -> dict:
    """img/s and FLOPs of the training step (forward, backward, AdamW; after one warm-up step):
    ``{'img_s', 'step_s' (median), 'gflop_img' (fwd+bwd, torch's flop counter), 'gflop_s'}``."""
    model, loss_of, title = build_step(config, variant, backbone, img_size, batch_size, boxes)
    torch.manual_seed(0)  # the RPN / RoI samplers draw from torch's generator
    with FlopCounterMode(display=False) as fc:
        loss_of(model).backward()
    model.zero_grad(set_to_none=True)
    flops = float(fc.get_total_flops())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    t = sorted(times)[len(times) // 2]
    return dict(
        title=title, img_s=batch_size / t, step_s=t, gflop_img=flops / batch_size / 1e9, gflop_s=flops / t / 1e9
    )
