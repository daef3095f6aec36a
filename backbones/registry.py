"""The backbone registry: one name -> a ViT encoder + its weights.

A name is ``<init>_<arch>``, e.g. ``mae_vit_base_patch16`` or ``random_vit_demo_patch8``: the
initialisation picks a *converter* (official checkpoint layout -> our timm key names, in the spirit
of timm's ``checkpoint_filter_fn``) and any architecture switches that initialisation needs (BEiT:
relative position bias + layer scale); the architecture picks the ViT size (``backbones/vit.py``).

    from backbones import build_backbone
    enc = build_backbone("mae_vit_base_patch16", checkpoint="mae_pretrain_vit_base.pth")

Every initialisation is one ``@register_init`` entry below, next to its converter. The common
last step, ``adapt_to_model``, resamples the position embedding to the model's grid, resizes or
zero-initialises relative position tables, and drops classifier heads: a task never needs to know
which initialisation produced its backbone.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from timm.layers import resample_abs_pos_embed

from bench.errors import BenchError, CheckpointError

from .checkpoint import load_checkpoint_file, load_state_dict_checked, unwrap_state_dict
from .vit import ARCHS, VisionTransformer, arch_config, infer_rel_pos_grid, resize_rel_pos_table

# A converter takes what ``load_checkpoint_file`` returned and the path (for messages) and returns an
# encoder state dict in our (timm) key names.
Converter = Callable[[object, Path], dict]


@dataclass
class InitSpec:
    name: str
    converter: Converter | None
    description: str
    official_files: str = ""
    arch_overrides: dict = field(default_factory=dict)

    @property
    def needs_checkpoint(self) -> bool:
        return self.converter is not None


INITS: dict[str, InitSpec] = {}


def register_init(name: str, *, description: str, official_files: str = "", **arch_overrides):
    """Decorator registering ``fn`` as the converter of initialisation ``name``."""
    def wrap(fn: Converter | None):
        INITS[name] = InitSpec(name, fn, description, official_files, arch_overrides)
        return fn
    return wrap


def list_backbones(init: str | None = None) -> list[str]:
    return [f"{i}_{a}" for i in INITS for a in ARCHS if init in (None, i)]


def parse_name(name: str) -> tuple[str, str]:
    for init in sorted(INITS, key=len, reverse=True):
        if name.startswith(init + "_") and name[len(init) + 1:] in ARCHS:
            return init, name[len(init) + 1:]
    close = difflib.get_close_matches(name, list_backbones(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; run `bench backbones` to list them"
    raise BenchError(f"unknown backbone {name!r} (names are <init>_<arch>, inits: {', '.join(INITS)}){hint}")


def build_backbone(name: str, checkpoint: str | Path | None = None, *, trust_checkpoint: bool = False,
                   img_size: int | tuple | None = None, **overrides) -> VisionTransformer:
    """Encoder for ``name`` with the weights of ``checkpoint`` (converted from its official layout).

    ``img_size`` and other ``VisionTransformer`` keywords (``drop_path_rate``, ``use_rel_pos``,
    ``window_size``, ``global_blocks``, ``global_pool``, ``num_classes`` …) override the preset.
    """
    init, arch = parse_name(name)
    spec = INITS[init]
    cfg = arch_config(arch)
    cfg.update(spec.arch_overrides)
    if img_size is not None:
        cfg["img_size"] = img_size
    cfg.update(overrides)
    model = VisionTransformer(**cfg)
    model.init_name, model.arch_name, model.checkpoint = init, arch, checkpoint
    if checkpoint is None:
        if spec.needs_checkpoint:
            raise BenchError(f"backbone {name!r} needs --checkpoint (official files: {spec.official_files or 'see README'}; "
                             f"or pretrain one with `bench pretrain`)")
        return model
    path = Path(checkpoint)
    sd = spec.converter(load_checkpoint_file(path, trust=trust_checkpoint), path)
    sd = adapt_to_model(sd, model, path)
    allowed = [k for k in model.state_dict() if k.startswith(("head.", "fc_norm.")) or k.endswith("relative_position_bias_table")]
    load_state_dict_checked(model, sd, path, allow_missing=tuple(allowed))
    return model


# --------------------------------------------------------------------------------------------------
# Shared conversion steps
# --------------------------------------------------------------------------------------------------
NON_ENCODER_PREFIXES = ("decoder_", "mask_token", "head.", "lm_head.")
ENCODER_MARKERS = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight")


def is_our_layout(sd: dict) -> bool:
    return all(k in sd for k in ENCODER_MARKERS)


def adapt_to_model(sd: dict, model: VisionTransformer, path: Path) -> dict:
    """Fit an encoder state dict (our names) to ``model``: drop heads/decoders, resample ``pos_embed``
    to the model's grid, resize relative position tables to each block's grid, map a fine-tuned
    ``fc_norm`` onto ``norm`` (or back) as the model's pooling needs."""
    sd = {k: v for k, v in sd.items() if not k.startswith(NON_ENCODER_PREFIXES)}
    own = model.state_dict()
    missing_enc = [k for k in ENCODER_MARKERS if k not in sd]
    if missing_enc:
        raise CheckpointError(f"checkpoint {path} has no encoder key {missing_enc[0]!r} after conversion")
    # final norm: pretrain files have `norm`, fine-tuned global-pool files have `fc_norm`.
    uses_fc_norm = "fc_norm.weight" in own
    if uses_fc_norm:
        for k in ("norm.weight", "norm.bias"):
            sd.pop(k, None)
    elif "fc_norm.weight" in sd:
        for s in ("weight", "bias"):
            v = sd.pop(f"fc_norm.{s}")
            sd.setdefault(f"norm.{s}", v)
    # absolute position embedding
    if "pos_embed" in sd:
        if model.pos_embed is None:
            sd.pop("pos_embed")
        elif sd["pos_embed"].shape != model.pos_embed.shape:
            pe = sd["pos_embed"]
            n_old = pe.shape[1] - 1
            side = int(round(n_old ** 0.5))
            if side * side != n_old:
                raise CheckpointError(f"checkpoint {path}: pos_embed with {n_old} patch positions is not a square grid")
            sd["pos_embed"] = resample_abs_pos_embed(pe, list(model.pos_grid), old_size=[side, side], num_prefix_tokens=1)
    # relative position bias tables
    for k in [k for k in own if k.endswith("relative_position_bias_table")]:
        if k in sd:
            old = infer_rel_pos_grid(sd[k].shape[0])
            blk = int(k.split(".")[1])
            new = model.blocks[blk].attn.rel_pos_grid
            sd[k] = resize_rel_pos_table(sd[k], old, new)
    return sd


def _timm_layout(obj, path: Path) -> dict:
    sd, _ = unwrap_state_dict(obj, path)
    if not is_our_layout(sd):
        raise CheckpointError(f"checkpoint {path}: not a timm/MAE-layout ViT state dict; first keys {list(sd)[:10]} "
                              f"(known formats: {', '.join(INITS)})")
    return sd


# --------------------------------------------------------------------------------------------------
# Initialisations: one entry each, the converter right under its registration.
# --------------------------------------------------------------------------------------------------
register_init("random", description="random initialisation (MAE's init scheme; no checkpoint)")(None)


@register_init("mae", description="MAE (He et al. 2021): facebookresearch/mae releases or `bench pretrain`",
               official_files="mae_pretrain_vit_{base,large,huge}.pth, mae_visualize_vit_*.pth")
def convert_mae(obj, path: Path) -> dict:
    """facebookresearch/mae ``{'model': sd}`` in timm names; pretrain files also carry
    ``decoder_*`` / ``mask_token`` (dropped in adapt_to_model), fine-tuned ones ``fc_norm`` and
    ``head``. Our own ``bench pretrain`` checkpoints are the same layout."""
    return _timm_layout(obj, path)
