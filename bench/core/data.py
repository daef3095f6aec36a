"""Datasets of images: the embedded default set (real photos bundled in scikit-image / scikit-learn),
image folders on disk (flat or ImageFolder layout) and the pretraining sources.

The embedded set needs no download: scikit-image's wheel ships a handful of real photographs and
scikit-learn ships two sample photos; scikit-learn's 1,797 handwritten digits (``bench.core.digits``)
give a small real dataset with labels. Everything in the demo (pretraining crops, backgrounds of the
generated COCO / ADE20K / classification sets) is cut from these.

Decoding lives in ``bench.core.images``, transforms in ``bench.core.transforms`` and the digits in
``bench.core.digits``; their public names are importable from here too.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core.digits import DIGITS_PER_CLASS, DIGITS_SIZE, DIGITS_SPLITS, Digits, digits_split, write_digits_folder
from bench.core.errors import DataError, short_repr
from bench.core.images import (
    JPEG_MAGIC,
    LIBJPEG_CORRUPT,
    PNG_MAGIC,
    check_jpeg,
    decode_rgb,
    image_size,
    load_rgb,
    max_pixels,
    pil_to_uint8,
)
from bench.core.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TensorTransform,
    as_tensor_transform,
    pretrain_transform,
    wants_tensor,
)

# Real colour photographs in skimage.data (no download: they are inside the wheel).
SKIMAGE_COLOR = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
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


def list_images(root: str | Path, skip_hidden: bool = False) -> list[Path]:
    """Sorted image files under ``root``, recursively, as ``Path.rglob`` finds them (symlinked
    sub-folders are not entered; unreadable sub-folders are passed over) but from ``os.scandir``
    entry types alone: no file is opened or stat-ed (symlinks aside), which matters at 1 M files.
    ``skip_hidden``: leave out files and folders whose name starts with '.' (``._x.jpg`` and the like)."""
    root = Path(root)
    files, folders = [], [str(root)]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for e in entries:
                    if skip_hidden and e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        folders.append(e.path)
                    elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                        files.append(Path(e.path))
        except OSError:
            continue
    return sorted(files)


def class_folders(directory: str | Path) -> list[str]:
    """The sorted names of the sub-folders of ``directory`` (ImageFolder classes), hidden ones left
    out; a missing or unlistable folder is a one-line ``DataError``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found")
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{directory}: cannot list ({e.strerror})") from None


