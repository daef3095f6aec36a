"""ADE20K (SceneParsing / ADEChallengeData2016) on disk: class names, a generator for small
datasets in the same layout, a validator, and a plain-numpy mIoU reference.

Layout (the real release and the generated sets alike)::

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg ...        RGB JPEG
        images/validation/ADE_val_00000001.jpg ...
        annotations/training/ADE_train_00000001.png ...   single-channel uint8 PNG (PIL mode 'L')
        annotations/validation/ADE_val_00000001.png ...

Label values: 0 = "other" (ignored in training and evaluation), 1..150 = the classes of
mmseg's ``ADE20KDataset.METAINFO`` (``ade20k_metainfo``; value v is class ``v - 1`` there). mmsegmentation's ``ADE20KDataset``
(img_suffix '.jpg', seg_map_suffix '.png', reduce_zero_label=True) maps 0 to 255 (ignore) and v to
v - 1, so models predict 0..149.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.data import embedded_photos
from bench.core.errors import BenchError, DataError

NUM_CLASSES = 150


@functools.cache
def ade20k_metainfo() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """(class names, palette) of mmseg's ``ADE20KDataset.METAINFO``: the order of objectInfo150.csv
    (value v is class v - 1), names byte-for-byte as mmseg has them (the trailing space of 'bed '
    included: mmseg accepts a metainfo ``classes`` only if every name is one of its own)."""
    from mmseg.datasets.ade import ADE20KDataset

    meta = ADE20KDataset.METAINFO
    return tuple(meta["classes"]), tuple(tuple(int(c) for c in rgb) for rgb in meta["palette"])


def __getattr__(name: str):
    """``ADE20K_CLASSES`` / ``ADE20K_PALETTE`` read from mmseg when first used (importing mmseg is slow)."""
    if name == "ADE20K_CLASSES":
        return ade20k_metainfo()[0]
    if name == "ADE20K_PALETTE":
        return ade20k_metainfo()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SPLITS = {"training": "train", "validation": "val"}  # folder name -> file-name infix

# Defaults of the generator: background "stuff" and foreground "thing" classes (1-based values).
DEFAULT_STUFF_CLASSES = (1, 3, 4)  # wall, sky, floor
DEFAULT_THING_CLASSES = (13, 20, 21, 37)  # person, chair, car, lamp
SHAPE_KINDS = ("ellipse", "rectangle", "triangle")
IGNORE_BORDER = 2  # width in pixels of the label-0 ring around each shape
MAX_SHAPES = 3


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One foreground shape of a generated sample.

    ``center`` (row, col) is a pixel inside the shape; ``half_size`` is (half height, half width)
    in pixels. Every pixel of ``mask(image_size)`` has label ``class_index`` and the
    ``IGNORE_BORDER``-pixel ring around it has label 0. Shapes of one sample never overlap.
    """

    class_index: int
    kind: str
    center: tuple[int, int]
    half_size: tuple[int, int]

    def mask(self, image_size: tuple[int, int]) -> np.ndarray:
        """Boolean HxW mask of the shape's pixels."""
        h, w = image_size
        rows, cols = np.mgrid[0:h, 0:w]
        cy, cx = self.center
        ry, rx = self.half_size
        dy, dx = rows - cy, cols - cx
        if self.kind == "ellipse":
            return (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
        if self.kind == "rectangle":
            return (np.abs(dy) <= ry) & (np.abs(dx) <= rx)
        if self.kind == "triangle":  # apex up, base at the bottom
            depth = (dy + ry) / (2.0 * ry)  # 0 at the apex, 1 at the base
            return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= rx * depth)
        raise ValueError(f"unknown shape kind {self.kind!r}")


