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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from timm.layers import resample_abs_pos_embed

from bench.core.checkpoint import load_checkpoint_file, load_state_dict_checked, unwrap_state_dict
from bench.core.errors import BenchError, CheckpointError

from .vit import ARCHS, VisionTransformer, arch_config, infer_rel_pos_grid, resize_rel_pos_table

REL_POS_KEYS = ("relative_position_bias_table", "rel_pos_h", "rel_pos_w")

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
    per_arch: dict = field(default_factory=dict)  # {arch: {kw: value}}: e.g. MoCo v3's 12-head ViT-S

    @property
    def needs_checkpoint(self) -> bool:
        return self.converter is not None


INITS: dict[str, InitSpec] = {}


def register_init(
    name: str, *, description: str, official_files: str = "", per_arch: dict | None = None, **arch_overrides
):
    """Decorator registering ``fn`` as the converter of initialisation ``name``. ``arch_overrides``
    apply to every architecture, ``per_arch[arch]`` only to that one (after ``arch_overrides``)."""

    def wrap(fn: Converter | None):
        INITS[name] = InitSpec(name, fn, description, official_files, arch_overrides, dict(per_arch or {}))
        return fn

    return wrap


def list_backbones(init: str | None = None) -> list[str]:
    return [f"{i}_{a}" for i in INITS for a in ARCHS if init in (None, i)]


