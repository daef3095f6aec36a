"""MAE reconstructions laid out like the paper's figures.

* default, Fig. 2: one row per image, ``masked | reconstruction | original`` at one mask ratio;
* ``mask_ratios=[...]``, Fig. 4: one row per image, ``original`` then ``masked | reconstruction |
  reconstruction with the visible patches pasted back`` for each mask ratio.

Images are shown un-normalised (x ImageNet std + mean). For a model trained with ``norm_pix_loss``
the prediction is in per-patch normalised units; it is mapped back with the mean/std of the
*original* patch, as the official demo notes for such models (the official ``mae_visualize_*``
checkpoints were trained without it). The figure's caption says both, and where the images come
from: whether they are the checkpoint's training images (read from ``train_settings.json`` beside
it) or held out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.core.data import IMAGENET_MEAN, IMAGENET_STD
from bench.core.errors import BenchError

IMAGE_SOURCES = (
    "'embedded' (the bundled photos), 'digits' (the held-out eval split of the sklearn digits) or an image folder"
)


def _normalise(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) float, ImageNet-normalised (bicubic resize, centre crop)."""
    from torchvision.transforms import v2 as T

    tf = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return torch.stack([tf(im) for im in x])


def _images(source: str, size: int, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """``n`` images (deterministic for ``seed``) and a phrase naming where they come from."""
    from bench.core.data import digits_split, embedded_photos, list_images, load_rgb, pil_to_uint8

    g = torch.Generator().manual_seed(seed)
    if source in ("embedded", "", None):
        photos = embedded_photos()
        idx = torch.randperm(len(photos), generator=g)[:n].tolist()
        x = [torch.from_numpy(np.array(photos[i])).permute(2, 0, 1) for i in idx]  # a writable copy
        return _normalise(x, size), f"{len(idx)} of the {len(photos)} embedded photos"
    if source == "digits":
        x, _, _ = digits_split("eval")
        idx = torch.randperm(len(x), generator=g)[:n].tolist()
        return _normalise(
            x[idx], size
        ), f"{len(idx)} of the {len(x)} eval digits (held out: not in the pretraining split)"
    if not Path(source).is_dir():
        raise BenchError(f"--images {source!r}: not {IMAGE_SOURCES}")
    files = list_images(source)
    if not files:
        raise BenchError(f"--images {source}: the folder contains no images")
    idx = torch.randperm(len(files), generator=g)[:n].tolist()
    x = [pil_to_uint8(load_rgb(files[i])) for i in idx]
    return _normalise(x, size), f"{len(idx)} of the {len(files)} images in {source}"


def _trained_on(checkpoint: str | Path, source: str) -> bool | None:
    """Whether ``source`` is the data the checkpoint was pretrained on, from the run record beside
    it (``bench pretrain`` / ``bench run`` write one); None when there is no record."""
    from bench.core.run_record import read_run_record

    try:
        record = read_run_record(Path(checkpoint).parent / "train_settings.json")
    except BenchError:
        return None
    if not record or "data" not in record:
        return None
    data = str(record["data"] or "embedded")
    bundled = data in ("embedded", "digits")
    if source in ("embedded", "", None):
        return data == "embedded" if bundled else None
    if source == "digits":  # the eval split, which no pretraining reads
        return False if bundled else None
    if bundled:
        return False
    return True if Path(data).resolve() == Path(source).resolve() else None


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


def figure_path(out: str | Path) -> Path:
    """``out``, with ``.png`` added when it has no extension."""
    out = Path(out)
    return out if out.suffix else out.with_name(out.name + ".png")


def caption(model, source_phrase: str, trained_on: bool | None) -> str:
    where = {
        True: "these are training images of this checkpoint",
        False: "not this checkpoint's training images",
        None: "whether the checkpoint was trained on them is not recorded",
    }[trained_on]
    mean = ", ".join(f"{v:g}" for v in IMAGENET_MEAN)
    std = ", ".join(f"{v:g}" for v in IMAGENET_STD)
    pix = (
        "the prediction (per-patch normalised target) is mapped back with each original patch's own mean and std, "
        if model.norm_pix_loss
        else ""
    )
    return (
        f"Images: {source_phrase}; {where}.\nShown un-normalised: {pix}then pixel x ImageNet std ({std}) "
        f"+ mean ({mean}). Masked patches are drawn in the mean colour."
    )


def visualize(
    checkpoint: str,
    out: str,
    *,
    images: str = "embedded",
    mask_ratio: float = 0.75,
    mask_ratios=None,
    n: int = 4,
    seed: int = 0,
    trust: bool = False,
) -> Path:
    """Write the figure (Fig. 2 layout, or Fig. 4's sweep when ``mask_ratios`` is given) to ``out``
    (``.png`` added when it has no extension). Returns the path written."""
    from backbones.mae import MaskedAutoencoder

    if n < 1:
        raise BenchError(f"--n must be >= 1 (images to show), got {n}")
    ratios = list(mask_ratios) if mask_ratios else [mask_ratio]
    for r in ratios:
        if not 0 < r < 1:
            raise BenchError(f"--mask-ratio{'s' if mask_ratios else ''} must be in (0, 1), got {r}")
    model = MaskedAutoencoder.from_checkpoint(checkpoint, trust=trust).eval()
    imgs, phrase = _images(images, model.pos_grid[0] * model.patch_size, n, seed)
    rows, cols = panels(model, imgs, ratios, seed, sweep=bool(mask_ratios))
    return _save(
        rows,
        cols,
        f"MAE reconstructions — {'/'.join(Path(checkpoint).parts[-3:])}",
        caption(model, phrase, _trained_on(checkpoint, images)),
        figure_path(out),
    )


def panels(model, imgs: torch.Tensor, ratios, seed: int = 0, sweep: bool = False):
    """(rows of (H, W, 3) images in [0, 1], column titles). ``sweep=False``: Fig. 2, ``masked |
    reconstruction | original`` at ``ratios[0]``; ``sweep=True``: Fig. 4, ``original`` then ``masked |
    reconstruction | + visible`` per ratio."""
    if not sweep:
        masked, rec, _ = reconstruct(model, imgs, ratios[0], seed)
        cols = [f"masked ({100 * ratios[0]:.0f}%)", "reconstruction", "original"]
        return [[_to_rgb(masked[i]), _to_rgb(rec[i]), _to_rgb(imgs[i])] for i in range(len(imgs))], cols
    cols = ["original"] + [f"{t} ({100 * r:.0f}%)" for r in ratios for t in ("masked", "reconstruction", "+ visible")]
    rows = [[_to_rgb(im)] for im in imgs]
    for r in ratios:
        masked, rec, pasted = reconstruct(model, imgs, r, seed)
        for i in range(len(imgs)):
            rows[i] += [_to_rgb(masked[i]), _to_rgb(rec[i]), _to_rgb(pasted[i])]
    return rows, cols


def _save(rows, cols, title: str, text: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.core.io import atomic_open

    width = max(1.6 * len(cols), 6.0)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(width, 1.6 * len(rows) + 1.2), squeeze=False)
    for i, row in enumerate(rows):
        for j, p in enumerate(row):
            ax = axes[i][j]
            ax.imshow(p)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.text(0.01, 0.01, text, fontsize=6, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.9 / (1.6 * len(rows) + 1.2), 1, 1))
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
