"""ViT -> 4-scale feature pyramid (strides 4/8/16/32) for dense heads. Plain torch, no mm*/detectron2
imports, so any framework's backbone wrapper can hold one.

Two variants:

* ``'fpn'`` — the MAE paper's adapter (Li et al. 2021 "Benchmarking detection transfer learning with
  ViTs"; BEiT/MAE UperNet): features after 4 evenly spaced blocks (⌈d/4⌉, ⌈d/2⌉, ⌈3d/4⌉, d, 1-based),
  upsampled ×4 by two stride-2 deconvolutions (with norm + GELU between), ×2 by one deconvolution,
  kept, and max-pooled ×½. Channels stay ``embed_dim``; a standard FPN / UperNet follows.
* ``'simple'`` — ViTDet's simple feature pyramid (Li et al. 2022): the last block only; ×4 =
  ConvT–LN–GELU–ConvT, ×2 = ConvT, ×1 = identity, ×½ = max-pool; then 1×1 conv + LN and 3×3 conv + LN
  to ``out_channels`` each.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from .vit import VisionTransformer

STRIDES = (4, 8, 16, 32)


def evenly_spaced_blocks(depth: int) -> list[int]:
    """0-based indices of blocks ⌈d/4⌉, ⌈d/2⌉, ⌈3d/4⌉, d (1-based): [2, 5, 8, 11] for d = 12."""
    return [math.ceil(depth * q / 4) - 1 for q in (1, 2, 3, 4)]


def _norm2d(kind: str, c: int) -> nn.Module:
    return {"BN": lambda: nn.BatchNorm2d(c), "LN": lambda: LayerNorm2d(c), "SyncBN": lambda: nn.SyncBatchNorm(c)}[
        kind
    ]()


class ViTPyramid(nn.Module):
    """``encoder`` (our VisionTransformer) + a 4-scale adapter. ``forward(images)`` returns a tuple
    of 4 maps at strides 4, 8, 16, 32 (relative to the input)."""

    def __init__(
        self,
        encoder: VisionTransformer,
        variant: str = "fpn",
        out_indices: Sequence[int] | None = None,
        out_channels: int = 256,
        norm: str = "BN",
    ):
        super().__init__()
        # layout the encoder's maps are put in before the adapter's convolutions: None keeps the
        # encoder's (B, D, h, w) views of its (B, N, D) tokens, which are NHWC-strided;
        # tasks/dense/memory_format.set_memory_format sets it with the conv weights' layout.
        self.memory_format: torch.memory_format | None = None
        if variant not in ("fpn", "simple"):
            raise ValueError(f"unknown pyramid variant {variant!r} (fpn, simple)")
        # The adapters read block outputs before the encoder's final LayerNorm (Li et al. 2021,
        # ViTDet; mmseg's MAE backbone has final_norm=False), so it is dropped: a parameter without
        # gradient makes DDP raise in the second iteration of every multi-GPU det/seg run.
        encoder.norm = nn.Identity()
        # With windowed blocks the cls token is dropped after embedding (ViTDet): frozen, for the same
        # reason (it would get no gradient).
        if any(b.window_size for b in encoder.blocks):
            encoder.cls_token.requires_grad_(False)
        self.encoder, self.variant = encoder, variant
        D = encoder.embed_dim
        if variant == "fpn":
            self.out_indices = list(out_indices) if out_indices is not None else evenly_spaced_blocks(encoder.depth)
            if len(self.out_indices) != 4:
                raise ValueError(f"the fpn adapter needs 4 block indices, got {self.out_indices}")
            self.channels = [D] * 4
            self.fpn1 = nn.Sequential(
                nn.ConvTranspose2d(D, D, 2, 2), _norm2d(norm, D), nn.GELU(), nn.ConvTranspose2d(D, D, 2, 2)
            )
            self.fpn2 = nn.ConvTranspose2d(D, D, 2, 2)
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(2, 2)
        else:
            self.out_indices = [encoder.depth - 1]
            self.channels = [out_channels] * 4
            scales = []
            for s in (4.0, 2.0, 1.0, 0.5):
                if s == 4.0:
                    layers, c = (
                        [
                            nn.ConvTranspose2d(D, D // 2, 2, 2),
                            LayerNorm2d(D // 2),
                            nn.GELU(),
                            nn.ConvTranspose2d(D // 2, D // 4, 2, 2),
                        ],
                        D // 4,
                    )
                elif s == 2.0:
                    layers, c = [nn.ConvTranspose2d(D, D // 2, 2, 2)], D // 2
                elif s == 1.0:
                    layers, c = [], D
                else:
                    layers, c = [nn.MaxPool2d(2, 2)], D
                layers += [
                    nn.Conv2d(c, out_channels, 1, bias=False),
                    LayerNorm2d(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    LayerNorm2d(out_channels),
                ]
                scales.append(nn.Sequential(*layers))
            self.simple = nn.ModuleList(scales)

    @property
    def strides(self) -> list[int]:
        """4/8/16/32 for patch 16; other patch sizes scale every stride by patch/16."""
        p = self.encoder.patch_size
        return [s * p // 16 for s in STRIDES]

    @property
    def size_divisibility(self) -> int:
        return self.strides[-1]

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """detectron2-style ``{name: (channels, stride)}``."""
        return {f"p{i + 2}": (c, s) for i, (c, s) in enumerate(zip(self.channels, self.strides))}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.encoder.forward_intermediates(x, self.out_indices)
        if self.memory_format is not None:
            feats = [f.contiguous(memory_format=self.memory_format) for f in feats]
        if self.variant == "fpn":
            return tuple(op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats))
        return tuple(op(feats[0]) for op in self.simple)
