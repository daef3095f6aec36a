"""ViT backbones for MAE transfer learning: the encoder, MAE pretraining, and the registry.

Public API (stable)::

    from backbones import build_backbone, list_backbones
    from backbones.mae import MaskedAutoencoder
"""

from .registry import INITS, build_backbone, list_backbones, register_init
from .vit import ARCHS, VisionTransformer

__all__ = ["build_backbone", "list_backbones", "register_init", "INITS", "ARCHS", "VisionTransformer"]
