"""Pieces shared by the pretrainers: the encoder each initialisation trains (the same architecture
the registry builds for it) and the image datasets (embedded photos or an image folder)."""

from __future__ import annotations

from pathlib import Path

from backbones.registry import INITS
from backbones.vit import arch_config
from bench.core.checkpoint import save_atomic
from bench.core.data import Digits, EmbeddedCrops, ImageFolderImages
from bench.core.distributed import barrier, is_main
from bench.core.engine import unwrap
from bench.core.errors import BenchError

EXPORT = "pretrain.pth"  # the backbone file every pretrainer writes into its --out folder


def encoder_config(init: str, arch: str, img_size: int | None = None) -> dict:
    """``VisionTransformer`` keywords for ``<init>_<arch>`` exactly as ``build_backbone`` builds it
    (architecture preset + the initialisation's overrides), so an export always loads back."""
    cfg = arch_config(arch)
    spec = INITS[init]
    cfg.update(spec.arch_overrides)
    cfg.update(spec.per_arch.get(arch, {}))
    if img_size:
        if img_size % cfg["patch_size"]:
            raise BenchError(f"--img-size {img_size} is not divisible by the patch size {cfg['patch_size']} of {arch}")
        cfg["img_size"] = img_size
    return cfg


def input_size(cfg: dict) -> int:
    s = cfg.get("img_size", 224)
    return s if isinstance(s, int) else s[0]


def image_dataset(data: str | None, transform, epoch_size: int = 1024):
    """``data='embedded'``: ``epoch_size`` random crops per epoch of the bundled photos; ``'digits'``:
    the unlabelled pretraining split of the sklearn digits (``bench.core.data.Digits``); otherwise
    every image under the folder ``data`` (labels ignored). ``transform`` gets a uint8 tensor when it
    says so (``tensor_input``), else a PIL image, and may return a tuple (two views, image + mask)."""
    if data in ("embedded", "", None):
        return EmbeddedCrops(transform, epoch_size)
    if data == "digits":
        return Digits("pretrain", transform)
    return ImageFolderImages(data, transform)


def export_backbone(model, out_dir, init: str, extra: dict | None = None) -> Path:
    """``<out>/pretrain.pth``: weights + architecture of a pretrained model, for the registry.
    Under DDP rank 0 writes it and every rank returns once it is on disk."""
    m, path = unwrap(model), Path(out_dir) / EXPORT
    if is_main():
        save_atomic({"model": m.state_dict(), "arch": getattr(m, "arch", None), "init": init, **(extra or {})}, path)
    barrier()
    return path