def _check_class_list(name: str, values) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if not values:
        raise BenchError(f"{name}: give at least one ADE20K class index (1..{NUM_CLASSES})")
    for v in values:
        if not 1 <= v <= NUM_CLASSES:
            raise BenchError(f"{name}: class index {v} is outside 1..{NUM_CLASSES}")
    if len(set(values)) != len(values):
        raise BenchError(f"{name}: repeated class index in {values}")
    return values


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2 radius + 1)^2 square."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _photo_region(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A random crop of ``photo`` with the aspect ratio of ``size`` (h, w), resized to ``size``."""
    h, w = size
    ph, pw = photo.shape[:2]
    scale_max = min(ph / h, pw / w)  # largest crop of this aspect ratio that fits
    scale = scale_max * rng.uniform(0.3, 1.0)
    ch, cw = max(1, min(ph, round(h * scale))), max(1, min(pw, round(w * scale)))
    top = int(rng.integers(0, ph - ch + 1))
    left = int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[top : top + ch, left : left + cw]))
    return np.asarray(crop.resize((w, h), Image.BILINEAR), dtype=np.float64)


def _thing_texture(
    rng: np.random.Generator, class_index: int, position: int, n_positions: int, size: tuple[int, int]
) -> np.ndarray:
    """HxWx3 float image: the class's palette colour under stripes whose angle and period depend
    on the class's position in the generator's class list, plus a little noise."""
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w]
    angle = np.pi * position / n_positions
    period = 6.0 + 2.0 * position
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period + phase)
    colour = np.asarray(ade20k_metainfo()[1][class_index - 1], dtype=np.float64)
    img = colour * (0.8 + 0.2 * wave)[:, :, None]
    return img + rng.normal(0.0, 6.0, size=(h, w, 3))


