"""The classification transfer protocols of the MAE paper (He et al. 2021): end-to-end fine-tuning
(Appendix A.1, Table 9), linear probing (Table 10) and partial fine-tuning (Sec. 4.3, Figure 9).

Each protocol is a YAML file in ``configs/`` whose comments give the source of every value;
``load_config`` reads one (plus the per-architecture values of the released checkpoints and any
user overrides). This module turns a config into the pieces ``bench.core.engine.fit`` needs:

* ``build_classifier`` -> a ``VisionTransformer`` whose trainable parameters follow the protocol:
  ``finetune`` all; ``linear`` only ``head = BatchNorm1d(affine=False, eps=1e-6) + Linear`` on the
  class token (main_linprobe.py); ``partial`` the last ``k`` blocks + final norm + head, where
  ``k = 'mlp'`` is the MLP sub-block of the last block and ``k = depth`` is everything.
  ``k = 0`` *is* linear probing (Figure 9 caption), so ``recipe('partial', 0) == 'linear'``.
* ``param_groups_for`` -> optimizer groups: timm's ``param_groups_layer_decay`` (lr_scale =
  decay^(depth + 1 - layer_id), embeddings id 0, block i id i+1, head/fc_norm id depth+1; no weight
  decay on 1-d params, pos/cls tokens); for LARS the trust ratio is applied to the weight only.
* ``train_transform`` / ``eval_transform`` -> timm ``create_transform`` (RandAug, random erasing,
  bicubic; eval resize to img_size/crop_pct + centre crop).
* ``make_loss_fn`` -> timm ``Mixup`` + ``SoftTargetCrossEntropy`` (fine-tuning),
  ``LabelSmoothingCrossEntropy`` or plain cross-entropy (linear probing).
* ``evaluate`` -> top-1 / top-5 in percent, counted directly.
* ``extract_features`` -> frozen pre-logit features for the cached linear probe.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from bench.core.engine import autocast, param_groups
from bench.core.errors import BenchError
from tasks.classification.config import (  # noqa: F401  (re-exported: the protocol API in one place)
    CONFIG_DIR,
    FILE_ONLY_KEYS,
    KEYS,
    MLP,
    PROTOCOLS,
    _check_semantics,
    _check_value,
    _load_file,
    _read_yaml,
    check_k,
    check_protocol,
    load_config,
    parse_k,
    partial_sweep,
    protocol_config_path,
    recipe,
)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def trainable_prefixes(protocol: str, k, depth: int) -> tuple[str, ...] | None:
    """Parameter-name prefixes that train (None: all of them)."""
    if protocol == "finetune" or (protocol == "partial" and k == depth):
        return None
    if recipe(protocol, k) == "linear":
        return ("head.",)
    last = depth - 1
    if k == MLP:
        blocks = (f"blocks.{last}.norm2.", f"blocks.{last}.mlp.", f"blocks.{last}.ls2.")
    else:
        blocks = tuple(f"blocks.{i}." for i in range(depth - k, depth))
    return blocks + ("norm.", "fc_norm.", "head.")


def build_classifier(
    backbone_name: str,
    checkpoint: str | Path | None,
    protocol: str,
    num_classes: int,
    img_size: int | None = None,
    k: int | str | None = None,
    drop_path: float | None = None,
    global_pool: str | None = None,
    head_init_std: float | None = None,
    trust_checkpoint: bool = False,
) -> nn.Module:
    """A ViT classifier for ``protocol`` with the encoder of ``backbone_name`` / ``checkpoint``.

    Defaults for ``drop_path``, ``global_pool`` and ``head_init_std`` come from the protocol's
    config (``recipe(protocol, k)``). Parameters outside the protocol's trainable set get
    ``requires_grad = False``. For linear probing the head is ``Sequential(BatchNorm1d(D,
    affine=False, eps=1e-6), Linear(D, C))``. The model carries ``protocol``, ``k`` and ``recipe``.
    """
    from backbones.registry import build_backbone, parse_name
    from backbones.vit import arch_config

    check_protocol(protocol)
    _, arch = parse_name(backbone_name)
    preset = arch_config(arch)
    depth, patch = preset["depth"], preset["patch_size"]
    k = check_k(protocol, k, depth)
    rec = recipe(protocol, k)
    if num_classes < 1:
        raise BenchError(f"num_classes must be >= 1, got {num_classes}")
    if img_size is not None and img_size % patch:
        raise BenchError(f"img_size {img_size} is not divisible by the patch size {patch} of {arch}")
    defaults = load_config(rec, arch)
    drop_path = defaults["drop_path"] if drop_path is None else drop_path
    global_pool = defaults["global_pool"] if global_pool is None else global_pool
    head_init_std = defaults["head_init_std"] if head_init_std is None else head_init_std

    model = build_backbone(
        backbone_name,
        checkpoint,
        trust_checkpoint=trust_checkpoint,
        img_size=img_size,
        drop_path_rate=drop_path,
        global_pool=global_pool,
        num_classes=num_classes,
    )
    nn.init.trunc_normal_(model.head.weight, std=head_init_std)  # MAE main_finetune / main_linprobe
    nn.init.zeros_(model.head.bias)
    if rec == "linear":
        model.head = nn.Sequential(nn.BatchNorm1d(model.num_features, affine=False, eps=1e-6), model.head)
    prefixes = trainable_prefixes(protocol, k, depth)
    for name, p in model.named_parameters():
        p.requires_grad = prefixes is None or name.startswith(prefixes)
    model.protocol, model.k, model.recipe = protocol, k, rec
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------
def param_groups_for(protocol: str, model: nn.Module, cfg: dict) -> list[dict]:
    """Optimizer groups over the trainable parameters of ``model``.

    Linear probing (LARS): the weight gets the trust ratio and ``weight_decay``, biases neither
    (facebookresearch/mae util/lars.py adapts only ``p.ndim > 1``; timm ``Lars`` does so per group
    through ``always_adapt``). Otherwise timm's groups: layer-wise lr decay when
    ``cfg['layer_decay']`` is set, no weight decay on 1-d params / pos_embed / cls_token.
    """
    if protocol == "linear":
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg["weight_decay"], "always_adapt": True},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "always_adapt": False},
        ]
        return [g for g in groups if g["params"]]
    return param_groups(model, cfg["weight_decay"], cfg["layer_decay"])


def make_loss_fn(cfg: dict, num_classes: int):
    """``loss_fn(model, (images, labels)) -> (loss, {})`` for ``bench.core.engine.fit``.

    With mixup or cutmix on: timm ``Mixup`` (which also applies label smoothing) and
    ``SoftTargetCrossEntropy``; else ``LabelSmoothingCrossEntropy`` when smoothing > 0; else
    cross-entropy (main_finetune.py / main_linprobe.py). Mixup draws from the global numpy RNG,
    which ``fit`` seeds and checkpoints, so resumed runs mix identically.
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixup = None
    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        mixup = Mixup(
            mixup_alpha=cfg["mixup"],
            cutmix_alpha=cfg["cutmix"],
            prob=cfg["mixup_prob"],
            switch_prob=cfg["mixup_switch_prob"],
            mode=cfg["mixup_mode"],
            label_smoothing=cfg["smoothing"],
            num_classes=num_classes,
        )
        criterion = SoftTargetCrossEntropy()
    elif cfg["smoothing"] > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    else:
        criterion = nn.CrossEntropyLoss()

    def loss_fn(model, batch):
        x, y = batch
        if mixup is not None:
            x, y = mixup(x, y)
        return criterion(model(x).float(), y), {}

    loss_fn.mixup, loss_fn.criterion = mixup, criterion
    return loss_fn


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------
def _crop_pct(cfg: dict, img_size: int) -> float:
    if cfg.get("crop_pct") is not None:
        return cfg["crop_pct"]
    return 224 / 256 if img_size <= 224 else 1.0  # facebookresearch/mae util/datasets.py


