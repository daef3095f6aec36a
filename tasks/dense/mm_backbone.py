"""``RegistryViT``: any registry backbone as an mmseg / mmdet backbone.

Put it in a config as ``backbone=dict(type='RegistryViT', name='mae_vit_base_patch16',
checkpoint='mae_pretrain_vit_base.pth', img_size=512, variant='fpn')``. Importing this module
registers it in mmseg's and mmdet's ``MODELS`` (one class, two registries) and registers
``ViTLayerDecayOptimizerConstructor`` in mmengine's optimizer-wrapper-constructor registry.

Weights are loaded at construction by the registry (with its converters and safe loading), so
``init_weights`` does nothing for the encoder: mmengine would otherwise re-initialise it.
"""
from __future__ import annotations

from typing import Sequence

from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from backbones.adapters import ViTPyramid
from backbones.registry import build_backbone


class RegistryViT(BaseModule):
    """Registry encoder + 4-scale adapter (``variant='fpn'``: MAE/BEiT/Li et al.; ``'simple'``: ViTDet).

    ``use_rel_pos`` (default on, as the MAE paper does for every initialisation in dense transfer)
    adds relative position bias, zero-initialised where the checkpoint has none. ``window_size`` and
    ``global_blocks`` give ViTDet's windowed attention; ``img_size`` is the training crop the
    position embedding is resampled to (other input sizes are interpolated on the fly).
    ``with_cp`` (mmcv's name): activation checkpointing of every encoder block
    (``bench.core.engine.enable_grad_checkpointing``), e.g. ViT-L at 1024 px.
    """

    def __init__(self, name: str, checkpoint: str | None = None, img_size: int | Sequence[int] = 512,
                 variant: str = "fpn", out_indices: Sequence[int] | None = None, out_channels: int = 256,
                 drop_path_rate: float = 0.1, use_rel_pos: bool = True, window_size: int = 0,
                 global_blocks: Sequence[int] = (), norm: str = "BN", trust_checkpoint: bool = False,
                 with_cp: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        encoder = build_backbone(name, checkpoint, trust_checkpoint=trust_checkpoint, img_size=img_size,
                                 drop_path_rate=drop_path_rate, use_rel_pos=use_rel_pos, window_size=window_size,
                                 global_blocks=tuple(global_blocks))
        if with_cp:  # mmcv's name: recompute every block in backward (activation memory -> compute)
            from backbones.vit import Block
            from bench.core.engine import enable_grad_checkpointing
            enable_grad_checkpointing(encoder, Block)
        self.pyramid = ViTPyramid(encoder, variant, out_indices, out_channels, norm)
        self.num_layers = encoder.depth

    @property
    def encoder(self):
        return self.pyramid.encoder

    def init_weights(self):
        """The encoder's weights come from the registry; only the adapter keeps PyTorch's default init."""
        self._is_init = True

    def forward(self, x):
        return self.pyramid(x)


def _register():
    from mmseg.registry import MODELS as SEG_MODELS
    from mmdet.registry import MODELS as DET_MODELS
    for reg in (SEG_MODELS, DET_MODELS):
        if "RegistryViT" not in reg.module_dict:
            reg.register_module(module=RegistryViT)


def layer_id(name: str, num_layers: int) -> int:
    """Layer of a detector/segmentor parameter for layer-wise lr decay: the encoder's embeddings are
    layer 0, encoder block i is i + 1, everything else (final norm, adapter, neck, heads) is
    ``num_layers + 1``."""
    key = name.split("pyramid.encoder.", 1)[1] if "pyramid.encoder." in name else None
    if key is None:
        return num_layers + 1
    if key.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if key.startswith("blocks."):
        return int(key.split(".")[1]) + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for ``RegistryViT`` backbones (mmseg's ``LayerDecayOptimizerConstructor``
    expects ``backbone.layers.N`` names; ours are ``backbone.pyramid.encoder.blocks.N``).

    ``paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65)``: parameter group lr scale is
    ``rate ** (num_layers + 1 - layer_id)``; no weight decay for 1-D parameters, position
    embeddings, the cls token and relative position tables (BEiT / MAE practice)."""

    def add_params(self, params, module, **kwargs):
        num_layers = self.paramwise_cfg.get("num_layers")
        rate = self.paramwise_cfg.get("layer_decay_rate", 1.0)
        if num_layers is None:
            num_layers = next((m.num_layers for m in module.modules() if isinstance(m, RegistryViT)), 0)
        groups = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim == 1 or name.endswith(("pos_embed", "cls_token", "relative_position_bias_table"))
            lid = layer_id(name, num_layers)
            key = (lid, no_decay)
            if key not in groups:
                scale = rate ** (num_layers + 1 - lid)
                groups[key] = {"params": [], "lr": self.base_lr * scale, "lr_scale": scale,
                               "weight_decay": 0.0 if no_decay else self.base_wd, "param_names": []}
            groups[key]["params"].append(p)
            groups[key]["param_names"].append(name)
        for key in sorted(groups):
            g = groups[key]
            g.pop("param_names")
            params.append(g)


_register()
