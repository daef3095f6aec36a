"""``RegistryViT``: any registry backbone as an mmseg / mmdet backbone (``docs/plugins.md``).

Put it in a config as ``backbone=dict(type='RegistryViT', name='mae_vit_base_patch16',
checkpoint='mae_pretrain_vit_base.pth', img_size=512, variant='fpn')``. Importing this module
registers it in mmseg's and mmdet's ``MODELS`` (one class, two registries), registers
``ViTLayerDecayOptimizerConstructor`` in mmengine's optimizer-wrapper-constructor registry, makes
mmseg's own ``LayerDecayOptimizerConstructor`` / ``LearningRateDecayOptimizerConstructor`` apply
its rule to a ``RegistryViT`` (mmseg's know only its ``backbone.layers.N`` names), and registers
``RegistryViTCheckHook`` (mmengine hook: ``check_model`` before training / testing).

Weights are loaded at construction by the registry (with its converters and safe loading), so
``init_weights`` does nothing for the encoder: mmengine would otherwise re-initialise it.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS

from backbones.adapters import ViTPyramid
from backbones.registry import INITS, build_backbone, parse_name
from bench.core.errors import BenchError


class CheckpointLayoutWarning(UserWarning):
    """A checkpoint whose contents suggest another initialisation than the backbone name says."""


class RegistryViT(BaseModule):
    """Registry encoder + 4-scale adapter (``variant='fpn'``: MAE/BEiT/Li et al.; ``'simple'``: ViTDet).

    ``use_rel_pos`` (default on, as the MAE paper does for every initialisation in dense transfer)
    adds relative position bias, zero-initialised where the checkpoint has none. ``window_size`` and
    ``global_blocks`` give ViTDet's windowed attention; ``img_size`` is the training crop the
    position embedding is resampled to (other input sizes are interpolated on the fly).
    ``with_cp`` (mmcv's name): activation checkpointing of every encoder block
    (``bench.core.engine.enable_grad_checkpointing``), e.g. ViT-L at 1024 px.

    Weights: ``checkpoint`` (any layout the registry converts). mm's conventions are accepted too:
    ``pretrained`` (what mmseg's ``EncoderDecoder`` passes down from ``model.pretrained``) and
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` mean the same file. ``structure_only=True``
    builds the architecture of ``name`` (its initialisation's layer scale, biases, ...) with random
    weights, for weights loaded later (``load_from``) or FLOP counts.
    """

    def __init__(
        self,
        name: str,
        checkpoint: str | None = None,
        img_size: int | Sequence[int] = 512,
        variant: str = "fpn",
        out_indices: Sequence[int] | None = None,
        out_channels: int = 256,
        drop_path_rate: float = 0.1,
        use_rel_pos: bool | str = True,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        norm: str = "BN",
        trust_checkpoint: bool = False,
        with_cp: bool = False,
        structure_only: bool = False,
        pretrained: str | None = None,
        init_cfg=None,
    ):
        checkpoint = _weights_file(name, checkpoint, pretrained, init_cfg, structure_only)
        super().__init__(init_cfg=None)  # the weights come from checkpoint, never from mmengine's init
        kw = dict(
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            global_blocks=tuple(global_blocks),
        )
        if structure_only:
            encoder = _structure(name, **kw)
        else:
            encoder = build_backbone(name, checkpoint, trust_checkpoint=trust_checkpoint, **kw)
            if checkpoint is not None:
                warn_if_other_init(name, checkpoint, trust_checkpoint)
        if with_cp:  # mmcv's name: recompute every block in backward (activation memory -> compute)
            from backbones.vit import Block
            from bench.core.engine import enable_grad_checkpointing

            enable_grad_checkpointing(encoder, Block)
        self.pyramid = ViTPyramid(encoder, variant, out_indices, out_channels, norm)
        self.num_layers = encoder.depth

    @property
    def encoder(self):
        return self.pyramid.encoder

    @property
    def strides(self) -> list[int]:
        return list(self.pyramid.strides)

    @property
    def channels(self) -> list[int]:
        return list(self.pyramid.channels)

    def init_weights(self):
        """The encoder's weights come from the registry; only the adapter keeps PyTorch's default init."""
        self._is_init = True

    def forward(self, x):
        return self.pyramid(x)


def _weights_file(name: str, checkpoint, pretrained, init_cfg, structure_only: bool):
    """The one weights file of a ``RegistryViT`` from ``checkpoint`` / ``pretrained`` / ``init_cfg``;
    BenchError naming the config key for anything else."""
    init, _ = parse_name(name)
    where = f"RegistryViT(name={name!r})"
    named = {}
    if checkpoint is not None:
        named["checkpoint"] = str(checkpoint)
    if pretrained is not None:
        named["pretrained"] = str(pretrained)  # mmseg: model.pretrained, passed down by EncoderDecoder
    if init_cfg is not None:
        cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
        for c in cfgs:
            if not (
                isinstance(c, dict)
                and c.get("type") == "Pretrained"
                and c.get("checkpoint")
                and c.get("prefix") is None
            ):
                raise BenchError(
                    f"{where}: key 'init_cfg' {c!r} is not supported: the encoder's weights come from "
                    f"key 'checkpoint' (any layout `bench backbones` converts); "
                    f"init_cfg=dict(type='Pretrained', checkpoint=FILE) means the same"
                )
            named["init_cfg.checkpoint"] = str(c["checkpoint"])
    if len(set(named.values())) > 1:
        raise BenchError(
            f"{where}: two weights files, {', '.join(f'{k}={v!r}' for k, v in named.items())}; keep one "
            f"(key 'checkpoint'; with mmseg's _base_ configs set model.pretrained=None)"
        )
    file = next(iter(named.values()), None)
    if structure_only:
        if file is not None:
            raise BenchError(
                f"{where}: structure_only=True builds random weights, but "
                f"{next(iter(named))}={file!r} names a weights file; drop one of them"
            )
        return None
    if file is None and INITS[init].needs_checkpoint:
        raise BenchError(
            f"{where}: key 'checkpoint' is not set, and {init}_ weights come from a file "
            f"(official: {INITS[init].official_files or 'see README'}); set checkpoint=FILE, or "
            f"structure_only=True for the architecture with random weights (weights loaded later)"
        )
    return file


def _structure(name: str, **overrides):
    """The encoder ``build_backbone(name, checkpoint)`` would give, with random weights: the same
    architecture keywords (the init's own, e.g. BEiT's layer scale) and no file."""
    from backbones.vit import VisionTransformer, arch_config

    init, arch = parse_name(name)
    spec = INITS[init]
    cfg = arch_config(arch)
    cfg.update(spec.arch_overrides)
    cfg.update(spec.per_arch.get(arch, {}))
    cfg.update(overrides)
    model = VisionTransformer(**cfg)
    model.init_name, model.arch_name, model.checkpoint = init, arch, None
    return model


# --------------------------------------------------------------------------------------------------
# Which initialisation a checkpoint holds
# --------------------------------------------------------------------------------------------------
_MAE_PRETRAIN_KEYS = ("decoder_embed.weight", "mask_token", "neck.decoder_embed.weight")


def other_init(init: str, obj) -> str | None:
    """Why the checkpoint ``obj`` (what the file holds) looks like another initialisation than
    ``init``, or None. The registry's converters check the layout (timm / mmpretrain / BEiT /
    MoCo v3 / detectron2); MAE and supervised files share the timm layout, so here: our own
    ``bench pretrain`` files name their method (key 'init'); an official MAE pretraining file has
    the decoder (``decoder_*``, ``mask_token``); a supervised classifier has ``head.weight`` and no
    decoder (MAE's fine-tuned files also have ``fc_norm``)."""
    from bench.core.checkpoint import unwrap_state_dict

    if isinstance(obj, dict) and isinstance(obj.get("init"), str) and obj["init"] != init:
        return f"it was written by `bench pretrain --method {obj['init']}` (its key 'init')"
    try:
        sd, _ = unwrap_state_dict(obj)
    except Exception:  # the converter already accepted it; nothing more to say
        return None
    keys = {k[len("module.") :] if k.startswith("module.") else k for k in sd}
    has_decoder = any(k in keys for k in _MAE_PRETRAIN_KEYS)
    head = next((k for k in ("head.weight", "head.layers.head.weight") if k in keys), None)
    if (
        init == "mae"
        and head
        and not has_decoder
        and "fc_norm.weight" not in keys
        and not any(k.startswith("neck.") for k in keys)
    ):
        return (
            f"it has a classifier ({head} {tuple(sd.get(head, sd.get('module.' + head)).shape)}) and no MAE "
            f"decoder, as a supervised checkpoint does"
        )
    if init == "supervised" and has_decoder:
        return "it has an MAE decoder (decoder_* / mask_token), as an MAE pretraining checkpoint does"
    return None


def warn_if_other_init(name: str, checkpoint, trust_checkpoint: bool = False) -> str | None:
    """``CheckpointLayoutWarning`` when ``checkpoint`` looks like another initialisation than
    ``name``'s (``other_init``); returns the warning's text."""
    from pathlib import Path

    from backbones.registry import read_checkpoint

    init, arch = parse_name(name)
    why = other_init(init, read_checkpoint(Path(checkpoint), trust=trust_checkpoint))
    if why is None:
        return None
    text = (
        f"RegistryViT(name={name!r}): checkpoint {checkpoint} loaded as {init}_ weights, but {why}; "
        f"if it is not {init}, name the backbone after its initialisation (`bench backbones`)"
    )
    warnings.warn(text, CheckpointLayoutWarning, stacklevel=3)
    return text


# --------------------------------------------------------------------------------------------------
# Strides and channels of the pyramid against the heads
# --------------------------------------------------------------------------------------------------
def check_model(model) -> None:
    """BenchError (one line listing every mismatch, each with the value to set) when a detector's /
    segmentor's heads expect other strides or channels than its ``RegistryViT`` gives: mmdet
    anchor-generator strides and RoI-extractor ``featmap_strides`` (after the neck: FPN /
    ``LastLevelMaxPool`` keep the pyramid's strides and add levels at twice the last), mmseg decode /
    auxiliary head ``in_channels`` (no neck), the neck's ``in_channels``. A mismatch in strides runs
    silently otherwise: anchors for the wrong scales."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, RegistryViT):
        return
    problems = _stride_mismatches(model, backbone.strides) + _channel_mismatches(model, backbone.channels)
    if problems:
        where = (
            f"RegistryViT(name={backbone.encoder.init_name}_{backbone.encoder.arch_name}, patch "
            f"{backbone.encoder.patch_size}, variant {backbone.pyramid.variant!r})"
        )
        raise BenchError(
            f"{where} gives feature maps at strides {backbone.strides} with {backbone.channels} channels, "
            f"but {'; '.join(problems)}"
        )


def _stride_mismatches(model, strides: list[int]) -> list[str]:
    neck = getattr(model, "neck", None)
    levels = strides[int(getattr(neck, "start_level", 0) or 0) :]

    def expected(n: int) -> list[int]:
        out = list(levels[:n])
        while len(out) < n:
            out.append(out[-1] * 2)
        return out

    out = []
    for mod_name, mod in model.named_modules():
        gen = getattr(mod, "prior_generator", None)
        if gen is not None and hasattr(gen, "strides"):
            got = [int(s[0]) if isinstance(s, (tuple, list)) else int(s) for s in gen.strides]
            if got != expected(len(got)):
                out.append(f"model.{mod_name}.anchor_generator.strides is {got}: set it to {expected(len(got))}")
        fs = getattr(mod, "featmap_strides", None)
        if fs is not None and mod_name.endswith("roi_extractor"):
            got = [int(s) for s in fs]
            if got != expected(len(got)):
                out.append(f"model.{mod_name}.featmap_strides is {got}: set it to {expected(len(got))}")
    return out


def _channel_mismatches(model, channels: list[int]) -> list[str]:
    neck = getattr(model, "neck", None)
    if neck is not None:
        in_ch = getattr(neck, "in_channels", None)
        if isinstance(in_ch, (list, tuple)) and list(in_ch) != channels[: len(in_ch)]:
            return [f"model.neck.in_channels is {list(in_ch)}: set it to {channels[: len(in_ch)]}"]
        return []
    out = []
    for head_name in ("decode_head", "auxiliary_head"):
        heads = getattr(model, head_name, None)
        for i, head in enumerate(heads if isinstance(heads, torch.nn.ModuleList) else [heads]):
            if head is None or not hasattr(head, "in_channels"):
                continue
            idx = head.in_index if isinstance(head.in_index, (list, tuple)) else [head.in_index]
            want = [channels[j] for j in idx]
            got = head.in_channels if isinstance(head.in_channels, (list, tuple)) else [head.in_channels]
            if list(got) != want:
                key = head_name if not isinstance(heads, torch.nn.ModuleList) else f"{head_name}[{i}]"
                val = want if isinstance(head.in_channels, (list, tuple)) else want[0]
                out.append(f"model.{key}.in_channels is {head.in_channels} (in_index {head.in_index}): set it to {val}")
    return out


def checked_build(build_func):
    """A registry ``build_func`` that runs ``check_model`` on what it built: mmseg's ``init_model``
    and mmdet's ``init_detector`` build through their ``MODELS`` registry, so a model of a user's own
    config is checked where it is built, not at its first wrong answer."""
    if getattr(build_func, "_checks_registry_vit", False):
        return build_func

    def build(cfg, *args, **kwargs):
        model = build_func(cfg, *args, **kwargs)
        check_model(model)
        return model

    build._checks_registry_vit = True
    return build


class RegistryViTCheckHook(Hook):
    """``custom_hooks=[dict(type='RegistryViTCheckHook')]``: ``check_model`` before any run of an
    mmengine ``Runner`` (bench's own runner does it without the hook)."""

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        check_model(model)


# --------------------------------------------------------------------------------------------------
# Layer-wise lr decay
# --------------------------------------------------------------------------------------------------
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


# detectron2's norm types (solver/build.py get_default_optimizer_params), for no_decay='vitdet'
_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)
NO_DECAY_RULES = ("mae", "vitdet")


def no_decay_names(module, rule: str = "mae") -> set[str]:
    """Names of the parameters without weight decay. ``'mae'``: 1-D parameters (biases, norms),
    position embeddings, the cls token and relative position tables (BEiT / MAE practice).
    ``'vitdet'``: detectron2's ViTDet rule, parameters of norm layers and ``pos_embed`` only
    (``weight_decay_norm=0``, ``overrides={'pos_embed': {'weight_decay': 0.0}}``; biases and
    relative position tables decay)."""
    if rule == "mae":
        return {
            n
            for n, p in module.named_parameters()
            if p.ndim == 1 or n.endswith(("pos_embed", "cls_token", "relative_position_bias_table"))
        }
    if rule == "vitdet":
        out = set()
        for mname, m in module.named_modules():
            for pname, _ in m.named_parameters(recurse=False):
                if isinstance(m, _NORM_TYPES) or pname == "pos_embed":
                    out.add(f"{mname}.{pname}" if mname else pname)
        return out
    raise BenchError(f"optim_wrapper.paramwise_cfg: key 'no_decay' is {rule!r}; one of {', '.join(NO_DECAY_RULES)}")


def layer_decay_groups(module, base_lr: float, base_wd: float, paramwise_cfg: dict) -> list[dict]:
    """Parameter groups: lr scale ``rate ** (num_layers + 1 - layer_id)`` and weight decay by
    ``paramwise_cfg['no_decay']`` (``no_decay_names``). ``layer_decay_rate`` (ours) or
    ``decay_rate`` (mmseg's name) is the rate; ``num_layers`` defaults to the backbone's depth."""
    num_layers = paramwise_cfg.get("num_layers")
    rate = paramwise_cfg.get("layer_decay_rate", paramwise_cfg.get("decay_rate", 1.0))
    if num_layers is None:
        num_layers = next((m.num_layers for m in module.modules() if isinstance(m, RegistryViT)), 0)
    exempt = no_decay_names(module, paramwise_cfg.get("no_decay", "mae"))
    groups = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = name in exempt
        lid = layer_id(name, num_layers)
        key = (lid, no_decay)
        if key not in groups:
            scale = rate ** (num_layers + 1 - lid)
            groups[key] = {
                "params": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else base_wd,
                "param_names": [],
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for ``RegistryViT`` backbones (mmseg's ``LayerDecayOptimizerConstructor``
    expects ``backbone.layers.N`` names; ours are ``backbone.pyramid.encoder.blocks.N``).

    ``paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65, no_decay='mae')``: parameter group lr
    scale is ``rate ** (num_layers + 1 - layer_id)``; ``no_decay`` names the weight-decay
    exemptions (``no_decay_names``: ``'mae'`` BEiT / MAE practice, ``'vitdet'`` detectron2's)."""

    def add_params(self, params, module, **kwargs):
        for g in layer_decay_groups(module, self.base_lr, self.base_wd, self.paramwise_cfg):
            g.pop("param_names")
            params.append(g)


def _mmseg_compatible(base):
    """mmseg's layer-decay constructor ``base``, applying ``ViTLayerDecayOptimizerConstructor``'s
    rule when the backbone is a ``RegistryViT`` (mmseg's own raises a bare NotImplementedError for a
    backbone class it does not know) and its own rule otherwise."""

    class Compatible(base):
        def add_params(self, params, module, **kwargs):
            if not isinstance(getattr(module, "backbone", None), RegistryViT):
                return super().add_params(params, module, **kwargs)
            for g in layer_decay_groups(module, self.base_lr, self.base_wd, self.paramwise_cfg):
                g.pop("param_names")
                params.append(g)

    Compatible.__name__ = Compatible.__qualname__ = base.__name__
    Compatible.__doc__ = (
        f"mmseg's ``{base.__name__}``; for a ``RegistryViT`` backbone the rule of "
        f"``ViTLayerDecayOptimizerConstructor`` (tasks/dense/mm_backbone.py)."
    )
    return Compatible


def _register():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as SEG_CONSTRUCTORS

    for reg in (SEG_MODELS, DET_MODELS):
        if "RegistryViT" not in reg.module_dict:
            reg.register_module(module=RegistryViT)
        reg.build_func = checked_build(reg.build_func)
    import mmseg.engine.optimizers  # noqa: F401  registers mmseg's constructors first

    for cname in ("LayerDecayOptimizerConstructor", "LearningRateDecayOptimizerConstructor"):
        base = SEG_CONSTRUCTORS.get(cname)
        if base is not None and not getattr(base, "_registry_vit_aware", False):
            cls = _mmseg_compatible(base)
            cls._registry_vit_aware = True
            SEG_CONSTRUCTORS.register_module(name=cname, module=cls, force=True)
    if "RegistryViTCheckHook" not in HOOKS.module_dict:
        HOOKS.register_module(module=RegistryViTCheckHook)


_register()