def read_class_folders(root: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(classes, [(image path, class index)])`` of an ImageFolder layout ``root/<class>/**/<image>``
    (torchvision's ``ImageFolder``: classes are the sorted sub-folders, images any depth below them,
    hidden names left out). With ``classes`` given (a train split's), a folder outside them is an error.
    A class folder without images is a one-line ``DataError``."""
    root = Path(root)
    names = class_folders(root)
    if classes is None:
        classes = names
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in names:
        if name not in index:
            raise DataError(f"{root / name}: class {short_repr(name)} is not a train class")
        images = list_images(root / name, skip_hidden=True)
        if not images:
            raise DataError(f"{root / name}: class folder has no images")
        samples.extend((p, index[name]) for p in images)
    return classes, samples


class LabelledImages:
    """``(transform(image), label)`` for a list of ``(image path, label)``: a map-style dataset. Images
    are decoded to (3, H, W) uint8 tensors by ``decode_rgb`` when the transform takes tensors
    (``TensorTransform``), else to RGB PIL images by ``load_rgb``; a bad file is a ``DataError`` naming it."""

    # Decoded images are kept up to this many bytes: a small set (the demo's 1,797 digits) is decoded
    # once instead of once per epoch and per evaluation; a large one fills it and streams the rest.
    CACHE_BYTES = 256 * 2**20

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform=None):
        self.samples, self.classes, self.transform = samples, classes, transform
        self._decoded: dict[tuple[int, bool], object] = {}
        self._cached_bytes = 0

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self._decode(index, path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _decode(self, index: int, path: Path):
        tensor = wants_tensor(self.transform)
        image = self._decoded.get((index, tensor))
        if image is None:
            image = decode_rgb(path) if tensor else load_rgb(path)
            size = image.numel() if tensor else image.width * image.height * 3
            if self._cached_bytes + size <= self.CACHE_BYTES:
                self._decoded[index, tensor] = image
                self._cached_bytes += size
        # a tensor transform may work in place: it gets a copy (PIL transforms return new images)
        return image.clone() if tensor else image


class EmbeddedCrops:
    """The embedded default dataset: random crops of the bundled real photographs. ``length`` is the
    number of samples per epoch (photos are cycled); each sample is a fresh random crop. The photos
    are kept as uint8 tensors when ``transform`` takes them, else as PIL images."""

    def __init__(self, transform, length: int = 1024):
        if wants_tensor(transform):
            self.images = [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in embedded_photos()]
        else:
            self.images = [Image.fromarray(np.ascontiguousarray(a)) for a in embedded_photos()]
        self.transform, self.length = transform, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.transform(self.images[i % len(self.images)])


class ImageFolderImages:
    """Every image under a folder (ImageFolder layout or flat), labels ignored.

    Construction only lists the files and decodes the first readable one (ImageNet's 1.28 M files
    are ready after one directory walk, not after opening every file). A file that cannot be decoded
    when its turn comes is skipped with a warning naming it, and its samples come from the next
    readable file; a folder in which no file can be read is a ``DataError`` (at construction)."""

    def __init__(self, root: str | Path, transform):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        files = list_images(root)
        if not files:
            raise DataError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.root, self.files, self.transform = root, files, transform
        self.bad: set[int] = set()
        problems = []
        for i in range(len(files)):
            try:
                self._load(i)
                break
            except DataError as e:
                self.bad.add(i)
                problems.append(e)
        else:
            raise DataError(
                f"image folder {root}: none of its {len(files)} image files can be read (first: {files[0]})"
            )
        for e in problems:
            warnings.warn(self._skip_message(e), stacklevel=2)

    def _load(self, i):
        return decode_rgb(self.files[i]) if wants_tensor(self.transform) else load_rgb(self.files[i])

    def _skip_message(self, error) -> str:
        return (
            f"image folder {self.root}: skipping 1 unreadable image ({error}); its samples use the next readable file"
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        n = len(self.files)
        for k in range(n):
            j = (i + k) % n
            if j in self.bad:
                continue
            try:
                img = self._load(j)
            except DataError as e:
                self.bad.add(j)
                warnings.warn(self._skip_message(e), stacklevel=2)
                continue
            return self.transform(img)
        raise DataError(f"image folder {self.root}: none of its {n} image files can be read (first: {self.files[0]})")


def pretrain_dataset(data: str, img_size: int, epoch_size: int = 1024):
    """``data='embedded'`` (default photos, ``epoch_size`` crops per epoch), ``'digits'`` (the
    unlabelled pretraining split of the sklearn digits, one epoch = each image once) or an image folder."""
    tf = pretrain_transform(img_size)
    if data in ("embedded", "", None):
        return EmbeddedCrops(tf, epoch_size)
    if data == "digits":
        return Digits("pretrain", tf)
    return ImageFolderImages(data, tf)


__all__ = [
    "DIGITS_PER_CLASS",
    "DIGITS_SIZE",
    "DIGITS_SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "JPEG_MAGIC",
    "LIBJPEG_CORRUPT",
    "PNG_MAGIC",
    "SKIMAGE_COLOR",
    "SKIMAGE_GRAY",
    "Digits",
    "EmbeddedCrops",
    "ImageFolderImages",
    "LabelledImages",
    "TensorTransform",
    "as_tensor_transform",
    "check_jpeg",
    "class_folders",
    "decode_rgb",
    "digits_split",
    "embedded_photos",
    "image_size",
    "list_images",
    "load_rgb",
    "max_pixels",
    "pil_to_uint8",
    "pretrain_dataset",
    "pretrain_transform",
    "read_class_folders",
    "wants_tensor",
    "write_digits_folder",
]