def parse_name(name: str) -> tuple[str, str]:
    for init in sorted(INITS, key=len, reverse=True):
        if name.startswith(init + "_") and name[len(init) + 1 :] in ARCHS:
            return init, name[len(init) + 1 :]
    close = difflib.get_close_matches(name, list_backbones(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `bench backbones` to list them"
    raise BenchError(f"unknown backbone {name!r} (names are <init>_<arch>, inits: {', '.join(INITS)}){hint}")


def build_backbone(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    trust_checkpoint: bool = False,
    img_size: int | tuple | None = None,
    **overrides,
) -> VisionTransformer:
    """Encoder for ``name`` with the weights of ``checkpoint`` (converted from its official layout).

    ``img_size`` and other ``VisionTransformer`` keywords (``drop_path_rate``, ``use_rel_pos``,
    ``window_size``, ``global_blocks``, ``global_pool``, ``num_classes`` …) override the preset.
    """
    init, arch = parse_name(name)
    spec = INITS[init]
    cfg = arch_config(arch)
    cfg.update(spec.arch_overrides)
    cfg.update(spec.per_arch.get(arch, {}))
    if img_size is not None:
        cfg["img_size"] = img_size
    cfg.update(overrides)
    model = VisionTransformer(**cfg)
    model.init_name, model.arch_name, model.checkpoint = init, arch, checkpoint
    if checkpoint is None:
        if spec.needs_checkpoint:
            raise BenchError(
                f"backbone {name!r} needs --checkpoint (official files: {spec.official_files or 'see README'}; "
                f"or pretrain one with `bench pretrain`)"
            )
        return model
    path = Path(checkpoint)
    sd = spec.converter(read_checkpoint(path, trust=trust_checkpoint), path)
    sd = adapt_to_model(sd, model, path)
    allowed = [k for k in model.state_dict() if k.startswith(("head.", "fc_norm.")) or k.endswith(REL_POS_KEYS)]
    load_state_dict_checked(model, sd, path, allow_missing=tuple(allowed))
    if model.pos_embed is not None and not model.pos_embed.any():
        # an all-zero position embedding stands for none (BEiT without --abs_pos_emb): keep it zero
        model.pos_embed.requires_grad_(False)
    return model


def read_checkpoint(path: Path, trust: bool = False):
    """``load_checkpoint_file``, plus detectron2's ``.pkl`` files (its model zoo: a pickled
    ``{'model': {name: ndarray}}``), which are plain pickles: read only with ``trust`` (as
    detectron2's ``Checkpointer`` reads them, ``encoding='latin1'``), arrays made tensors."""
    if path.suffix != ".pkl":
        return load_checkpoint_file(path, trust=trust)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not trust:
        raise CheckpointError(
            f"checkpoint {path} is a pickle (.pkl): loading it runs arbitrary code from the file; "
            f"if you trust its source, pass --trust-checkpoint"
        )
    import pickle

    import numpy as np

    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # a pickle can fail in any way
        raise CheckpointError(f"checkpoint {path} could not be unpickled: {type(e).__name__}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = dict(
            obj, model={k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in obj["model"].items()}
        )
    return obj


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
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: key {k!r} holds a {type(v).__name__}, not a tensor")
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
        elif sd["pos_embed"].shape != model.pos_embed.shape and not (
            sd["pos_embed"].ndim == 3 and sd["pos_embed"].shape[2] != model.pos_embed.shape[2]
        ):
            # (another width is left to load_state_dict_checked, which names the first mismatched key)
            pe = sd["pos_embed"]
            check_pos_embed_shape(pe, model.pos_embed.shape[-1], path)
            n_old = pe.shape[1] - 1
            side = int(round(n_old**0.5))
            sd["pos_embed"] = resample_abs_pos_embed(
                pe, list(model.pos_grid), old_size=[side, side], num_prefix_tokens=1
            )
    # relative position bias tables
    for k in [k for k in own if k.endswith("relative_position_bias_table")]:
        if k in sd:
            t = sd[k]
            if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[1] != own[k].shape[1]:
                raise CheckpointError(
                    f"checkpoint {path}: key {k!r} has shape {_shape(t)}, the model needs "
                    f"(L, {own[k].shape[1]}) (L = (2h-1)(2w-1)+3 for an h x w grid; another "
                    f"number of heads?)"
                )
            try:
                old = infer_rel_pos_grid(t.shape[0])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {path}: key {k!r}: {e}") from None
            blk = int(k.split(".")[1])
            new = model.blocks[blk].attn.rel_pos_grid
            sd[k] = resize_rel_pos_table(sd[k], old, new)
    # decomposed (ViTDet) tables: linear interpolation, as detectron2's get_rel_pos does at run time
    for k in [k for k in own if k.endswith(("rel_pos_h", "rel_pos_w"))]:
        if k in sd and sd[k].shape != own[k].shape:
            t = sd[k]
            if t.ndim != 2 or t.shape[1] != own[k].shape[1]:
                raise CheckpointError(
                    f"checkpoint {path}: key {k!r} has shape {tuple(t.shape)}, the model needs "
                    f"(L, {own[k].shape[1]}) (another head size?)"
                )
            sd[k] = torch.nn.functional.interpolate(t.float().T[None], size=own[k].shape[0], mode="linear")[0].T.to(
                t.dtype
            )
    has_decomposed = any(k.endswith("rel_pos_h") for k in sd)
    if has_decomposed and not any(k.endswith("rel_pos_h") for k in own):
        raise CheckpointError(
            f"checkpoint {path} has decomposed relative position tables (e.g. "
            f"{next(k for k in sd if k.endswith('rel_pos_h'))!r}) but the model was built without "
            f"them; build it with use_rel_pos='decomposed' (the vitdet_<arch> backbones)"
        )
    return sd


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else f"(a {type(t).__name__}, not a tensor)"


def check_pos_embed_shape(pe, dim: int, path) -> None:
    """A ``pos_embed`` to be resampled must be (1, 1 + h*w, dim) with a square h x w grid."""
    if not isinstance(pe, torch.Tensor) or pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != dim or pe.shape[1] < 2:
        raise CheckpointError(
            f"checkpoint {path}: key 'pos_embed' has shape {_shape(pe)}, the model needs "
            f"(1, 1 + h*w, {dim}) (a cls slot and a square grid of patch positions)"
        )
    n = pe.shape[1] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise CheckpointError(f"checkpoint {path}: pos_embed with {n} patch positions is not a square grid")


def _timm_layout(obj, path: Path) -> dict:
    sd, _ = unwrap_state_dict(obj, path)
    if not is_our_layout(sd):
        raise CheckpointError(
            f"checkpoint {path}: not a timm/MAE-layout ViT state dict; first keys {list(sd)[:10]} "
            f"(known formats: {', '.join(INITS)})"
        )
    return sd


# --------------------------------------------------------------------------------------------------
# Initialisations: one entry each, the converter right under its registration. Official checkpoint
# layouts. ``detect_format`` names the layout of a state dict so that a file given
# to the wrong initialisation gets a hint instead of a wall of missing keys.
# --------------------------------------------------------------------------------------------------
register_init("random", description="random initialisation (MAE's init scheme; no checkpoint)")(None)
KNOWN_FORMATS = (
    "timm/DeiT/MAE {'model': sd} or bare sd with patch_embed.proj + blocks.N.attn.qkv (mae_, supervised_); "
    "MoCo v3 {'state_dict': sd} with module.base_encoder.* (mocov3_); "
    "BEiT {'model': sd} with blocks.N.attn.q_bias/v_bias, gamma_1/2, (rel_pos_bias.)relative_position_bias_table (beit_); "
    "mmpretrain/mmselfsup {'state_dict': sd} with backbone.patch_embed.projection + backbone.layers.N (mae_, supervised_); "
    "detectron2 ViTDet detector {'model': sd} with backbone.net.* (.pkl needs --trust-checkpoint) (vitdet_)"
)

D2_PREFIXES = ("backbone.net.", "backbone.pyramid.encoder.")  # detectron2's ViTDet / our detectron2 plugin

MOCO_PREFIXES = ("module.base_encoder.", "base_encoder.")  # DDP-saved (official) / single-process


def detect_format(sd: dict) -> str | None:
    """'mocov3', 'detectron2', 'mmpretrain', 'beit', 'timm' or None for a state dict."""
    keys = list(sd)
    if any(k.startswith(MOCO_PREFIXES) for k in keys):
        return "mocov3"
    if any(k in sd for k in (p + "patch_embed.proj.weight" for p in D2_PREFIXES)):
        return "detectron2"
    if any(k in sd for k in ("backbone.patch_embed.projection.weight", "patch_embed.projection.weight")):
        return "mmpretrain"
    if any(
        k.endswith(("attn.q_bias", "gamma_1", "relative_position_index")) or k.startswith("rel_pos_bias.") for k in keys
    ):
        return "beit"
    if is_our_layout(sd):
        return "timm"
    return None


def _strip_module(sd: dict) -> dict:
    """Drop a DistributedDataParallel ``module.`` prefix carried by every key (not MoCo's: handled there)."""
    if sd and all(k.startswith("module.") for k in sd) and not any(k.startswith("module.base_encoder.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _unknown(path: Path, sd: dict, init: str, fmt: str | None = None) -> CheckpointError:
    hint = ""
    if fmt is not None:
        use = {
            "mocov3": "mocov3",
            "beit": "beit",
            "mmpretrain": "mae or supervised",
            "timm": "mae or supervised",
            "detectron2": "vitdet",
        }[fmt]
        hint = f"; it looks like a {fmt} checkpoint: use the {use}_<arch> backbone"
    return CheckpointError(
        f"checkpoint {path} is not a {init} checkpoint{hint}; first keys {list(sd)[:10]}; "
        f"known formats: {KNOWN_FORMATS}"
    )


def _block_ids(sd: dict, prefix: str = "blocks.") -> list[int]:
    return sorted(
        {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix) and k[len(prefix)].isdigit()}
    )


# mmpretrain (and mmselfsup 1.x / mmcls) ViT names -> timm names, per block. The mapping is that of
# mmpretrain's tools/model_converters/deit3_to_mmpretrain.py (timm -> mmpretrain), inverted.
_MM_BLOCK = (
    ("ln1.", "norm1."),
    ("attn.qkv.", "attn.qkv."),
    ("attn.proj.", "attn.proj."),
    ("attn.gamma1.weight", "ls1.gamma"),
    ("ln2.", "norm2."),
    ("ffn.layers.0.0.", "mlp.fc1."),
    ("ffn.layers.1.", "mlp.fc2."),
    ("ffn.gamma2.weight", "ls2.gamma"),
)
# Top-level backbone keys. ``ln1`` is the final norm (``final_norm=True``); ``ln2`` the norm after
# average pooling (``out_type='avg_featmap'``, fine-tuned models), i.e. timm's ``fc_norm``.
_MM_TOP = (
    ("patch_embed.projection.", "patch_embed.proj."),
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("ln1.", "norm."),
    ("ln2.", "fc_norm."),
)


def convert_mmpretrain(sd: dict, path: Path) -> dict:
    """``{'state_dict'}`` of an mmpretrain / mmselfsup ViT (``MAEViT`` or ``VisionTransformer``
    backbone): keep ``backbone.*`` (``neck.*`` = MAE decoder, ``head.*``, ``data_preprocessor.*``
    dropped) and rename to timm names. A backbone key we have no name for is an error."""
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {}
    for k, v in sd.items():
        new = None
        if k.startswith("layers."):
            i, _, rest = k[len("layers.") :].partition(".")
            for old, ours in _MM_BLOCK:
                if i.isdigit() and rest.startswith(old):
                    new = f"blocks.{i}.{ours}{rest[len(old) :]}"
                    break
        elif k == "mask_token":  # mmpretrain's BEiT/SimMIM backbones; not part of the encoder
            continue
        else:
            for old, ours in _MM_TOP:
                if k == old or (old.endswith(".") and k.startswith(old)):
                    new = ours + k[len(old) :]
                    break
        if new is None:
            raise CheckpointError(
                f"checkpoint {path}: mmpretrain key 'backbone.{k}' has no counterpart in our ViT "
                f"(supported: patch_embed.projection, cls_token, pos_embed, layers.N.{{ln1,attn.qkv,"
                f"attn.proj,attn.gamma1,ln2,ffn.layers.0.0,ffn.layers.1,ffn.gamma2}}, ln1, ln2)"
            )
        out[new] = v
    return out


@register_init(
    "mae",
    description="MAE (He et al. 2021): facebookresearch/mae releases, mmpretrain/mmselfsup MAE, or `bench pretrain`",
    official_files="mae_pretrain_vit_{base,large,huge}.pth, mae_visualize_vit_*.pth, mmpretrain mae_vit-*_8xb512-*.pth",
)
def convert_mae(obj, path: Path) -> dict:
    """facebookresearch/mae ``{'model': sd}`` in timm names; pretrain files also carry
    ``decoder_*`` / ``mask_token`` (dropped in adapt_to_model), fine-tuned ones ``fc_norm`` and
    ``head``. Our own ``bench pretrain`` checkpoints are the same layout. mmpretrain / mmselfsup
    MAE checkpoints (``{'state_dict'}`` with ``backbone.layers.N``) are recognised and renamed."""
    return _timm_or_mmpretrain(_strip_module(unwrap_state_dict(obj, path)[0]), path, "mae")


@register_init(
    "supervised",
    description="supervised ImageNet ViT: DeiT / timm releases or `bench pretrain --method supervised`",
    official_files="deit_{tiny,small,base}_patch16_224-*.pth (facebookresearch/deit), "
    "timm vit_*_patch16_224 *.safetensors / *.pth",
)
def convert_supervised(obj, path: Path) -> dict:
    """A timm / DeiT classifier (``{'model': sd}``, ``{'model_ema': sd}`` or a bare sd, ``.pth`` or
    ``.safetensors``): the classifier ``head.*`` is dropped (in adapt_to_model).

    Distilled DeiT checkpoints (``dist_token``, ``head_dist``, a position embedding with two prefix
    slots) are refused: their encoder attends to a second prefix token, so dropping it would
    silently change every feature, and the MAE paper's supervised baseline is a plain ViT trained
    from scratch (its Table 3/A.2 recipe), not a distilled one. Use the non-distilled DeiT files."""
    sd, _ = unwrap_state_dict(obj, path)
    sd = _strip_module(sd)
    if "dist_token" in sd or any(k.startswith("head_dist.") for k in sd):
        raise CheckpointError(
            f"checkpoint {path} is a distilled DeiT (key 'dist_token'/'head_dist'): its encoder uses a "
            f"second prefix token that our ViT does not have; use a non-distilled DeiT/timm ViT file"
        )
    return _timm_or_mmpretrain(sd, path, "supervised")


def _timm_or_mmpretrain(sd: dict, path: Path, init: str) -> dict:
    """A state dict already in timm names, or an mmpretrain one renamed to them; else a one-line error."""
    fmt = detect_format(sd)
    if fmt == "mmpretrain":
        return convert_mmpretrain(sd, path)
    if fmt != "timm":
        raise _unknown(path, sd, init, fmt)
    return sd


@register_init(
    "mocov3",
    description="MoCo v3 (Chen et al. 2021): facebookresearch/moco-v3 releases or `bench pretrain --method mocov3`",
    official_files="vit-s-300ep.pth.tar, vit-b-300ep.pth.tar (facebookresearch/moco-v3 CONFIG.md)",
    per_arch={"vit_small_patch16": dict(num_heads=12)},
)
def convert_mocov3(obj, path: Path) -> dict:
    """facebookresearch/moco-v3 ``main_moco.py`` checkpoints: ``{'epoch', 'arch', 'state_dict',
    'optimizer', 'scaler'}`` with ``module.base_encoder.*``, ``module.momentum_encoder.*`` and
    ``module.predictor.*``. As the official ``main_lincls.py`` / ``convert_to_deit.py`` do, the base
    encoder is kept without its ``head.*`` (the 3-layer projection MLP) and the prefix is stripped.
    Files already converted by ``convert_to_deit.py`` (``{'model': sd}``, timm names) and our own
    ``bench pretrain --method mocov3`` exports load as they are.

    MoCo v3's ViT-S has 12 heads of 32 channels (moco-v3 ``vits.py``), unlike DeiT-S (6): the
    registry builds ``mocov3_vit_small_patch16`` with ``num_heads=12`` (``per_arch`` above); head
    count is not stored in the file, and the wrong one would load silently and compute something
    else. The fixed 2-D sin-cos ``pos_embed`` is loaded from the file (MoCo's layout puts the row
    coordinate first, MAE's the column), never regenerated. The frozen random patch projection
    (``--stop-grad-conv1``) is an ordinary ``patch_embed.proj`` here."""
    sd, _ = unwrap_state_dict(obj, path)
    if detect_format(sd) == "mocov3":
        prefix = next(p for p in MOCO_PREFIXES if any(k.startswith(p) for k in sd))
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    sd = _strip_module(sd)
    if "patch_embed.proj.0.weight" in sd:
        raise CheckpointError(
            f"checkpoint {path} is a MoCo v3 conv-stem ViT (key 'patch_embed.proj.0.weight', "
            f"vit_conv_*): only the patchify-stem ViTs are supported"
        )
    fmt = detect_format(sd)
    if fmt != "timm":
        raise _unknown(path, sd, "mocov3", fmt)
    return sd


@register_init(
    "beit",
    description="BEiT (Bao et al. 2021): microsoft/unilm releases or `bench pretrain --method beit`",
    # the ImageNet-1K file first (the paper's BEiT data; ViT-B only), then ImageNet-22K (ViT-B and -L)
    official_files="beit_base_patch16_224_pt1k_800ep.pth (microsoft/unilm beit2/README.md: ImageNet-1K 800 epochs; "
    "absolute position embedding and no relative bias or layer scale), "
    "beit_{base,large}_patch16_224_pt22k.pth (microsoft/unilm beit/README.md: ImageNet-22K)",
    use_rel_pos=True,
    init_values=0.1,
)
def convert_beit(obj, path: Path) -> dict:
    """microsoft/unilm BEiT ``{'model': sd}`` (pretraining: ``VisionTransformerForMaskedImageModeling``
    in ``beit/modeling_pretrain.py``; fine-tuned: ``beit/modeling_finetune.py``) -> our names.

    * ``attn.qkv.weight`` has no bias; ``attn.q_bias`` / ``attn.v_bias`` become
      ``attn.qkv.bias = cat(q_bias, 0, v_bias)``, exactly what BEiT's forward builds. A zero key bias
      is not an approximation: a key bias ``b`` adds ``q·b`` to every logit of query ``q``, the same
      for all keys, and softmax over the keys is invariant to that shift; BEiT leaves it out for
      that reason.
    * ``blocks.N.gamma_1`` / ``gamma_2`` -> ``blocks.N.ls1.gamma`` / ``ls2.gamma`` (layer scale);
      a file without them (``layer_scale_init_value=0``) gets ones, the same function.
    * relative position bias: per-block ``blocks.N.attn.relative_position_bias_table``, or the one
      shared ``rel_pos_bias.relative_position_bias_table`` of pretraining (``--rel_pos_bias``, the
      default of ``run_beit_pretraining.py``) copied into every block, as unilm's
      ``run_class_finetuning.py`` does. Both tables are in BEiT's layout (3 cls entries last).
      ``relative_position_index`` buffers are dropped (recomputed).
    * ``pos_embed``: BEiT pretrains without an absolute position embedding (``--abs_pos_emb`` off);
      then a zero ``pos_embed`` is supplied, which adds nothing, and ``build_backbone`` freezes it,
      so fine-tuning (e.g. UperNet on ADE20K) does not learn one BEiT's recipe does not have (pass
      ``use_abs_pos=False`` to build_backbone to have none at all). A file with one keeps it, trainable.
    * ``lm_head``, ``mask_token`` (and a fine-tuned ``head``) are dropped; ``cls_token`` is kept.
    Our own ``bench pretrain --method beit`` exports (timm names, shared table already expanded)
    load as they are."""
    sd, _ = unwrap_state_dict(obj, path)
    sd = _strip_module(sd)
    fmt = detect_format(sd)
    if fmt == "timm":
        if not any(k.endswith("ls1.gamma") for k in sd):
            raise CheckpointError(
                f"checkpoint {path} has no layer scale (key 'blocks.0.ls1.gamma'): not a BEiT "
                f"checkpoint; use mae_/supervised_/mocov3_ for plain ViTs"
            )
        return _zero_pos_embed_if_absent(sd)
    if fmt != "beit":
        raise _unknown(path, sd, "beit", fmt)
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    if "patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"checkpoint {path} has no encoder key 'patch_embed.proj.weight'")
    dim = sd["patch_embed.proj.weight"].shape[0]
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    for i in _block_ids(sd):
        p = f"blocks.{i}."
        q, v = sd.pop(p + "attn.q_bias", None), sd.pop(p + "attn.v_bias", None)
        if (q is None) != (v is None):
            raise CheckpointError(f"checkpoint {path} has only one of '{p}attn.q_bias' / '{p}attn.v_bias'")
        if q is not None:
            sd[p + "attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
        elif p + "attn.qkv.bias" not in sd:  # qkv_bias=False: a zero bias is the same function
            sd[p + "attn.qkv.bias"] = torch.zeros(
                sd[p + "attn.qkv.weight"].shape[0], dtype=sd[p + "attn.qkv.weight"].dtype
            )
        for theirs, ours in (("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma")):
            g = sd.pop(p + theirs, None)
            sd[p + ours] = g if g is not None else torch.ones(dim)
        if shared is not None:
            if p + "attn.relative_position_bias_table" in sd:
                raise CheckpointError(
                    f"checkpoint {path} has both a shared and a per-block relative position table "
                    f"('{p}attn.relative_position_bias_table')"
                )
            sd[p + "attn.relative_position_bias_table"] = shared.clone()
    return _zero_pos_embed_if_absent(sd)


def _zero_pos_embed_if_absent(sd: dict) -> dict:
    """BEiT without an absolute position embedding == ours with a zero one (it adds nothing). Its
    grid is the relative position table's (resampling zeros gives zeros anyway)."""
    if "pos_embed" not in sd and "patch_embed.proj.weight" in sd:
        table = next((t for k, t in sd.items() if k.endswith("relative_position_bias_table")), None)
        side = infer_rel_pos_grid(table.shape[0])[0] if table is not None else 1
        w = sd["patch_embed.proj.weight"]
        sd["pos_embed"] = torch.zeros(1, side * side + 1, w.shape[0], dtype=w.dtype)
    return sd


@register_init(
    "vitdet",
    description="ViTDet backbones of detectors trained with detectron2 (Li et al. 2022): "
    "decomposed relative position, the backbone.net.* weights",
    official_files="detectron2 ViTDet model zoo model_final_*.pkl (needs --trust-checkpoint), "
    "DetectionCheckpointer model_*.pth",
    use_rel_pos="decomposed",
)
def convert_vitdet(obj, path: Path) -> dict:
    """A detectron2 detector checkpoint (``{'model': sd}``; ``.pkl`` of its model zoo or a
    ``DetectionCheckpointer`` ``.pth``) with a ViTDet backbone: ``backbone.net.*`` (detectron2's
    ``ViT`` inside ``SimpleFeaturePyramid``) or ``backbone.pyramid.encoder.*`` (our detectron2
    plugin). detectron2's ViT uses timm's block names (``patch_embed.proj``, ``blocks.N.{norm1,
    attn.qkv, attn.proj, attn.rel_pos_h, attn.rel_pos_w, norm2, mlp.fc1, mlp.fc2}``, ``pos_embed``),
    so the prefix is stripped; the pyramid, neck and heads are dropped. ViTDet has no cls token
    (its ``pos_embed`` keeps the pretraining cls slot when ``pretrain_use_cls_token``) and no final
    norm: a zero ``cls_token``, a zero cls slot when ``pos_embed`` has none, and a default
    LayerNorm are supplied; the dense adapters drop the cls token and the final norm, so the
    features are detectron2's."""
    sd, _ = unwrap_state_dict(obj, path)
    sd = _strip_module(sd)
    if detect_format(sd) != "detectron2":
        raise _unknown(path, sd, "vitdet", detect_format(sd))
    prefix = next(p for p in D2_PREFIXES if p + "patch_embed.proj.weight" in sd)
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    bad = [k for k in sd if ".residual." in k]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: key 'backbone.net.{bad[0]}' is a ViTDet residual block "
            f"(residual_block_indexes), which our ViT does not have"
        )
    w = sd["patch_embed.proj.weight"]
    dim = w.shape[0]
    sd.setdefault("cls_token", torch.zeros(1, 1, dim, dtype=w.dtype))
    pe = sd.get("pos_embed")
    if pe is not None:
        if not isinstance(pe, torch.Tensor) or pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != dim:
            need = f"a ViTDet backbone needs (1, h*w, {dim}) or (1, 1 + h*w, {dim})"
            raise CheckpointError(f"checkpoint {path}: key '{prefix}pos_embed' has shape {_shape(pe)}, {need}")
        n = pe.shape[1]
        side = int(round(n**0.5))
        if side * side == n:  # pretrain_use_cls_token=False: no cls slot
            sd["pos_embed"] = torch.cat([torch.zeros(1, 1, dim, dtype=pe.dtype), pe], dim=1)
    sd.setdefault("norm.weight", torch.ones(dim, dtype=w.dtype))
    sd.setdefault("norm.bias", torch.zeros(dim, dtype=w.dtype))
    return sd