def posterize_keep_bits(img, bits_to_keep, **_):
    """timm's ``posterize`` with Pillow < 13 semantics: keeping 0 bits gives a black image.

    timm 1.0.31's RandAug ``PosterizeIncreasing`` asks for 0 bits when the sampled magnitude
    reaches 10 (about 2% of draws at m9-mstd0.5); Pillow 13's ``ImageOps.posterize`` raises
    ``ValueError: bits must be between or equal to 1 and 8`` for that, which would crash a
    fine-tuning run after a few thousand images.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep >= 1:
        return ImageOps.posterize(img, bits_to_keep)
    return img.point([0] * 256 * len(img.getbands()))


def train_transform(cfg: dict, img_size: int):
    """RandomResizedCrop + flip (+ RandAug, random erasing) via timm ``create_transform``."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    tf = create_transform(
        img_size,
        is_training=True,
        scale=tuple(cfg["crop_scale"]),
        hflip=cfg["hflip"],
        color_jitter=cfg["color_jitter"],
        auto_augment=cfg["auto_augment"],
        interpolation=cfg["interpolation"],
        re_prob=cfg["reprob"],
        re_mode=cfg["remode"],
        re_count=cfg["recount"],
    )
    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize_keep_bits
    return tf


def eval_transform(cfg: dict, img_size: int):
    """Resize to img_size / crop_pct (bicubic) + centre crop, via timm ``create_transform``; wrapped
    in ``bench.core.data.TensorTransform`` so readers decode with torchvision and resize uint8 tensors
    with ``torchvision.transforms.v2`` (same steps and sizes; PIL images still go through timm's)."""
    from timm.data import create_transform

    from bench.core.data import as_tensor_transform

    return as_tensor_transform(
        create_transform(
            img_size, is_training=False, interpolation=cfg["interpolation"], crop_pct=_crop_pct(cfg, img_size)
        )
    )


