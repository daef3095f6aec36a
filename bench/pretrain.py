"""``bench pretrain``: MAE pretraining on the embedded photos or an image folder, on the shared
engine. Writes ``<out>/checkpoint-*.pth`` (resumable; the MAE state dict in the official key
layout under ``'model'``) and ``<out>/pretrain.pth`` (``{'model', 'arch', 'init'}``: what the
registry loads as a backbone, e.g. ``build_backbone('mae_vit_demo_patch8', checkpoint=...)``).
"""
from __future__ import annotations

from pathlib import Path

from backbones.checkpoint import save_atomic
from backbones.mae import MaskedAutoencoder
from bench.data import pretrain_dataset
from bench.determinism import seed_everything
from bench.engine import TrainConfig, fit
from bench.errors import BenchError

# Paper recipe (MAE Table 8 / official PRETRAIN.md): AdamW(0.9, 0.95), wd 0.05, blr 1.5e-4,
# cosine with 40 warmup epochs over 800/1600 epochs, batch 4096, mask 0.75, norm_pix_loss.
PAPER = dict(blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40, epochs=800, batch_size=4096)


def check_mask_ratio(r: float):
    if not 0.0 < r < 1.0:
        raise BenchError(f"--mask-ratio must be in (0, 1), got {r}")


def build_mae(arch: str, img_size: int | None = None, norm_pix_loss: bool = True, **decoder) -> MaskedAutoencoder:
    kw = dict(norm_pix_loss=norm_pix_loss, **decoder)
    if img_size:
        from backbones.vit import arch_config
        p = arch_config(arch)["patch_size"]
        if img_size % p:
            raise BenchError(f"--img-size {img_size} is not divisible by the patch size {p} of {arch}")
        kw["img_size"] = img_size
    return MaskedAutoencoder.from_arch(arch, **kw)


def pretrain_mae(arch: str, out_dir: str | Path, *, data: str = "embedded", img_size: int | None = None,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True, epoch_size: int = 1024,
                 resume: bool = True, **train) -> Path:
    """Pretrain and return the path of the exported backbone checkpoint."""
    check_mask_ratio(mask_ratio)
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    model = build_mae(arch, img_size, norm_pix_loss)
    size = model.pos_grid[0] * model.patch_size
    dataset = pretrain_dataset(data, size, epoch_size)
    cfg = TrainConfig(out_dir=str(out_dir), desc=f"mae {arch}", **train)

    def loss_fn(m, imgs):
        loss, _, _ = m(imgs, mask_ratio=mask_ratio)
        return loss, {}

    fit(model, dataset, loss_fn, cfg, resume=resume)
    return export_backbone(model, out_dir, "mae", extra={"mask_ratio": mask_ratio})


def export_backbone(model, out_dir, init: str, extra: dict | None = None) -> Path:
    """``<out>/pretrain.pth``: weights + architecture of a pretrained model, for the registry."""
    from bench.engine import unwrap
    m = unwrap(model)
    return save_atomic({"model": m.state_dict(), "arch": getattr(m, "arch", None), "init": init, **(extra or {})},
                       Path(out_dir) / "pretrain.pth")
