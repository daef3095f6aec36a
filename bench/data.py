"""Images: the embedded default dataset (real photos bundled in scikit-image / scikit-learn) and
image folders on disk.

The embedded set needs no download: scikit-image's wheel ships a handful of real photographs and
scikit-learn ships two sample photos. Everything in the demo (pretraining crops, backgrounds of the
generated COCO / ADE20K / classification sets) is cut from these.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# Real colour photographs in skimage.data (no download: they are inside the wheel).
SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "stereo_motorcycle")
# Real grey photographs, replicated to 3 channels.
SKIMAGE_GRAY = ("camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel")


@functools.lru_cache(maxsize=1)
def embedded_photos() -> tuple[np.ndarray, ...]:
    """All bundled real photographs as HxWx3 uint8 arrays (read-only), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_COLOR + SKIMAGE_GRAY:
        img = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":  # returns (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-8))).astype(np.uint8)
        out.append(img)
    out.extend(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)
    for im in out:
        im.setflags(write=False)
    return tuple(out)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def list_images(root: str | Path) -> list[Path]:
    """Sorted image files under ``root`` (recursive)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
