"""One Table 4 recipe on both detection engines: the paper configs of mmdet (tasks/detection/configs)
and detectron2 (tasks/detection/detectron2/configs) compared key by key (schedule, optimiser, drop
path, anchors, the RPN / RoI matchers and samplers, the pyramid level each RoI is pooled from, test-time
settings; the CPU smoke twins too, which the agreement benchmark trains), and, built with random
ViT-B weights, their optimiser parameter groups (lr and weight decay of every encoder / pyramid
parameter by name, of the heads' parameters by kind) and their initialisations (the spread of every
head weight; the mask predictor's normal(0, 0.001)).
What this file checks is what "the same recipe" means for the two engines."""

from __future__ import annotations

import importlib.util
import inspect
import math

import pytest
import torch

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.skipif(
        importlib.util.find_spec("detectron2") is None or importlib.util.find_spec("mmdet") is None,
        reason="needs both mmdet and detectron2 (bash scripts/setup.sh)",
    ),
]
ARCH = {
    "b": ("vit_base_patch16", "mae_vit_base_patch16"),
    "l": ("vit_large_patch16", "mae_vit_large_patch16"),
    "smoke": ("vit_test_patch8", "random_vit_test_patch8"),  # the CPU twins (the agreement benchmark's)
}
ROI_SIDES = (5, 10, 20, 40, 80, 160, 320, 640, 1000)  # RoI sides in px, none on a level boundary
SIZE = 224  # the position embedding / relative tables of a built model are sized for this (not the recipe's 1024)


@pytest.fixture(scope="module")
def registered():
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401
    import tasks.detection.mmdet_plugins  # noqa: F401

    register_all_modules(init_default_scope=True)


def configs(variant: str, size: str):
    """(mmdet Config, detectron2 LazyConfig) of one paper config (``size`` b / l, filled for a MAE
    ViT of that size) or of the smoke config (``size`` smoke, random init)."""
    from tasks.detection.detectron2.config import load_lazy_config, registry_backbone_node, set_lr_and_depth
    from tasks.detection.mmdet_run import fill_model, load_config
    from tasks.detection.protocol import resolve_config

    arch, backbone = ARCH[size]
    name = "smoke" if size == "smoke" else f"vit_{size}"
    path, _ = resolve_config(name, variant, arch, "mmdet")
    mm = load_config(path)
    fill_model(mm, path, backbone=backbone)
    d2_path, _ = resolve_config(name, variant, arch, "detectron2")
    d2 = load_lazy_config(d2_path)
    node, _ = registry_backbone_node(d2, d2_path)
    node.name = backbone
    set_lr_and_depth(d2, "mae", arch)
    return mm, d2


def arg(node, name: str):
    """A LazyCall node's argument, or its callable's default when the config leaves it out."""
    if name in node:
        return node[name]
    target = node._target_
    if isinstance(target, str):
        from detectron2.config.instantiate import locate

        target = locate(target)
    for cls in getattr(target, "__mro__", (target,)):  # keyword arguments passed on to a base class
        params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
        if name in params:
            return params[name].default
    raise KeyError(f"{target} takes no argument {name!r}")


