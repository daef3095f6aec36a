"""A small generated COCO instance set in the real COCO 2017 layout (the reader and validator are
in ``tasks/detection/coco_data.py``).

``make_coco_dataset(root)`` writes::

    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/train2017/000000000001.jpg ...
    root/val2017/000001000001.jpg ...

Backgrounds are random crops of the bundled real photographs (``bench.core.data.embedded_photos()``);
on top of them, simple shapes of five categories with non-contiguous COCO ids (``SHAPE_CATEGORIES``)
are drawn in distinct colours, 12 px to half the image in size, never overlapping. Like real COCO,
most instances are polygons, the rings (which have a hole) are compressed RLE, and some images hold
one ``iscrowd: 1`` region (a cluster of small dots, uncompressed RLE, category "disc"). Every
``bbox`` is the pixel extent of the instance mask and every ``area`` is the mask's pixel count,
both computed with pycocotools from the stored segmentation, so a reader that decodes the JSON sees
exactly the pixels that were painted. Real COCO boxes are the polygon's float extent instead; the
two differ by under a pixel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from bench.core.data import embedded_photos
from bench.core.errors import DataError

# Category ids are non-contiguous on purpose (as in real COCO, whose 80 ids run 1..90): code that
# confuses a model's label index with a COCO category id fails on this data.
SHAPE_CATEGORIES: tuple[dict, ...] = (
    {"supercategory": "round", "id": 1, "name": "disc"},
    {"supercategory": "polygon", "id": 3, "name": "box"},
    {"supercategory": "polygon", "id": 7, "name": "triangle"},
    {"supercategory": "round", "id": 18, "name": "ring"},
    {"supercategory": "polygon", "id": 44, "name": "star"},
)
_COLOURS = {  # RGB base colour per category id, saturated so it stands out on photos
    1: (220, 30, 30),
    3: (30, 70, 230),
    7: (245, 215, 20),
    18: (210, 40, 210),
    44: (30, 200, 70),
}
CROWD_CATEGORY_ID = 1  # crowd regions are clusters of small discs
SPLITS = ("train2017", "val2017")
VAL_IMAGE_ID_OFFSET = 1_000_000  # image ids are unique across splits, as in real COCO
MIN_OBJECT_SIZE = 12  # px; the largest object is half the shorter image side
MAX_OBJECTS_PER_IMAGE = 4
MAX_IMAGE_SIDE = 4096  # px; real COCO images are at most 640
CROWD_EVERY = 4  # the images at (0-based) index 1, 5, 9, ... of each split hold a crowd region


def make_coco_dataset(
    root: str | Path,
    n_train: int = 16,
    n_val: int = 8,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a small COCO 2017-layout instance dataset under ``root`` and return ``root``.

    ``image_size`` is ``(height, width)``; every image has that size. The output depends only on
    the arguments (same seed, same bytes). Nothing partial is left behind on failure: the dataset is
    built in a hidden temporary folder inside ``root`` and moved into place at the end. If
    ``root/annotations``, ``root/train2017`` or ``root/val2017`` exists, ``DataError`` is raised
    unless ``overwrite``.
    """
    root = Path(root)
    height, width = (int(v) for v in image_size)
    if n_train < 1 or n_val < 1:
        raise DataError(f"{root}: n_train and n_val must be >= 1 (got {n_train}, {n_val})")
    if min(height, width) < 2 * MIN_OBJECT_SIZE + 8:
        raise DataError(
            f"{root}: image_size {image_size} is too small; the shorter side must be >= {2 * MIN_OBJECT_SIZE + 8}"
        )
    if max(height, width) > MAX_IMAGE_SIDE:  # each image is painted in memory at full size, several times over
        raise DataError(f"{root}: image_size {image_size} is too large; each side must be <= {MAX_IMAGE_SIDE}")
    targets = [root / "annotations", *(root / s for s in SPLITS)]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists (pass overwrite=True to replace it)")

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".coco-tmp-", dir=root))
    try:
        (tmp / "annotations").mkdir()
        next_ann_id = 1
        for split_index, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
            rng = np.random.default_rng([seed, split_index])
            first_image_id = 1 + split_index * VAL_IMAGE_ID_OFFSET
            dataset, next_ann_id = _make_split(tmp / split, n, height, width, rng, first_image_id, next_ann_id)
            with open(tmp / "annotations" / f"instances_{split}.json", "w") as f:
                json.dump(dataset, f, separators=(",", ":"))
        for t in existing:
            shutil.rmtree(t)
        for t in targets:
            os.replace(tmp / t.name, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _make_split(
    image_dir: Path,
    n_images: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    first_image_id: int,
    next_ann_id: int,
) -> tuple[dict, int]:
    """Write ``n_images`` images into ``image_dir``; (the split's COCO dict, the next free annotation id)."""
    image_dir.mkdir()
    photos = embedded_photos()
    cat_queue: list[int] = []  # categories are dealt in shuffled rounds so every one appears
    images, annotations = [], []
    for i in range(n_images):
        image_id = first_image_id + i
        img = _background(photos[int(rng.integers(len(photos)))], height, width, rng)
        for cat_id, segmentation, rle, iscrowd in _instances(i, height, width, rng, cat_queue):
            mask = mask_utils.decode(rle).astype(bool)
            _paint(img, mask, cat_id, rng)
            annotations.append(_annotation(next_ann_id, image_id, cat_id, segmentation, rle, iscrowd))
            next_ann_id += 1
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(img).save(image_dir / file_name, quality=92, subsampling=0)
        images.append(_image_entry(image_id, file_name, height, width))
    return _dataset(images, annotations), next_ann_id


def _instances(index: int, height: int, width: int, rng: np.random.Generator, cat_queue: list[int]) -> list[tuple]:
    """(category_id, segmentation, rle, iscrowd) of the instances of the split's image ``index``:
    a crowd region on every ``CROWD_EVERY``-th image, then 1..MAX_OBJECTS_PER_IMAGE shapes whose
    categories are dealt from ``cat_queue`` (refilled with a shuffled round when empty)."""
    taken: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 of placed instances
    instances = []
    if index % CROWD_EVERY == 1:
        crowd = _place(lambda: _crowd_region(height, width, rng), taken, rng, height, width)
        if crowd is not None:
            instances.append((CROWD_CATEGORY_ID, *crowd, 1))
    for _ in range(int(rng.integers(1, MAX_OBJECTS_PER_IMAGE + 1))):
        if not cat_queue:
            cat_queue.extend(rng.permutation([c["id"] for c in SHAPE_CATEGORIES]))
        cat_id = int(cat_queue[-1])
        placed = _place(lambda: _shape(cat_id, height, width, rng), taken, rng, height, width)  # noqa: B023 (called here)
        if placed is not None:
            cat_queue.pop()
            instances.append((cat_id, *placed, 0))
    return instances


def _annotation(ann_id: int, image_id: int, cat_id: int, segmentation, rle, iscrowd: int) -> dict:
    """One COCO annotation; ``bbox`` and ``area`` are the mask's, computed by pycocotools."""
    return {
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "iscrowd": iscrowd,
        "image_id": image_id,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "category_id": cat_id,
        "id": ann_id,
    }


def _image_entry(image_id: int, file_name: str, height: int, width: int) -> dict:
    return {
        "license": 1,
        "file_name": file_name,
        "coco_url": "",
        "height": height,
        "width": width,
        "date_captured": "",
        "flickr_url": "",
        "id": image_id,
    }


def _dataset(images: list, annotations: list) -> dict:
    """A COCO instances dict with the real file's top-level keys."""
    return {
        "info": {
            "description": "maebench shapes on real photos, COCO 2017 layout",
            "url": "",
            "version": "1.0",
            "year": 2017,
            "contributor": "maebench",
            "date_created": "",
        },
        "licenses": [
            {
                "url": "https://scikit-image.org/docs/stable/api/skimage.data.html",
                "id": 1,
                "name": "backgrounds: scikit-image / scikit-learn sample photographs",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in SHAPE_CATEGORIES],
    }


def _background(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``photo`` with the aspect of (height, width), resized to that size."""
    ph, pw = photo.shape[:2]
    scale = min(ph / height, pw / width) * rng.uniform(0.3, 1.0)
    ch, cw = max(1, int(height * scale)), max(1, int(width * scale))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[y0 : y0 + ch, x0 : x0 + cw]))
    return np.array(crop.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def _place(make, taken, rng, height, width, attempts: int = 30):
    """Try ``make()`` at random free spots; return (segmentation, rle) or None when nothing fits.

    ``make`` returns (kind, geometry, (w, h)) with geometry centred at the origin; the instance is
    shifted so its box lies inside the image and 2 px away from every box in ``taken``.
    """
    for _ in range(attempts):
        kind, geom, (bw, bh) = make()
        x0 = rng.uniform(1, width - 1 - bw)
        y0 = rng.uniform(1, height - 1 - bh)
        box = (x0, y0, x0 + bw, y0 + bh)
        if any(box[0] < t[2] + 2 and t[0] < box[2] + 2 and box[1] < t[3] + 2 and t[1] < box[3] + 2 for t in taken):
            continue
        cx, cy = x0 + bw / 2, y0 + bh / 2
        if kind == "polygon":
            poly = [round(float(v), 2) for x, y in geom for v in (x + cx, y + cy)]
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
            segmentation = [poly]
        else:  # "mask": geom(xx, yy) -> bool, on pixel centres relative to the centre
            yy, xx = np.mgrid[0:height, 0:width]
            mask = geom(xx + 0.5 - cx, yy + 0.5 - cy)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            if kind == "crowd":
                segmentation = {"counts": uncompressed_rle_counts(mask), "size": [height, width]}
            else:
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        if mask_utils.area(rle) < 4:  # too thin to rasterise; try again
            continue
        taken.append(box)
        return segmentation, rle
    return None


def _shape(cat_id: int, height: int, width: int, rng: np.random.Generator):
    """Geometry of one instance of ``cat_id`` (see ``_place``), size MIN_OBJECT_SIZE..min(H,W)/2."""
    size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(min(height, width) / 2)))
    r = size / 2
    theta = rng.uniform(0, 2 * math.pi)
    if cat_id == 18:  # ring: an annulus, stored as compressed RLE (a polygon cannot hold the hole)
        inner = r * rng.uniform(0.45, 0.6)
        return "mask", (lambda x, y: (x * x + y * y <= r * r) & (x * x + y * y >= inner * inner)), (2 * r, 2 * r)
    if cat_id == 1:  # disc: an ellipse
        b = r * rng.uniform(0.6, 1.0)
        angles = np.linspace(0, 2 * math.pi, 28, endpoint=False)
        pts = np.stack([r * np.cos(angles), b * np.sin(angles)], 1)
    elif cat_id == 3:  # box: a rotated rectangle
        h = r * rng.uniform(0.5, 1.0)
        pts = np.array([[-r, -h], [r, -h], [r, h], [-r, h]])
    elif cat_id == 7:  # triangle
        angles = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.2, 0.2, 3)
        radii = r * rng.uniform(0.85, 1.0, 3)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    elif cat_id == 44:  # star: five points
        angles = np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    else:
        raise ValueError(f"no shape for category id {cat_id}")
    c, s = math.cos(theta), math.sin(theta)
    pts = pts @ np.array([[c, s], [-s, c]])
    pts -= (pts.max(0) + pts.min(0)) / 2  # centre the extent on the origin
    pts *= size / (pts.max(0) - pts.min(0)).max()  # the longer side of the box is ``size``
    extent = pts.max(0) - pts.min(0)
    return "polygon", [tuple(p) for p in pts], (float(extent[0]), float(extent[1]))


def _crowd_region(height: int, width: int, rng: np.random.Generator):
    """A cluster of 6..12 small dots: one ``iscrowd`` region (like a COCO crowd of people)."""
    side = rng.uniform(20, max(21.0, min(height, width) / 2.5))
    n = int(rng.integers(6, 13))
    centres = rng.uniform(-side / 2 + 3, side / 2 - 3, size=(n, 2))
    radii = rng.uniform(1.5, 3.0, size=n)

    def geom(x, y):
        out = np.zeros(x.shape, dtype=bool)
        for (cx, cy), rad in zip(centres, radii):
            out |= (x - cx) ** 2 + (y - cy) ** 2 <= rad * rad
        return out

    return "crowd", geom, (side, side)


def _paint(img: np.ndarray, mask: np.ndarray, cat_id: int, rng: np.random.Generator) -> None:
    """Fill ``mask`` in ``img`` with the category colour (jittered), a light texture and noise."""
    colour = np.array(_COLOURS[cat_id], dtype=np.float64) + rng.uniform(-25, 25, 3)
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    shade = np.ones((h, w))
    if cat_id == 3:  # diagonal stripes
        shade = np.where(((xx + yy) // 3) % 2 == 0, 1.0, 0.7)
    elif cat_id == 44:  # small checker
        shade = np.where(((xx // 2) + (yy // 2)) % 2 == 0, 1.0, 0.85)
    pixels = colour[None, None, :] * shade[:, :, None] + rng.normal(0, 6, (h, w, 3))
    img[mask] = np.clip(pixels, 0, 255).astype(np.uint8)[mask]


def uncompressed_rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a 2-D mask: run lengths, column-major order, zeros first."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return counts


def ellipse_boxes(rng, size: int, boxes: int):
    """(boxes, 4) float32 xyxy boxes with sides 5-40 % of ``size`` and their inscribed-ellipse masks
    ((boxes, size, size) bool)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    wh = rng.uniform(0.05, 0.4, (boxes, 2)) * size
    xy = rng.uniform(0, 1, (boxes, 2)) * (size - wh)
    bb = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    c, r = (bb[:, :2] + bb[:, 2:]) / 2, wh / 2
    masks = ((xx[None] - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 + (
        (yy[None] - c[:, 1, None, None]) / r[:, 1, None, None]
    ) ** 2 <= 1
    return bb, masks
