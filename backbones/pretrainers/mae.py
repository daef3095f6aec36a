"""MAE pretraining on the embedded photos or an image folder, on the shared
engine. Writes ``<out>/checkpoint-*.pth`` (resumable; the MAE state dict in the official key
layout under ``'model'``) and ``<out>/pretrain.pth`` (``{'model', 'arch', 'init'}``: what the
registry loads as a backbone, e.g. ``build_backbone('mae_vit_demo_patch8', checkpoint=...)``).

The mask noise is part of the data (``MaskNoise``): every sample carries its own
``torch.rand(num_patches)``, drawn under the engine's per-sample seed (seed, epoch, position), so a
sample's mask is the same whatever the rank, world size, worker count or resume point; N processes
with batch B follow one process with batch N B.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import Dataset

from backbones.mae import MaskedAutoencoder
from backbones.vit import Block, arch_config
from bench.core.data import pretrain_dataset
from bench.core.determinism import seed_everything
from bench.core.engine import TrainConfig, fit
from bench.core.errors import BenchError

from .common import EXPORT, export_backbone


def check_mask_ratio(r: float):
    if not 0.0 < r < 1.0:
        raise BenchError(f"--mask-ratio must be in (0, 1), got {r}")


def build_mae(arch: str, img_size: int | None = None, norm_pix_loss: bool = True, **decoder) -> MaskedAutoencoder:
    kw = dict(norm_pix_loss=norm_pix_loss, **decoder)
    if img_size:
        p = arch_config(arch)["patch_size"]
        if img_size % p:
            raise BenchError(f"--img-size {img_size} is not divisible by the patch size {p} of {arch}")
        kw["img_size"] = img_size
    return MaskedAutoencoder.from_arch(arch, **kw)


def mae_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The weight-decay groups of facebookresearch/mae main_pretrain.py:
    ``optim_factory.add_weight_decay(model, args.weight_decay)`` (timm 0.3.2) with no skip list, i.e.
    no decay on 1-D parameters and biases only. Unlike the transfer recipes (``model.no_weight_decay()``),
    the learned ``cls_token`` and ``mask_token`` (3-D) are decayed; the fixed sin-cos position
    embeddings are not trained at all."""
    return param_groups_weight_decay(model, weight_decay)


class MaskNoise(Dataset):
    """Items ``(img, noise)`` with ``noise = torch.rand(num_patches)`` drawn right after the image,
    inside the item: under ``fit`` (``SeededDataset``) it depends only on (seed, epoch, position).
    ``MaskedAutoencoder.forward(imgs, mask_ratio, noise)`` keeps the patches with the smallest noise."""

    def __init__(self, dataset: Dataset, num_patches: int):
        self.dataset, self.num_patches = dataset, num_patches

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i], torch.rand(self.num_patches)


def pretrain_mae(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = True,
    epoch_size: int = 1024,
    resume: bool = True,
    **train,
) -> Path:
    """Pretrain and return the path of the exported backbone checkpoint."""
    check_mask_ratio(mask_ratio)
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    model = build_mae(arch, img_size, norm_pix_loss)
    size = model.pos_grid[0] * model.patch_size
    dataset = MaskNoise(pretrain_dataset(data, size, epoch_size), model.pos_grid[0] * model.pos_grid[1])
    cfg = TrainConfig(out_dir=str(out_dir), desc=f"mae {arch}", **train)

    def loss_fn(m, batch):
        imgs, noise = batch
        loss, _, _ = m(imgs, mask_ratio=mask_ratio, noise=noise)
        return loss, {}

    fit(
        model,
        dataset,
        loss_fn,
        cfg,
        groups=mae_param_groups(model, cfg.weight_decay),
        resume=resume,
        writes=(EXPORT,),  # --no-resume moves an earlier run's export aside too
        block_type=Block,
        settings={
            "method": "mae",
            "arch": arch,
            "data": data,
            "img_size": size,
            "mask_ratio": mask_ratio,
            "norm_pix_loss": norm_pix_loss,
        },
    )
    return export_backbone(model, out_dir, "mae", extra={"mask_ratio": mask_ratio})
