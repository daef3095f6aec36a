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


# --------------------------------------------------------------------------------------------------
# Pretraining datasets
# --------------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrain_transform(img_size: int, scale=(0.2, 1.0)):
    """MAE's pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip + normalise."""
    from torchvision import transforms as T
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class EmbeddedCrops:
    """The embedded default dataset: random crops of the bundled real photographs. ``length`` is the
    number of samples per epoch (photos are cycled); each sample is a fresh random crop."""

    def __init__(self, transform, length: int = 1024):
        from PIL import Image
        self.images = [Image.fromarray(np.ascontiguousarray(a)) for a in embedded_photos()]
        self.transform, self.length = transform, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.transform(self.images[i % len(self.images)])


class ImageFolderImages:
    """Every image under a folder (ImageFolder layout or flat), labels ignored. Files that PIL cannot
    open are skipped with one warning giving their count; no readable image is an error."""

    def __init__(self, root: str | Path, transform):
        import warnings
        from PIL import Image
        from bench.errors import DataError
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        files = list_images(root)
        if not files:
            raise DataError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        good, bad = [], []
        for f in files:
            try:
                with Image.open(f) as im:
                    im.verify()
                good.append(f)
            except Exception:
                bad.append(f)
        if not good:
            raise DataError(f"image folder {root}: none of its {len(files)} image files can be read (first: {bad[0]})")
        if bad:
            warnings.warn(f"image folder {root}: skipping {len(bad)} unreadable image(s), e.g. {bad[0].name}")
        self.files, self.transform = good, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


def pretrain_dataset(data: str, img_size: int, epoch_size: int = 1024):
    """``data='embedded'`` (default photos, ``epoch_size`` crops per epoch) or an image folder."""
    tf = pretrain_transform(img_size)
    if data in ("embedded", "", None):
        return EmbeddedCrops(tf, epoch_size)
    return ImageFolderImages(data, tf)