def d2_node(d2):
    bb = d2.model.backbone
    return bb.bottom_up if "bottom_up" in bb else bb


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
@pytest.mark.parametrize("size", ["b", "l", "smoke"])
def test_paper_configs_of_both_engines_agree_key_by_key(registered, variant, size):
    mm, d2 = configs(variant, size)
    m, rpn, rcnn = mm.model, mm.model.train_cfg.rpn, mm.model.train_cfg.rcnn
    pg, rh = d2.model.proposal_generator, d2.model.roi_heads
    node = d2_node(d2)
    sched = d2.lr_multiplier.scheduler
    pairs = {
        # encoder
        "drop path": (m.backbone.drop_path_rate, node.drop_path_rate),
        "global blocks": (tuple(m.backbone.global_blocks), tuple(node.global_blocks)),
        "window": (m.backbone.window_size, node.window_size),
        "rel pos": (m.backbone.use_rel_pos, node.use_rel_pos),
        "input": (m.backbone.img_size, node.img_size),
        # optimiser, schedule
        "lr": (mm.optim_wrapper.optimizer.lr, d2.optimizer.lr),
        "weight decay": (mm.optim_wrapper.optimizer.weight_decay, d2.optimizer.weight_decay),
        "betas": (tuple(mm.optim_wrapper.optimizer.betas), tuple(d2.optimizer.betas)),
        "layer decay": (
            mm.optim_wrapper.paramwise_cfg.layer_decay_rate,
            (
                d2.optimizer.params.lr_factor_func.keywords["lr_decay_rate"]
                if d2.optimizer.params.lr_factor_func
                else 1.0
            ),
        ),
        "batch": (mm.total_batch_size, d2.dataloader.train.total_batch_size),
        "iterations": (mm.train_cfg.max_iters, d2.train.max_iter),
        "lr steps": (mm.param_scheduler[1].milestones, list(sched.milestones)),
        "warm-up": (mm.param_scheduler[0].end, round(d2.lr_multiplier.warmup_length * d2.train.max_iter)),
        "warm-up factor": (mm.param_scheduler[0].start_factor, d2.lr_multiplier.warmup_factor),
        # anchors, RPN matcher and sampler: every anchor tied for a box's best IoU is positive, no minimum
        "anchor sizes": (
            [m.rpn_head.anchor_generator.scales[0] * s for s in m.rpn_head.anchor_generator.strides],
            [s[0] for s in pg.anchor_generator.sizes],
        ),
        "anchor ratios": (list(m.rpn_head.anchor_generator.ratios), _flat(pg.anchor_generator.aspect_ratios)),
        "rpn thresholds": ([rpn.assigner.neg_iou_thr, rpn.assigner.pos_iou_thr], list(pg.anchor_matcher.thresholds)),
        "rpn low-quality": (
            rpn.assigner.match_low_quality and rpn.assigner.min_pos_iou == 0.0,
            pg.anchor_matcher.allow_low_quality_matches,
        ),
        "rpn sampler": ((rpn.sampler.num, rpn.sampler.pos_fraction), (pg.batch_size_per_image, pg.positive_fraction)),
        "rpn train top-k": (
            (mm.model.train_cfg.rpn_proposal.nms_pre, mm.model.train_cfg.rpn_proposal.max_per_img),
            (pg.pre_nms_topk[0], pg.post_nms_topk[0]),
        ),
        "rpn test top-k": (
            (mm.model.test_cfg.rpn.nms_pre, mm.model.test_cfg.rpn.max_per_img),
            (pg.pre_nms_topk[1], pg.post_nms_topk[1]),
        ),
        "rpn nms": (mm.model.test_cfg.rpn.nms.iou_threshold, pg.nms_thresh),
        # RoI matcher and sampler: IoU 0.5, no low-quality matches
        "roi thresholds": ([rcnn.assigner.pos_iou_thr], list(rh.proposal_matcher.thresholds)),
        "roi neg = pos": (rcnn.assigner.neg_iou_thr, rcnn.assigner.pos_iou_thr),
        "roi low-quality": (rcnn.assigner.match_low_quality, rh.proposal_matcher.allow_low_quality_matches),
        "roi sampler": ((rcnn.sampler.num, rcnn.sampler.pos_fraction), (rh.batch_size_per_image, rh.positive_fraction)),
        "gt as proposals": (rcnn.sampler.add_gt_as_proposals, arg(rh, "proposal_append_gt")),
        # the pyramid level each RoI is pooled from, by each library's own rule (a stride per side)
        "box roi levels": (_mm_roi_strides(m.roi_head.bbox_roi_extractor), _d2_roi_strides(rh.box_pooler)),
        "mask roi levels": (_mm_roi_strides(m.roi_head.mask_roi_extractor), _d2_roi_strides(rh.mask_pooler)),
        "box coder": (
            [1 / s for s in m.roi_head.bbox_head.bbox_coder.target_stds],
            list(rh.box_predictor.box2box_transform.weights),
        ),
        # test time
        "score threshold": (mm.model.test_cfg.rcnn.score_thr, rh.box_predictor.test_score_thresh),
        "nms": (mm.model.test_cfg.rcnn.nms.iou_threshold, arg(rh.box_predictor, "test_nms_thresh")),
        "detections": (mm.model.test_cfg.rcnn.max_per_img, arg(rh.box_predictor, "test_topk_per_image")),
    }
    diff = {k: v for k, v in pairs.items() if not _same(*v)}
    assert not diff, diff
    if size == "smoke":  # fp32 on CPU
        assert not d2.train.amp.enabled and mm.optim_wrapper.get("type", "OptimWrapper") == "OptimWrapper"
        return
    # fp16 AMP on both (mmcv's CUDA RoIAlign has no bf16): AmpOptimWrapper's default dtype, AMPTrainer's
    assert mm.optim_wrapper.type == "AmpOptimWrapper" and mm.optim_wrapper.get("dtype") in (None, "float16")
    assert d2.train.amp.enabled