# --------------------------------------------------------------------------------------------------
# Evaluation and features
# --------------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    *,
    bf16: bool = False,
    num_workers: int = 0,
    per_example: bool = False,
):
    """Top-1 / top-5 accuracy in percent over ``dataset`` of (input, label), counted directly
    (top-5 is top-min(5, C) when there are fewer than 5 classes). Leaves ``model`` in eval mode.
    Under torchrun each rank scores every world-th sample and the counts are summed over ranks,
    so the result equals a single process on the whole set.

    ``per_example=True`` returns ``(metrics, correct, correct5)``: two (N,) bool numpy arrays, the
    top-1 / top-5 hit of every sample in dataset order (gathered from all ranks); the metrics are
    ``100 * hits / N`` of exactly these arrays."""
    import numpy as np
    from torch.utils.data import Subset

    from bench.core.distributed import gather_accuracy, gather_objects, shard_indices

    device = _device_of(model)
    model.eval()
    indices = shard_indices(len(dataset))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    hits1, hits5 = [], []
    for x, y in loader:
        with autocast(device, bf16):
            logits = model(x.to(device))
        labels = torch.as_tensor(y, device=logits.device)
        ranked = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        hits1.append(hits[:, 0].cpu())
        hits5.append(hits.any(dim=1).cpu())
    c1 = torch.cat(hits1).numpy() if hits1 else np.zeros(0, dtype=bool)
    c5 = torch.cat(hits5).numpy() if hits5 else np.zeros(0, dtype=bool)
    try:
        acc = gather_accuracy([int(c1.sum()), int(c5.sum()), len(c1)])
    except ValueError:
        raise BenchError("evaluate: the evaluation set is empty") from None
    metrics = {"top1": acc["top1"], "top5": acc["top5"]}
    if not per_example:
        return metrics
    correct, correct5 = np.zeros(len(dataset), dtype=bool), np.zeros(len(dataset), dtype=bool)
    for idx, a, b in gather_objects((list(indices), c1, c5)):
        correct[idx], correct5[idx] = a, b
    return metrics, correct, correct5


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, *, bf16: bool = False, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (what the head sees: pooled token after norm / fc_norm) and labels of
    ``dataset``, in order, as float32 / int64 CPU tensors. Under torchrun each rank extracts every
    world-th sample and the parts are gathered, so every rank gets the whole set in order."""
    from torch.utils.data import Subset

    from bench.core.distributed import gather_objects, shard_indices

    device = _device_of(model)
    model.eval()
    indices = shard_indices(len(dataset))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for x, y in loader:
        with autocast(device, bf16):
            f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
    dim = model.num_features
    part = (
        list(indices),
        torch.cat(feats) if feats else torch.zeros(0, dim),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
    )
    all_feats, all_labels = torch.zeros(len(dataset), dim), torch.zeros(len(dataset), dtype=torch.long)
    for idx, f, y in gather_objects(part):
        all_feats[idx], all_labels[idx] = f, y
    return all_feats, all_labels
