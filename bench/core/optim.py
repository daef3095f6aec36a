"""Optimisation pieces of the engine: parameter groups, the optimizer, the lr schedule and
activation checkpointing."""

from __future__ import annotations

import math

import torch

from bench.core.errors import BenchError


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """timm's parameter groups: no weight decay on biases, norms and ``model.no_weight_decay()``
    (pos_embed, cls_token, mask_token, relative position tables), optional layer-wise lr decay
    (``lr_scale`` = decay^(L - layer), blocks by ``model.group_matcher``)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is not None and layer_decay != 1.0:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def _fusable(groups) -> bool:
    params = [p for g in groups for p in g["params"]]
    return all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
    )


def make_optimizer(groups, cfg, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names (``cfg``: a ``TrainConfig``)."""
    if cfg.optimizer == "adamw":
        # the fused kernel (CPU and CUDA) is several times faster than the per-tensor loop and gives
        # the same updates to float rounding
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=_fusable(groups))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=cfg.momentum)
    raise BenchError(f"unknown optimizer {cfg.optimizer!r} (adamw, sgd, lars)")


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup, then half-cycle cosine to ``min_lr`` (per optimizer step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def enable_grad_checkpointing(model: torch.nn.Module, block_type: type) -> int:
    """Run every ``block_type`` module in ``model`` (e.g. ``backbones.vit.Block``: encoder and MAE
    decoder blocks) under ``torch.utils.checkpoint`` while gradients are being recorded; returns how
    many blocks. The state dict is unchanged (only the instances' ``forward`` is replaced)."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for m in model.modules():
        if isinstance(m, block_type) and not getattr(m, "_grad_checkpointing", False):

            def forward(*args, _fwd=m.forward, **kw):
                if torch.is_grad_enabled():
                    return checkpoint(_fwd, *args, use_reentrant=False, **kw)
                return _fwd(*args, **kw)

            m.forward, m._grad_checkpointing = forward, True
            n += 1
    return n