def _mm_roi_strides(extractor) -> list[int]:
    """The stride of the level mmdet's SingleRoIExtractor (``map_roi_levels``) pools each side of ROI_SIDES from."""
    from mmdet.registry import MODELS

    module = MODELS.build(extractor)
    rois = torch.tensor([[0.0, 0.0, 0.0, s, s] for s in ROI_SIDES])
    return [module.featmap_strides[i] for i in module.map_roi_levels(rois, len(module.featmap_strides)).tolist()]


def _d2_roi_strides(pooler) -> list[int]:
    """The stride of the level detectron2's ROIPooler (``assign_boxes_to_levels``) pools each side from."""
    from detectron2.config import instantiate
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    p = instantiate(pooler)
    boxes = Boxes(torch.tensor([[0.0, 0.0, s, s] for s in ROI_SIDES]))
    levels = assign_boxes_to_levels([boxes], p.min_level, p.max_level, p.canonical_box_size, p.canonical_level)
    return [2 ** (p.min_level + i) for i in levels.tolist()]


def _flat(ratios) -> list:
    """detectron2's aspect ratios: one list for every level, or a list per level (all the same here)."""
    ratios = list(ratios)
    if ratios and hasattr(ratios[0], "__len__"):
        return list(ratios[0])
    return ratios


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# --------------------------------------------------------------------------------------------------
# Built models: parameter groups, initialisation
# --------------------------------------------------------------------------------------------------
def _groups_by_name(model, optimizer) -> dict[str, tuple[float, float]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            out[name_of[id(p)]] = (round(g["lr"], 12), g["weight_decay"])
    return out


def _norm_kind(module) -> str:
    name = type(module).__name__.lower()
    if "layernorm" in name or name in ("ln2d", "layernorm"):
        return "ln-last-dim" if isinstance(module, torch.nn.LayerNorm) else "ln-channels"
    return "bn" if "batchnorm" in name else "layer"


def _split(model, groups) -> tuple[dict, dict]:
    """(encoder + pyramid parameters by their name inside the pyramid, heads' {(norm kind, weight|bias): set})."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = mod
    inner, heads = {}, {}
    for name, hyper in groups.items():
        if ".pyramid." in name:
            inner[name.split(".pyramid.", 1)[1]] = hyper
        else:
            key = (_norm_kind(owner[name]), name.rsplit(".", 1)[1])
            heads.setdefault(key, set()).add(hyper)
    return inner, heads


def built(variant: str):
    """(mmdet model, its optimiser), (detectron2 model, its optimiser): ViT-B, random weights."""
    from detectron2.config import instantiate
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    from tasks.dense.runner import amp_fallback

    mm, d2 = configs(variant, "b")
    for node in (mm.model.backbone, d2_node(d2)):
        node.update(name="random_vit_base_patch16", img_size=SIZE)
    if "square_pad" in d2_node(d2):
        d2_node(d2).square_pad = SIZE
    torch.manual_seed(0)
    mm_model = revert_sync_batchnorm(MODELS.build(mm.model))
    mm_model.init_weights()
    amp_fallback(mm, cuda=False)
    mm_opt = build_optim_wrapper(mm_model, mm.optim_wrapper).optimizer
    d2_model = instantiate(d2.model)
    d2.optimizer.params.model = d2_model
    d2_opt = instantiate(d2.optimizer)
    return (mm_model, mm_opt), (d2_model, d2_opt)


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_both_engines_build_the_same_parameter_groups_and_mask_predictor(registered, variant):
    (mm_model, mm_opt), (d2_model, d2_opt) = built(variant)
    mm_inner, mm_heads = _split(mm_model, _groups_by_name(mm_model, mm_opt))
    d2_inner, d2_heads = _split(d2_model, _groups_by_name(d2_model, d2_opt))
    # encoder and pyramid: the same parameters, each with the same lr (layer decay) and weight decay
    assert set(mm_inner) == set(d2_inner)
    diff = {n: (mm_inner[n], d2_inner[n]) for n in mm_inner if mm_inner[n] != d2_inner[n]}
    assert not diff, dict(list(diff.items())[:8])
    assert mm_inner["encoder.pos_embed"][1] == 0.0 and mm_inner["encoder.blocks.0.attn.qkv.bias"][1] == 0.1
    # heads (and FPN): every kind of parameter gets the same lr and weight decay in both
    assert mm_heads == d2_heads
    assert mm_heads[("layer", "bias")] == {(mm_opt.defaults["lr"], 0.1)}  # biases decay (ViTDet's rule)
    if variant == "vitdet":
        assert mm_heads[("ln-channels", "weight")] == {(mm_opt.defaults["lr"], 0.1)}  # as detectron2's LN
    else:
        assert mm_heads[("bn", "weight")] == {(mm_opt.defaults["lr"], 0.0)}
    # initialisations: every head weight drawn with the same spread (std within 10 %; a 1024-wide fc
    # holds millions of draws), the box fc and the FPN convs as detectron2's c2_xavier_fill
    mm_w, d2_w = dict(mm_model.named_parameters()), dict(d2_model.named_parameters())
    pairs = _init_pairs(variant)
    assert {m for m, _ in pairs} <= set(mm_w) and {d for _, d in pairs} <= set(d2_w)
    spread = {m: (mm_w[m].std().item(), d2_w[d].std().item()) for m, d in pairs}
    assert not {m: v for m, v in spread.items() if v[0] != pytest.approx(v[1], rel=0.1)}
    assert spread["roi_head.bbox_head.shared_fcs.0.weight"][0] == pytest.approx((1 / (256 * 49)) ** 0.5, rel=0.02)
    # the mask predictor: normal(0, 0.001), bias 0 in both
    for w, b in (
        (mm_model.roi_head.mask_head.conv_logits.weight, mm_model.roi_head.mask_head.conv_logits.bias),
        (d2_model.roi_heads.mask_head.predictor.weight, d2_model.roi_heads.mask_head.predictor.bias),
    ):
        assert w.std().item() == pytest.approx(0.001, rel=0.1) and b.abs().max().item() == 0.0


def _init_pairs(variant: str) -> list[tuple[str, str]]:
    """(mmdet, detectron2) names of the same head weight in the two built ViT-B models."""
    pairs = [
        (f"rpn_head.rpn_conv.{i}.conv.weight", f"proposal_generator.rpn_head.conv.conv{i}.weight") for i in range(2)
    ]
    pairs += [
        ("rpn_head.rpn_cls.weight", "proposal_generator.rpn_head.objectness_logits.weight"),
        ("rpn_head.rpn_reg.weight", "proposal_generator.rpn_head.anchor_deltas.weight"),
        ("roi_head.bbox_head.shared_fcs.0.weight", "roi_heads.box_head.fc1.weight"),
        ("roi_head.bbox_head.fc_cls.weight", "roi_heads.box_predictor.cls_score.weight"),
        ("roi_head.bbox_head.fc_reg.weight", "roi_heads.box_predictor.bbox_pred.weight"),
        ("roi_head.mask_head.upsample.weight", "roi_heads.mask_head.deconv.weight"),
    ]
    pairs += [
        (f"roi_head.bbox_head.shared_convs.{i}.conv.weight", f"roi_heads.box_head.conv{i + 1}.weight") for i in range(4)
    ]
    pairs += [
        (f"roi_head.mask_head.convs.{i}.conv.weight", f"roi_heads.mask_head.mask_fcn{i + 1}.weight") for i in range(4)
    ]
    if variant == "fpn":
        for i in range(4):
            pairs += [
                (f"neck.lateral_convs.{i}.conv.weight", f"backbone.fpn_lateral{i + 2}.weight"),
                (f"neck.fpn_convs.{i}.conv.weight", f"backbone.fpn_output{i + 2}.weight"),
            ]
    return pairs
