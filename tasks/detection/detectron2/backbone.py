"""``RegistryBackbone``: a registry ViT (``<init>_<arch>`` + checkpoint) as a detectron2 ``Backbone``.

It holds ``backbones.adapters.ViTPyramid``, the same encoder + adapter module the mmdet engine uses,
so both engines train the same network:

* ``variant='simple'`` (default): ViTDet's simple feature pyramid (Li et al. 2022, detectron2's
  ``SimpleFeaturePyramid``): last block -> scales 4, 2, 1, 1/2 -> ``out_channels`` each, plus
  ``p6`` by max-pooling (detectron2's ``LastLevelMaxPool``). Outputs ``p2..p6``; no FPN follows.
* ``variant='fpn'``: the MAE paper's adapter (Li et al. 2021): 4 evenly spaced blocks -> deconv x4,
  deconv x2, identity, max-pool; ``embed_dim`` channels each, named ``p2..p5``, for detectron2's
  ``FPN(bottom_up=...)``, which adds ``p6``.

Names follow detectron2: ``p<log2(stride)>``, so a patch-8 ViT gives ``p1..p4`` and heads that ask
for ``p2..p6`` fail by name (``check_feature_strides``) instead of using anchors at the wrong scale.
Defaults are ViTDet-B's (``mask_rcnn_vitdet_b_100ep.py``); ``global_blocks=None`` means ViTDet's
rule, the 4 evenly spaced blocks (2, 5, 8, 11 for depth 12; 5, 11, 17, 23 for 24).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from backbones.adapters import ViTPyramid, evenly_spaced_blocks
from backbones.registry import build_backbone, parse_name
from backbones.vit import arch_config
from bench.core.errors import BenchError


class RegistryBackbone(Backbone):
    """Registry encoder + 4-scale adapter as a detectron2 backbone (see the module docstring).

    ``img_size``: the training crop the position embedding (and the global blocks' relative
    position tables) are sized for; ``use_rel_pos``: ``'decomposed'`` (ViTDet, detectron2's
    ``rel_pos_h``/``rel_pos_w``), ``True``/``'beit'`` (BEiT table) or ``False``; ``square_pad``:
    pad every input to this square size (ViTDet: 1024), as ``SimpleFeaturePyramid(square_pad=)``.
    ``norm``: the norm inside the fpn adapter's x4 branch (``'BN'``, ``'SyncBN'``, ``'LN'``).
    """

    def __init__(
        self,
        name: str,
        checkpoint: str | None = None,
        *,
        variant: str = "simple",
        img_size: int = 1024,
        out_channels: int = 256,
        drop_path_rate: float = 0.1,
        use_rel_pos: bool | str = "decomposed",
        window_size: int = 14,
        global_blocks: Sequence[int] | None = None,
        out_indices: Sequence[int] | None = None,
        norm: str = "BN",
        top_block: bool | None = None,
        square_pad: int = 0,
        trust_checkpoint: bool = False,
    ):
        super().__init__()
        if variant not in ("simple", "fpn"):
            raise BenchError(
                f"RegistryBackbone: variant {variant!r}: choose 'simple' (ViTDet) or 'fpn' (Li et al. 2021)"
            )
        depth = arch_config(parse_name(name)[1])["depth"]
        if global_blocks is None:
            global_blocks = evenly_spaced_blocks(depth)
        bad = [b for b in global_blocks if not 0 <= b < depth]
        if bad:
            raise BenchError(
                f"RegistryBackbone: global_blocks {list(global_blocks)} do not fit {name} ({depth} blocks)"
            )
        encoder = build_backbone(
            name,
            checkpoint,
            trust_checkpoint=trust_checkpoint,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            global_blocks=tuple(global_blocks),
        )
        self.pyramid = ViTPyramid(encoder, variant, out_indices, out_channels, norm)
        self.num_layers = depth
        strides = self.pyramid.strides
        self._out_features = [f"p{int(math.log2(s))}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides, strict=True))
        self._out_feature_channels = dict(zip(self._out_features, self.pyramid.channels, strict=True))
        self.top_block = (variant == "simple") if top_block is None else bool(top_block)
        if self.top_block:  # detectron2's LastLevelMaxPool: max_pool2d(kernel 1, stride 2) of the last map
            top = f"p{int(math.log2(strides[-1])) + 1}"
            self._out_features.append(top)
            self._out_feature_strides[top] = strides[-1] * 2
            self._out_feature_channels[top] = self.pyramid.channels[-1]
        self._size_divisibility = strides[-1]
        self._square_pad = int(square_pad)

    @property
    def encoder(self):
        return self.pyramid.encoder

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self._named(
            (k, ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k]))
            for k in self._out_features
        )

    def _named(self, items) -> FeatureMaps:
        out = FeatureMaps(items)
        out.strides = self._out_feature_strides
        return out

    def forward(self, x):
        feats = list(self.pyramid(x))
        if self.top_block:
            feats.append(F.max_pool2d(feats[-1], kernel_size=1, stride=2, padding=0))
        return self._named(zip(self._out_features, feats, strict=True))


def last_level_max_pool(in_feature: str = "p5"):
    """detectron2's ``LastLevelMaxPool`` (FPN ``top_block``) reading ``in_feature``: its own is fixed
    to ``p5``, the stride-32 map of a patch-16 ViT; a patch-8 one has it as ``p4``."""
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    top = LastLevelMaxPool()
    top.in_feature = in_feature
    return top


@BACKBONE_REGISTRY.register()
def build_registry_backbone(cfg, input_shape):
    """yacs-config entry (``MODEL.BACKBONE.NAME: build_registry_backbone``): ``MODEL.REGISTRY_VIT``
    holds the RegistryBackbone keywords (``NAME``, ``CHECKPOINT``, ``VARIANT`` ...)."""
    opts = {k.lower(): v for k, v in dict(cfg.MODEL.REGISTRY_VIT).items()}
    return RegistryBackbone(**opts)


class FeatureMaps(dict):
    """The backbone's outputs: a head that asks for a feature the backbone does not make gets one line
    naming what there is and what to set (instead of detectron2's bare ``KeyError: 'p6'``)."""

    strides: dict = {}  # feature name -> stride, set by the backbone

    def __missing__(self, key):
        have = ", ".join(f"{k} (stride {self.strides[k]})" if k in self.strides else k for k in self)
        raise BenchError(
            f"a head asks for feature {key!r}, which RegistryBackbone does not output (it has {have}); set the "
            f"heads' in_features to these names and the anchor strides / pooler scales to theirs "
            f"(tasks.detection.detectron2.backbone.check_model lists every value)"
        )


def _first_conv_in(module):
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _rpn_mismatches(rpn, shapes) -> list[str]:
    names = list(rpn.in_features)
    missing = [n for n in names if n not in shapes]
    if missing:
        have = [k for k in shapes][: len(names)]
        strides = [shapes[k].stride for k in have]
        return [
            f"model.proposal_generator.in_features {names}: no {missing}; set {have} with "
            f"anchor_generator.strides={strides}"
        ]
    out = []
    want = [shapes[n].stride for n in names]
    got = [int(s) for s in getattr(rpn.anchor_generator, "strides", want)]
    if got != want:
        out.append(f"model.proposal_generator.anchor_generator.strides {got}: set {want} (the strides of {names})")
    channels = {shapes[n].channels for n in names}
    conv_in = _first_conv_in(rpn.rpn_head)
    if conv_in is not None and channels != {conv_in}:
        out.append(f"model.proposal_generator.head.in_channels {conv_in}: set {sorted(channels)[0]}")
    return out


def _roi_mismatches(heads, shapes) -> list[str]:
    out = []
    for kind in ("box", "mask", "keypoint"):
        names = getattr(heads, f"{kind}_in_features", None)
        pooler = getattr(heads, f"{kind}_pooler", None)
        if not names or pooler is None:
            continue
        missing = [n for n in names if n not in shapes]
        if missing:
            have = [k for k in shapes][: len(names)]
            scales = [f"1/{shapes[k].stride}" for k in have]
            out.append(
                f"model.roi_heads.{kind}_in_features {list(names)}: no {missing}; set {have} with {kind}_pooler.scales=({', '.join(scales)})"
            )
            continue
        want = [1.0 / shapes[n].stride for n in names]
        got = [float(lvl.spatial_scale) for lvl in pooler.level_poolers]
        if len(got) != len(want) or any(not math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, want)):
            scales = ", ".join(f"1/{shapes[n].stride}" for n in names)
            out.append(f"model.roi_heads.{kind}_pooler.scales {[round(g, 6) for g in got]}: set ({scales})")
        head = getattr(heads, f"{kind}_head", None)
        conv_in = None if head is None else _first_conv_in(head)
        channels = {shapes[n].channels for n in names}
        if conv_in is not None and channels != {conv_in}:
            out.append(f"model.roi_heads.{kind}_head input channels {conv_in}: set {sorted(channels)[0]}")
    return out


def check_model(model) -> None:
    """Refuse a detectron2 model whose heads do not fit its backbone's feature maps, with every
    mismatch in one line and the value to set: the RPN's / ROI heads' ``in_features`` must be backbone
    outputs, the anchor strides and pooler scales those of the maps they read, the heads' input
    channels theirs."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    shapes = backbone.output_shape()
    out = []
    rpn = getattr(model, "proposal_generator", None)
    if rpn is not None and hasattr(rpn, "in_features"):
        out += _rpn_mismatches(rpn, shapes)
    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        out += _roi_mismatches(heads, shapes)
    if out:
        have = ", ".join(f"{k} (stride {v.stride}, {v.channels} ch)" for k, v in shapes.items())
        raise BenchError(f"the heads do not fit the backbone, which outputs {have}: " + "; ".join(out))
