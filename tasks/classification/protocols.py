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

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset

from bench.core.engine import autocast, param_groups
from bench.core.errors import BenchError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOLS = ("finetune", "linear", "partial")
MLP = "mlp"  # k for "only the MLP sub-block of the last block" (Sec. 4.3: 79.1%)

# Every key a protocol config may hold, with the types its value may take (None: may be null).
KEYS: dict[str, tuple] = {
    "protocol": (str,), "img_size": (int, None), "global_pool": (str,), "drop_path": (float,),
    "head_init_std": (float,), "optimizer": (str,), "betas": (list,), "momentum": (float,),
    "blr": (float,), "lr": (float, None), "min_lr": (float,), "weight_decay": (float,),
    "layer_decay": (float, None), "batch_size": (int,), "accum_iter": (int,), "epochs": (float,),
    "warmup_epochs": (float,), "clip_grad": (float, None), "smoothing": (float,), "mixup": (float,),
    "cutmix": (float,), "mixup_prob": (float,), "mixup_switch_prob": (float,), "mixup_mode": (str,),
    "auto_augment": (str, None), "color_jitter": (float, None), "reprob": (float,), "remode": (str,),
    "recount": (int,), "crop_scale": (list,), "hflip": (float,), "interpolation": (str,),
    "crop_pct": (float, None), "cache_features": (bool,), "eval_batch_size": (int,), "num_workers": (int,),
    "ckpt_every": (int,), "sweep": (list,),
}
FILE_ONLY_KEYS = ("inherit", "per_arch")


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def recipe(protocol: str, k: int | str | None = None) -> str:
    """The config a run trains with: partial fine-tuning of 0 blocks is linear probing (Fig. 9)."""
    return "linear" if protocol == "partial" and k == 0 else protocol


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise BenchError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise BenchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"{path}: top level must be a mapping of keys to values")
    return data


def _check_value(key: str, value: Any, where: str) -> Any:
    if key not in KEYS:
        raise BenchError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
    types = KEYS[key]
    if value is None:
        if None in types:
            return None
        raise BenchError(f"{where}: key {key!r} must not be null")
    if float in types and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    def is_a(t) -> bool:  # bool is an int to Python, never here
        return t is not None and (t is bool if isinstance(value, bool) else isinstance(value, t))

    if not any(is_a(t) for t in types):
        names = " or ".join("null" if t is None else t.__name__ for t in types)
        raise BenchError(f"{where}: key {key!r} must be {names}, got {value!r:.60}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where}: key {key!r} must be finite, got {value}")
    return value


def _load_file(path: Path, seen: tuple = ()) -> dict:
    """A config file with its ``inherit`` chain resolved (child keys replace parent keys)."""
    if path in seen:
        raise BenchError(f"{path}: key 'inherit' forms a cycle")
    data = _read_yaml(path)
    base = {}
    if "inherit" in data:
        parent = data.pop("inherit")
        if not isinstance(parent, str):
            raise BenchError(f"{path}: key 'inherit' must be a file name")
        base = _load_file(path.parent / parent, seen + (path,))
    per_arch = data.pop("per_arch", base.pop("per_arch", {}))
    if not isinstance(per_arch, dict) or not all(isinstance(v, dict) for v in per_arch.values()):
        raise BenchError(f"{path}: key 'per_arch' must map architecture names to mappings")
    for key, value in data.items():
        base[key] = _check_value(key, value, str(path))
    per_arch = {arch: {key: _check_value(key, value, f"{path} per_arch.{arch}") for key, value in values.items()}
                for arch, values in per_arch.items()}
    base["per_arch"] = per_arch
    return base


def protocol_config_path(protocol: str, k: int | str | None = None) -> Path:
    check_protocol(protocol)
    return CONFIG_DIR / f"{recipe(protocol, k)}.yaml"


def load_config(protocol: str, arch: str | None = None, k: int | str | None = None,
                overrides: str | Path | dict | None = None) -> dict:
    """The flat config of a run: ``configs/<recipe>.yaml`` (with ``inherit``), then its
    ``per_arch[arch]`` values, then ``overrides`` (a dict, a YAML path, or the name of a file in
    ``configs/`` such as ``'smoke'``; its optional ``per_protocol: {linear: {...}}`` applies to runs
    with that recipe). Unknown keys and wrong types are a one-line BenchError."""
    path = protocol_config_path(protocol, k)
    cfg = _load_file(path)
    per_arch = cfg.pop("per_arch")
    cfg.update(per_arch.get(arch, {}))
    if overrides is not None:
        if isinstance(overrides, dict):
            where, data = "config overrides", dict(overrides)
        else:
            opath = Path(overrides)
            if not opath.exists() and not opath.suffix and (CONFIG_DIR / f"{opath}.yaml").is_file():
                opath = CONFIG_DIR / f"{opath}.yaml"
            where, data = str(opath), _read_yaml(opath)
        for key in FILE_ONLY_KEYS:
            if key in data:
                raise BenchError(f"{where}: key {key!r} is only allowed in the protocol files of {CONFIG_DIR}")
        per_protocol = data.pop("per_protocol", {})
        if not isinstance(per_protocol, dict) or not all(
                name in PROTOCOLS and isinstance(v, dict) for name, v in per_protocol.items()):
            raise BenchError(f"{where}: key 'per_protocol' must map {', '.join(PROTOCOLS)} to mappings")
        for key, value in list(data.items()) + list(per_protocol.get(cfg["protocol"], {}).items()):
            if key == "protocol" and value != cfg["protocol"]:
                raise BenchError(f"{where}: key 'protocol' is {value!r} but the run's protocol is {cfg['protocol']!r}")
            cfg[key] = _check_value(key, value, where)
    missing = [key for key in KEYS if key not in cfg and key != "sweep"]
    if missing:
        raise BenchError(f"{path}: missing key {missing[0]!r}")
    _check_semantics(cfg, path)
    return cfg


