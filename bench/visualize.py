"""MAE reconstructions laid out like the paper's Fig. 2/4: for each image and mask ratio,
original | masked | reconstruction | reconstruction with the visible patches pasted back.

For a model trained with ``norm_pix_loss`` the prediction is in per-patch normalised units; it is
mapped back with the mean/std of the *original* patch, as the official demo notes for such models
(the official ``mae_visualize_*`` checkpoints were trained without it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.core.data import IMAGENET_MEAN, IMAGENET_STD


def _images(source: str, size: int, n: int, seed: int) -> torch.Tensor:
    from torchvision import transforms as T
    from bench.core.data import pretrain_dataset
    g = torch.Generator().manual_seed(seed)
    if source in ("embedded", "", None):
        from PIL import Image
        from bench.core.data import embedded_photos
        photos = embedded_photos()
        tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        idx = torch.randperm(len(photos), generator=g)[:n].tolist()
        return torch.stack([tf(Image.fromarray(np.ascontiguousarray(photos[i]))) for i in idx])
    ds = pretrain_dataset(source, size)
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()
    return torch.stack([ds[i] for i in idx])


def _to_rgb(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float, seed: int = 0):
    """(masked, reconstruction, reconstruction+visible) images, each (B, 3, H, W) normalised."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(imgs.shape[0], model.pos_grid[0] * model.pos_grid[1], generator=g)
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    if model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    rec = model.unpatchify(pred)
    m = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 = removed
    grey = torch.full_like(imgs, 0.0)  # normalised 0 = dataset mean colour
    masked = imgs * (1 - m) + grey * m
    pasted = imgs * (1 - m) + rec * m
    return masked, rec, pasted


def visualize(checkpoint: str, out: str, *, images: str = "embedded", mask_ratios=(0.75, 0.85, 0.95), n: int = 4,
              seed: int = 0, trust: bool = False) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from backbones.mae import MaskedAutoencoder
    from bench.core.errors import BenchError

    for r in mask_ratios:
        if not 0 < r < 1:
            raise BenchError(f"--mask-ratios must be in (0, 1), got {r}")
    model = MaskedAutoencoder.from_checkpoint(checkpoint, trust=trust).eval()
    size = model.pos_grid[0] * model.patch_size
    imgs = _images(images, size, n, seed)
    cols = ["original"] + [f"{t} ({int(round(100 * r))}%)" for r in mask_ratios for t in ("masked", "reconstruction", "+ visible")]
    fig, axes = plt.subplots(len(imgs), len(cols), figsize=(1.6 * len(cols), 1.6 * len(imgs) + 0.4), squeeze=False)
    panels = [[_to_rgb(im)] for im in imgs]
    for r in mask_ratios:
        masked, rec, pasted = reconstruct(model, imgs, r, seed)
        for i in range(len(imgs)):
            panels[i] += [_to_rgb(masked[i]), _to_rgb(rec[i]), _to_rgb(pasted[i])]
    for i, row in enumerate(panels):
        for j, p in enumerate(row):
            ax = axes[i][j]
            ax.imshow(p)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.suptitle(f"MAE reconstructions — {Path(checkpoint).name}", fontsize=9)
    fig.tight_layout()
    from bench.core.io import atomic_open
    out = Path(out)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
