"""MAE reconstructions laid out like the paper's figures.

* default, Fig. 2: one row per image, ``masked | reconstruction | original`` at one mask ratio;
* ``mask_ratios=[...]``, Fig. 4: one row per image, ``original`` then ``masked | reconstruction |
  reconstruction with the visible patches pasted back`` for each mask ratio.

Images are shown un-normalised (x ImageNet std + mean). For a model trained with ``norm_pix_loss``
the prediction is in per-patch normalised units. Mapping a masked patch back with the *original*
patch's mean and std would hand the figure the answer (the reconstruction would look like a
pixelated original), so each masked patch gets a mean and std estimated from the *visible* patches
only (weighted by inverse squared grid distance); visible patches keep their own. A pixel-target
model's prediction is shown as it is; a token-target model (Table 7) predicts code ids, not pixels,
and is refused. The title says which; the caption says how and where the
images come from: whether they are the checkpoint's training images (read from
``train_settings.json`` beside it) or held out.
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


def visible_patch_stats(model, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var), each (B, N, 1): a visible patch's own pixel mean and variance; for a masked
    patch (``mask`` 1) the average of the visible patches' values weighted by 1 / (grid distance)^2.
    The pixels of masked patches are never read."""
    target = model.patchify(imgs)
    mean, var = target.mean(-1), target.var(-1)  # (B, N)
    gh, gw = model.pos_grid
    yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    weight = torch.cdist(pos, pos).pow(2).clamp_min(1).reciprocal()  # (N target, N source)
    weight = weight[None] * (1 - mask)[:, None, :]  # only visible sources
    weight = weight / weight.sum(-1, keepdim=True)
    visible = mask == 0
    est_mean = (weight * torch.where(visible, mean, 0)[:, None, :]).sum(-1)
    est_var = (weight * torch.where(visible, var, 0)[:, None, :]).sum(-1)
    mean = torch.where(visible, mean, est_mean)
    var = torch.where(visible, var, est_var)
    return mean.unsqueeze(-1), var.unsqueeze(-1)


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float, seed: int = 0):
    """(masked, reconstruction, reconstruction+visible) images, each (B, 3, H, W) normalised. A
    ``norm_pix_loss`` prediction is mapped back with ``visible_patch_stats`` (never the masked
    patches' own statistics)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(imgs.shape[0], model.pos_grid[0] * model.pos_grid[1], generator=g)
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    if model.norm_pix_loss:
        mean, var = visible_patch_stats(model, imgs, mask)
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


def title_note(model) -> str:
    """How the title says the reconstruction was un-normalised."""
    if model.norm_pix_loss:
        return "norm-pix model: masked patches un-normalised with the visible patches' statistics"
    return "pixel-target model: prediction shown as is"


def caption(model, source_phrase: str, trained_on: bool | None) -> str:
    where = {
        True: "these are training images of this checkpoint",
        False: "not this checkpoint's training images",
        None: "whether the checkpoint was trained on them is not recorded",
    }[trained_on]
    mean = ", ".join(f"{v:g}" for v in IMAGENET_MEAN)
    std = ", ".join(f"{v:g}" for v in IMAGENET_STD)
    pix = (
        "the prediction (per-patch normalised target) is mapped back with each visible patch's own mean and std "
        "and, for a masked patch, the visible patches' mean and std weighted by 1 / distance^2 (never the "
        "masked patch's own), "
        if model.norm_pix_loss
        else "the prediction (pixel target) as it is, "
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
    if model.target == "tokens":  # its decoder gives logits over the tokenizer's codes (Table 7)
        raise BenchError(
            f"{checkpoint}: an MAE trained with the token target predicts token ids, not pixels; nothing to reconstruct"
        )
    imgs, phrase = _images(images, model.pos_grid[0] * model.patch_size, n, seed)
    rows, cols = panels(model, imgs, ratios, seed, sweep=bool(mask_ratios))
    return _save(
        rows,
        cols,
        f"MAE reconstructions — {'/'.join(Path(checkpoint).parts[-3:])}\n{title_note(model)}",
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