def _check_semantics(cfg: dict, where) -> None:
    if cfg["global_pool"] not in ("avg", "token"):
        raise BenchError(f"{where}: key 'global_pool' must be 'avg' or 'token', got {cfg['global_pool']!r}")
    if cfg["optimizer"] not in ("adamw", "sgd", "lars"):
        raise BenchError(f"{where}: key 'optimizer' must be adamw, sgd or lars, got {cfg['optimizer']!r}")
    for key in ("batch_size", "accum_iter", "eval_batch_size"):
        if cfg[key] < 1:
            raise BenchError(f"{where}: key {key!r} must be >= 1, got {cfg[key]}")
    if cfg["epochs"] <= 0:
        raise BenchError(f"{where}: key 'epochs' must be > 0, got {cfg['epochs']}")
    for key in ("betas", "crop_scale"):
        if len(cfg[key]) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cfg[key]):
            raise BenchError(f"{where}: key {key!r} must be two numbers, got {cfg[key]!r}")


def partial_sweep(depth: int, cfg: dict | None = None) -> list:
    """The k of Figure 9 that fit a ``depth``-block ViT (always ending with ``depth``, full
    fine-tuning), e.g. ViT-B: [0, 'mlp', 1, 2, 4, 6, 12]."""
    sweep = (cfg or load_config("partial", k=1)).get("sweep") or []
    ks = [k for k in sweep if k == MLP or (isinstance(k, int) and k <= depth)]
    return ks if depth in ks else ks + [depth]


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise BenchError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def parse_k(value) -> int | str | None:
    """``--k`` as given on the command line: a block count, ``mlp`` (or ``0.5``) or None."""
    if value is None or value == MLP:
        return value
    text = str(value).strip().lower()
    if text in (MLP, "0.5"):
        return MLP
    if text.isascii() and text.isdigit():
        return int(text)
    raise BenchError(f"--k must be a number of blocks (0, 1, 2, ...) or 'mlp', got {value!r}")


def check_k(protocol: str, k, depth: int) -> int | str | None:
    """Validate ``k`` against the protocol and the backbone depth; returns the parsed k."""
    check_protocol(protocol)
    k = parse_k(k)
    if protocol != "partial":
        if k is not None:
            raise BenchError(f"--k only applies to protocol 'partial' (got k={k!r} with protocol {protocol!r})")
        return None
    if k is None:
        raise BenchError(f"protocol 'partial' needs --k: a number of blocks 0..{depth} or 'mlp'")
    if k != MLP and k > depth:
        raise BenchError(f"--k {k} is larger than the depth {depth} of the backbone (k must be 0..{depth} or 'mlp')")
    return k


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


def build_classifier(backbone_name: str, checkpoint: str | Path | None, protocol: str, num_classes: int,
                     img_size: int | None = None, k: int | str | None = None, drop_path: float | None = None,
                     global_pool: str | None = None, head_init_std: float | None = None,
                     trust_checkpoint: bool = False) -> nn.Module:
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

    model = build_backbone(backbone_name, checkpoint, trust_checkpoint=trust_checkpoint, img_size=img_size,
                           drop_path_rate=drop_path, global_pool=global_pool, num_classes=num_classes)
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
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg["weight_decay"],
                   "always_adapt": True},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "always_adapt": False}]
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
        mixup = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                      switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                      label_smoothing=cfg["smoothing"], num_classes=num_classes)
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
    tf = create_transform(img_size, is_training=True, scale=tuple(cfg["crop_scale"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"],
                          auto_augment=cfg["auto_augment"], interpolation=cfg["interpolation"],
                          re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"])
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
    return as_tensor_transform(create_transform(img_size, is_training=False, interpolation=cfg["interpolation"],
                                                crop_pct=_crop_pct(cfg, img_size)))


# --------------------------------------------------------------------------------------------------
# Evaluation and features
# --------------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, *, bf16: bool = False,
             num_workers: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy in percent over ``dataset`` of (input, label), counted directly
    (top-5 is top-min(5, C) when there are fewer than 5 classes). Leaves ``model`` in eval mode.
    Under torchrun each rank scores every world-th sample and the counts are summed over ranks,
    so the result equals a single process on the whole set."""
    from torch.utils.data import Subset
    from bench.core.distributed import gather_accuracy, shard_indices, topk_counts
    device = _device_of(model)
    model.eval()
    loader = DataLoader(Subset(dataset, shard_indices(len(dataset))), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    counts = [0, 0, 0]
    for x, y in loader:
        with autocast(device, bf16):
            logits = model(x.to(device))
        counts = [a + b for a, b in zip(counts, topk_counts(logits, y))]
    try:
        acc = gather_accuracy(counts)
    except ValueError:
        raise BenchError("evaluate: the evaluation set is empty") from None
    return {"top1": acc["top1"], "top5": acc["top5"]}


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256, *, bf16: bool = False,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (what the head sees: pooled token after norm / fc_norm) and labels of
    ``dataset``, in order, as float32 / int64 CPU tensors."""
    device = _device_of(model)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for x, y in loader:
        with autocast(device, bf16):
            f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)