def render_ade20k_sample(
    rng: np.random.Generator,
    image_size: tuple[int, int] = (128, 128),
    classes=DEFAULT_THING_CLASSES,
    stuff_classes=DEFAULT_STUFF_CLASSES,
) -> tuple[np.ndarray, np.ndarray, list[Shape]]:
    """One generated sample: (HxWx3 uint8 image, HxW uint8 label, shapes drawn).

    Background: one or two horizontal bands (top / bottom), each a random crop of a real photo
    from ``bench.core.data.embedded_photos()`` tinted 30% towards the band's palette colour. A band of
    class ``stuff_classes[j]`` is always cut from the photos whose index is j modulo
    len(stuff_classes), so each stuff class has its own photos and tint; the whole band carries
    that class. Foreground: 1..3 non-overlapping ellipses / rectangles / triangles of classes from
    ``classes``, filled with the class's palette colour under class-specific stripes; their pixels
    carry the class and a 2-pixel ring around each is 0 (ignore).
    """
    h, w = (int(s) for s in image_size)
    classes = tuple(classes)
    stuff_classes = tuple(stuff_classes)
    photos = embedded_photos()
    image = np.zeros((h, w, 3), dtype=np.float64)
    label = np.zeros((h, w), dtype=np.uint8)

    # Background bands.
    n_bands = int(rng.integers(1, 3)) if len(stuff_classes) > 1 else 1
    band_classes = rng.choice(len(stuff_classes), size=n_bands, replace=False)
    edges = [0, h] if n_bands == 1 else [0, int(rng.integers(h // 4, 3 * h // 4 + 1)), h]
    for j, top, bottom in zip(band_classes, edges[:-1], edges[1:]):
        own_photos = photos[j :: len(stuff_classes)]
        photo = own_photos[int(rng.integers(len(own_photos)))]
        region = _photo_region(rng, photo, (bottom - top, w))
        tint = np.asarray(ade20k_metainfo()[1][stuff_classes[j] - 1], dtype=np.float64)
        image[top:bottom] = 0.7 * region + 0.3 * tint
        label[top:bottom] = stuff_classes[j]

    # Foreground shapes, placed without overlap (rings included).
    shapes: list[Shape] = []
    occupied = np.zeros((h, w), dtype=bool)
    n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
    for _ in range(n_shapes):
        position = int(rng.integers(len(classes)))
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        ry = max(2, round(h * rng.uniform(0.1, 0.22)))
        rx = max(2, round(w * rng.uniform(0.1, 0.22)))
        margin = IGNORE_BORDER + 1
        for _attempt in range(20):
            cy = int(rng.integers(ry + margin, h - ry - margin)) if h > 2 * (ry + margin) else h // 2
            cx = int(rng.integers(rx + margin, w - rx - margin)) if w > 2 * (rx + margin) else w // 2
            shape = Shape(classes[position], kind, (cy, cx), (ry, rx))
            mask = shape.mask((h, w))
            grown = _dilate(mask, IGNORE_BORDER)
            if not (grown & occupied).any():
                break
        else:
            continue  # no free spot for this shape
        texture = _thing_texture(rng, shape.class_index, position, len(classes), (h, w))
        image[mask] = texture[mask]
        label[grown] = 0
        label[mask] = shape.class_index
        occupied |= grown
        shapes.append(shape)

    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, shapes


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` (1-based) of ``split``: each file depends only on
    (seed, split, index), so a larger set starts with the files of a smaller one."""
    return np.random.default_rng([int(seed), list(SPLITS).index(split), int(index)])


def _write_pair(data_root: Path, split: str, index: int, image: np.ndarray, label: np.ndarray):
    stem = f"ADE_{SPLITS[split]}_{index:08d}"
    Image.fromarray(image).save(data_root / "images" / split / f"{stem}.jpg", quality=95)
    Image.fromarray(label).save(data_root / "annotations" / split / f"{stem}.png")


def make_ade20k_dataset(
    root: str | Path,
    n_train: int = 40,
    n_val: int = 10,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    classes=DEFAULT_THING_CLASSES,
    stuff_classes=DEFAULT_STUFF_CLASSES,
    overwrite: bool = False,
) -> Path:
    """Write a small ADE20K-layout dataset to ``root/ADEChallengeData2016`` and return that path
    (the ``data_root`` of an mmseg ADE20KDataset config).

    ``image_size`` is (height, width). ``classes`` are the foreground ("thing") class values and
    ``stuff_classes`` the background ones, all in 1..150 (``ADE20K_CLASSES[v - 1]``); label files
    hold only 0 and these values. See ``render_ade20k_sample`` for what a sample looks like.
    Deterministic for a seed. Everything is written to a temporary folder inside ``root`` and
    renamed at the end; an existing ``ADEChallengeData2016`` is an error unless ``overwrite``.
    """
    classes = _check_class_list("classes", classes)
    stuff_classes = _check_class_list("stuff_classes", stuff_classes)
    both = sorted(set(classes) & set(stuff_classes))
    if both:
        raise BenchError(f"classes and stuff_classes share class index {both[0]}")
    if n_train < 1 or n_val < 1:
        raise BenchError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    h, w = (int(s) for s in image_size)
    if h < 32 or w < 32:
        raise BenchError(f"image_size must be at least 32x32, got {h}x{w}")

    root = Path(root)
    final = root / "ADEChallengeData2016"
    if final.exists() and not overwrite:
        raise BenchError(f"{final}: already exists (pass overwrite=True to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ADEChallengeData2016.tmp-", dir=root))
    try:
        for split, count in (("training", n_train), ("validation", n_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
            for index in range(1, count + 1):
                image, label, _ = render_ade20k_sample(sample_rng(seed, split, index), (h, w), classes, stuff_classes)
                _write_pair(tmp, split, index, image, label)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".ADEChallengeData2016.old-", dir=root))
            os.replace(final, old / "ADEChallengeData2016")
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------------------------
# Validator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ADE20KSplitSummary:
    """What ``validate_ade20k`` found. ``pixel_counts[v]`` counts label value v (0..150) over the
    ``num_value_checked`` label files whose values were read."""

    data_root: Path
    split: str
    num_images: int
    num_value_checked: int
    pixel_counts: tuple[int, ...]

    @property
    def values_present(self) -> tuple[int, ...]:
        """Label values (0 included) seen in the checked files."""
        return tuple(v for v, n in enumerate(self.pixel_counts) if n > 0)


def _resolve_data_root(root: Path) -> Path:
    """``root`` itself, or ``root/ADEChallengeData2016`` when ``root`` has no images/ but that."""
    if not (root / "images").exists() and (root / "ADEChallengeData2016").is_dir():
        return root / "ADEChallengeData2016"
    return root


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    """Relative path without suffix -> path, for files ending in ``suffix`` under ``folder``
    (recursive, case-sensitive suffix, as mmseg's BaseSegDataset lists them)."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(suffix):
                path = Path(dirpath) / name
                out[str(path.relative_to(folder))[: -len(suffix)]] = path
    return out


def _names(stems: list[str]) -> str:
    return ", ".join(stems[:5]) + (", ..." if len(stems) > 5 else "")


def ade20k_pairs(root: str | Path, split: str = "training") -> list[tuple[Path, Path]]:
    """Sorted (image .jpg, label .png) pairs of a split. Raises DataError for a missing
    images/ or annotations/ folder, an empty split, or an image or label without its partner."""
    if split not in SPLITS:
        raise BenchError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    data_root = _resolve_data_root(Path(root))
    img_dir = data_root / "images" / split
    ann_dir = data_root / "annotations" / split
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing folder (expected ADEChallengeData2016/{folder.parent.name}/{split})")
    images = _stems(img_dir, ".jpg")
    labels = _stems(ann_dir, ".png")
    if not images:
        raise DataError(f"{img_dir}: no .jpg images")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    problems = []
    if no_label:
        problems.append(f"{len(no_label)} image(s) in {img_dir} have no .png label in {ann_dir}: {_names(no_label)}")
    if no_image:
        problems.append(f"{len(no_image)} label(s) in {ann_dir} have no .jpg image in {img_dir}: {_names(no_image)}")
    if problems:
        raise DataError("; ".join(problems))
    return [(images[s], labels[s]) for s in sorted(images)]


def data_identity(root: str | Path) -> str:
    """12 hex of the set as the reader sees it: every image and label of both splits by path
    relative to the root and size in bytes (another generated set or copy is another run; moving
    the folder is not)."""
    data_root = _resolve_data_root(Path(root))
    h = hashlib.sha256(b"ade20k")
    for split in SPLITS:
        for image, label in ade20k_pairs(data_root, split):
            for path in (image, label):
                h.update(f"{path.relative_to(data_root)}\t{path.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def validate_ade20k(
    root: str | Path, split: str = "training", check_values: bool = True, value_sample: int | None = None
) -> ADE20KSplitSummary:
    """Check one split of an ADE20K folder (``root`` is ADEChallengeData2016, or its parent).

    Always (headers only, cheap): images/<split> and annotations/<split> exist, every .jpg has a
    .png of the same name and vice versa, every label is single-channel 8-bit (PIL mode 'L', or
    'P', whose indices mmseg reads as labels) and has its image's size. With ``check_values``,
    the labels and images are decoded in full (a file cut or corrupt mid-way is an error) and any
    label value > 150 is an error; ``value_sample=n`` reads
    only n labels evenly spaced over the sorted list (for a quick look at the 20k real images).
    Raises DataError naming the first file at fault; returns an ``ADE20KSplitSummary``.
    """
    pairs = ade20k_pairs(root, split)
    for image_path, label_path in pairs:
        with _open(label_path) as label:
            if label.mode not in ("L", "P"):
                raise DataError(
                    f"{label_path}: label must be a single-channel uint8 PNG (PIL mode 'L'), got mode {label.mode!r}"
                )
            label_size = label.size
        with _open(image_path) as image:
            image_size = image.size
        if label_size != image_size:
            raise DataError(
                f"{label_path}: label is {label_size[0]}x{label_size[1]} (WxH) but "
                f"its image {image_path.name} is {image_size[0]}x{image_size[1]}"
            )

    counts = np.zeros(256, dtype=np.int64)
    checked = []
    if check_values:
        checked = pairs
        if value_sample is not None and value_sample < len(pairs):
            picks = np.linspace(0, len(pairs) - 1, num=max(int(value_sample), 0)).round()
            checked = [pairs[int(i)] for i in picks]
    for image_path, label_path in checked:
        for path in (image_path, label_path):  # decode the whole file: a JPEG/PNG cut or corrupt mid-file
            with _open(path) as im:
                try:
                    im.load()
                    values = np.asarray(im)
                except (OSError, ValueError, SyntaxError) as e:
                    raise DataError(f"{path}: cannot decode image ({e})") from None
        file_counts = np.bincount(values.ravel(), minlength=256)
        bad = np.flatnonzero(file_counts[NUM_CLASSES + 1 :])
        if bad.size:
            raise DataError(
                f"{label_path}: label value {NUM_CLASSES + 1 + int(bad[0])} > "
                f"{NUM_CLASSES} (ADE20K labels are 0 = other, 1..{NUM_CLASSES} = classes)"
            )
        counts += file_counts
    return ADE20KSplitSummary(
        data_root=_resolve_data_root(Path(root)),
        split=split,
        num_images=len(pairs),
        num_value_checked=len(checked),
        pixel_counts=tuple(int(n) for n in counts[: NUM_CLASSES + 1]),
    )


# --------------------------------------------------------------------------------------------
# Reference metric
# --------------------------------------------------------------------------------------------


def confusion_miou(
    pred_list, label_list, num_classes: int = NUM_CLASSES, reduce_zero_label: bool = True, ignore_index: int = 255
) -> dict:
    """mIoU / aAcc / per-class IoU from one confusion matrix over all images, in percent.

    ``pred_list[i]`` holds predicted class ids 0..num_classes-1; ``label_list[i]`` the label map
    as stored on disk. With ``reduce_zero_label`` (ADE20K), label 0 becomes ``ignore_index`` and
    every other value v becomes v - 1, as mmseg's LoadAnnotations does. Pixels whose (reduced)
    label is ``ignore_index`` are skipped. This is mmseg's IoUMetric without its rounding:

    - ``IoU[c] = |pred = c and gt = c| / |pred = c or gt = c|``; ``Acc[c] = |pred = gt = c| /
      |gt = c|``; ``aAcc`` = correct / counted pixels.
    - A class absent from both prediction and ground truth has IoU NaN (0 / 0) and is left out
      of ``mIoU`` (a nan-mean); a class predicted but absent from the ground truth has IoU 0 and
      counts. Likewise ``Acc`` is NaN for classes absent from the ground truth, left out of mAcc.

    Returns dict(mIoU, mAcc, aAcc: float; IoU, Acc: float arrays of num_classes; confusion:
    int64 array, rows = ground truth, columns = prediction).
    """
    if len(pred_list) != len(label_list):
        raise ValueError(f"{len(pred_list)} predictions but {len(label_list)} labels")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i, (pred, label) in enumerate(zip(pred_list, label_list)):
        pred = np.asarray(pred).astype(np.int64)
        label = np.asarray(label).astype(np.int64)
        if pred.shape != label.shape:
            raise ValueError(f"pred_list[{i}] has shape {pred.shape} but label_list[{i}] has {label.shape}")
        if reduce_zero_label:
            label = np.where(label == 0, ignore_index, label - 1)
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        if label.size and (label.min() < 0 or label.max() >= num_classes):
            bad = label[(label < 0) | (label >= num_classes)][0]
            raise DataError(
                f"label_list[{i}]: label value {bad + int(reduce_zero_label)} is not a "
                f"class (0..{num_classes - 1}"
                f"{' after reduce_zero_label' if reduce_zero_label else ''}) "
                f"nor ignore_index {ignore_index}"
            )
        if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
            raise ValueError(f"pred_list[{i}]: predicted ids must be in 0..{num_classes - 1}")
        confusion += np.bincount(label * num_classes + pred, minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )
    intersect = np.diag(confusion).astype(np.float64)
    area_label = confusion.sum(axis=1).astype(np.float64)
    area_pred = confusion.sum(axis=0).astype(np.float64)
    union = area_label + area_pred - intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = 100.0 * intersect / union
        acc = 100.0 * intersect / area_label
        a_acc = 100.0 * intersect.sum() / area_label.sum() if area_label.sum() else float("nan")

    def nanmean(x):
        return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")

    return {
        "mIoU": nanmean(iou),
        "mAcc": nanmean(acc),
        "aAcc": float(a_acc),
        "IoU": iou,
        "Acc": acc,
        "confusion": confusion,
    }
