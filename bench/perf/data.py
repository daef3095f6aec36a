"""``bench perf data``: can the pretraining input pipeline feed the model?"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.core.data import ImageFolderImages, embedded_photos, pretrain_transform
from bench.core.errors import BenchError

# ``bench perf pretrain``'s MAE ViT-B/16 step (224 px, batch 8, bf16) on the 2-core CPU this suite was
# built on: the rate the loader must at least keep up with there (README, "Speed").
MODEL_IMG_S_CPU = 7.5
DECODERS = {"both": ("pil", "torchvision"), "pil": ("pil",), "torchvision": ("torchvision",)}


def write_jpegs(folder: Path, n_images: int) -> None:
    """``n_images`` ImageNet-like 500x375 JPEGs cut from the embedded photos."""
    rng = np.random.default_rng(0)
    photos = [p for p in embedded_photos() if min(p.shape[:2]) >= 375]
    for i in range(n_images):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 374), rng.integers(0, max(1, p.shape[1] - 499))
        Image.fromarray(np.ascontiguousarray(p[y : y + 375, x : x + 500])).save(folder / f"{i:05d}.jpg", quality=90)


def time_loaders(loaders: dict, repeats: int) -> dict:
    """{key: [img/s per timed pass]}; the loaders take turns pass by pass so machine load hits them
    alike, and pass 0 (starting the workers, warming caches) is not timed."""
    rates = {key: [] for key in loaders}
    for r in range(repeats + 1):
        for key, loader in loaders.items():
            t = time.perf_counter()
            n = sum(b.shape[0] for b in loader)
            if r:
                rates[key].append(n / (time.perf_counter() - t))
    return rates


def perf_data(
    img_size=224, batch_size=64, workers=(0, 2), n_images=256, decoder="both", model_img_s=MODEL_IMG_S_CPU, repeats=3
):
    """Loader img/s of MAE's pretraining input pipeline (JPEG decode + RandomResizedCrop bicubic +
    flip + normalise) on JPEGs cut from the embedded photos, for each decoder and worker count,
    next to the model's img/s it has to feed.

    ``pil``: PIL decode + torchvision's v1 transforms on PIL images (the previous path);
    ``torchvision``: ``torchvision.io`` decode + ``transforms.v2`` on uint8 tensors (the default now).
    One persistent DataLoader per (decoder, workers) as the engine builds it (prefetch 4); prints
    the median and best of ``repeats`` passes."""
    decoders = DECODERS.get(decoder)
    if decoders is None:
        raise BenchError(f"unknown decoder {decoder!r}; expected pil, torchvision or both")
    if n_images < batch_size or repeats < 1 or model_img_s <= 0 or any(w < 0 for w in workers):
        raise BenchError("need n_images >= batch size, repeats >= 1, model img/s > 0 and workers >= 0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-data-"))
    try:
        write_jpegs(tmp, n_images)
        loaders = {
            (d, w): DataLoader(
                ImageFolderImages(tmp, pretrain_transform(img_size, tensor=d == "torchvision")),
                batch_size=batch_size,
                num_workers=w,
                persistent_workers=w > 0,
                prefetch_factor=4 if w else None,
                shuffle=True,
            )
            for w in workers
            for d in decoders
        }
        rates = time_loaders(loaders, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{n_images} JPEGs 500x375 -> RandomResizedCrop {img_size} bicubic + flip + normalise, batch {batch_size}; "
        f"median (best) of {repeats} passes; main process: {torch.get_num_threads()} torch thread(s), each worker 1"
    )
    default = model_img_s == MODEL_IMG_S_CPU
    note = " (bench perf pretrain, MAE ViT-B/16 bf16 step on the 2-core CPU; --model-img-s for yours)"
    print(f"model: {model_img_s:g} img/s" + (note if default else ""))
    print(f"  {'decoder':<12} {'workers':>7}  {'loader img/s':>17}  {'loader / model':>14}")
    for (d, w), rs in rates.items():
        med = statistics.median(rs)
        print(f"  {d:<12} {w:>7}  {med:>8.0f} ({max(rs):>5.0f})  {med / model_img_s:>13.0f}x")
