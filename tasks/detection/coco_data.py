"""COCO-format instance data: a small generated set in the real COCO 2017 layout, and a validator.

Data only; metrics live in ``tasks/detection/evaluation.py`` (the detectron2 split).

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

``validate_coco(ann_file, image_dir)`` checks a COCO instances file (ours or the real 450 MB
``instances_train2017.json``: one ``json.load``, set look-ups, one directory listing) and raises
``DataError`` with one line naming the file and key at fault. ``check_same_categories`` compares the
categories of a train and a val file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bench.core.data import embedded_photos
from bench.core.errors import DataError
from bench.core.io import atomic_write_json, load_json  # noqa: F401  (both public here for evaluation.py)

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
CROWD_EVERY = 4  # the images at (0-based) index 1, 5, 9, ... of each split hold a crowd region


# --------------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------------


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
    image_dir.mkdir()
    photos = embedded_photos()
    cat_ids = [c["id"] for c in SHAPE_CATEGORIES]
    cat_queue: list[int] = []  # categories are dealt in shuffled rounds so every one appears
    images, annotations = [], []
    for i in range(n_images):
        image_id = first_image_id + i
        file_name = f"{image_id:012d}.jpg"
        img = _background(photos[int(rng.integers(len(photos)))], height, width, rng)
        taken: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 of placed instances
        instances = []  # (category_id, segmentation, rle, iscrowd)
        if i % CROWD_EVERY == 1:
            crowd = _place(lambda: _crowd_region(height, width, rng), taken, rng, height, width)
            if crowd is not None:
                instances.append((CROWD_CATEGORY_ID, *crowd, 1))
        for _ in range(int(rng.integers(1, MAX_OBJECTS_PER_IMAGE + 1))):
            if not cat_queue:
                cat_queue = list(rng.permutation(cat_ids))
            cat_id = int(cat_queue[-1])
            placed = _place(lambda: _shape(cat_id, height, width, rng), taken, rng, height, width)  # noqa: B023 (called here)
            if placed is not None:
                cat_queue.pop()
                instances.append((cat_id, *placed, 0))
        for cat_id, segmentation, rle, iscrowd in instances:
            mask = mask_utils.decode(rle).astype(bool)
            _paint(img, mask, cat_id, rng)
            annotations.append(
                {
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": iscrowd,
                    "image_id": image_id,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "category_id": cat_id,
                    "id": next_ann_id,
                }
            )
            next_ann_id += 1
        Image.fromarray(img).save(image_dir / file_name, quality=92, subsampling=0)
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": "",
                "height": height,
                "width": width,
                "date_captured": "",
                "flickr_url": "",
                "id": image_id,
            }
        )
    dataset = {
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
    return dataset, next_ann_id


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


# --------------------------------------------------------------------------------------------------
# validator
# --------------------------------------------------------------------------------------------------


def _check_id(value, ann_file, where: str, key: str = "id"):
    """COCO ids are integers (strings tolerated); anything else is named."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{ann_file}: {where} {key!r} must be an integer, got {type(value).__name__} {str(value)[:40]}")
    return value


def validate_coco(
    ann_file: str | Path, image_dir: str | Path | None, *, require_images: bool = True, skip_degenerate: bool = True
) -> dict:
    """Check a COCO instances file (and its images) and return a summary.

    Raises ``DataError`` (one line naming ``ann_file`` or ``image_dir`` and the key at fault) when:
    a top-level key ``images`` / ``annotations`` / ``categories`` is missing; an image, category or
    annotation lacks a required key or repeats an id; an annotation points at an image id or
    category id that is not listed; a ``bbox`` is not 4 numbers; a polygon has fewer than 3 points
    (or an odd number of coordinates); an RLE lacks ``counts``/``size`` or its size is not the
    image's; or, with ``require_images``, image files are missing from ``image_dir`` (the first 5
    are named, with the count).

    Annotations with a degenerate box (w or h <= 0; real ``instances_train2017.json`` has one, id
    918) are skipped with a ``warnings.warn`` naming their count and first ids (for training). With
    ``skip_degenerate=False`` they are kept, without a warning, as pycocotools keeps them when it
    evaluates (so that metrics match the official ones).

    Returns a dict: ``ann_file``, ``image_dir``, ``num_images``, ``num_annotations`` (kept),
    ``num_crowd``, ``num_polygon``, ``num_rle`` (of the kept), ``categories`` (list of category
    dicts, sorted by id), ``degenerate_ann_ids`` and ``dataset``: the loaded dict, with the
    degenerate annotations removed if ``skip_degenerate`` (pass it to ``coco_from_dict`` rather
    than loading the file again).
    """
    ann_file = Path(ann_file)
    data = load_json(ann_file, "annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: not a COCO instances file: top level is a {type(data).__name__}, not an object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(
            f"{ann_file}: not a COCO instances file: missing top-level key(s) " + ", ".join(repr(k) for k in missing)
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}")

    images: dict = {}  # id -> (height, width)
    for i, img in enumerate(data["images"]):
        _require_keys(img, ("id", "file_name", "height", "width"), ann_file, f"images[{i}]")
        _check_id(img["id"], ann_file, f"images[{i}]")
        if not isinstance(img["file_name"], str):
            raise DataError(
                f"{ann_file}: images[{i}] 'file_name' must be a string, got {type(img['file_name']).__name__}"
            )
        if img["id"] in images:
            raise DataError(f"{ann_file}: images[{i}] repeats image id {img['id']}")
        images[img["id"]] = (img["height"], img["width"])

    categories: dict = {}
    for i, cat in enumerate(data["categories"]):
        _require_keys(cat, ("id", "name"), ann_file, f"categories[{i}]")
        _check_id(cat["id"], ann_file, f"categories[{i}]")
        if cat["id"] in categories:
            raise DataError(f"{ann_file}: categories[{i}] repeats category id {cat['id']}")
        categories[cat["id"]] = cat

    ann_ids: set = set()
    kept, degenerate = [], []
    num_crowd = num_polygon = num_rle = 0
    for i, ann in enumerate(data["annotations"]):
        _require_keys(ann, ("id", "image_id", "category_id", "bbox"), ann_file, f"annotations[{i}]")
        aid = _check_id(ann["id"], ann_file, f"annotations[{i}]")
        _check_id(ann["image_id"], ann_file, f"annotation id {aid}", "image_id")
        _check_id(ann["category_id"], ann_file, f"annotation id {aid}", "category_id")
        if aid in ann_ids:
            raise DataError(f"{ann_file}: annotations[{i}] repeats annotation id {aid}")
        ann_ids.add(aid)
        if ann["image_id"] not in images:
            raise DataError(f"{ann_file}: annotation id {aid} has image_id {ann['image_id']}, which is not in 'images'")
        if ann["category_id"] not in categories:
            raise DataError(
                f"{ann_file}: annotation id {aid} has category_id {ann['category_id']}, which is not in 'categories'"
            )
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            raise DataError(
                f"{ann_file}: annotation id {aid} 'bbox' must be 4 finite numbers [x, y, w, h], got {str(bbox)[:60]}"
            )
        if bbox[2] <= 0 or bbox[3] <= 0:
            degenerate.append(aid)
            if skip_degenerate:
                continue
        segm = ann.get("segmentation")
        if isinstance(segm, list) and segm:
            for k, poly in enumerate(segm):
                if not isinstance(poly, list) or len(poly) % 2:
                    raise DataError(
                        f"{ann_file}: annotation id {aid} 'segmentation' polygon {k} "
                        "must be a flat list [x1, y1, x2, y2, ...] of even length"
                    )
                if len(poly) < 6:
                    raise DataError(
                        f"{ann_file}: annotation id {aid} 'segmentation' polygon {k} "
                        f"has {len(poly) // 2} point(s); a polygon needs at least 3"
                    )
            num_polygon += 1
        elif isinstance(segm, dict):
            if "counts" not in segm or "size" not in segm:
                raise DataError(f"{ann_file}: annotation id {aid} 'segmentation' RLE needs 'counts' and 'size'")
            h, w = images[ann["image_id"]]
            if not isinstance(segm["size"], list) or len(segm["size"]) != 2:
                raise DataError(
                    f"{ann_file}: annotation id {aid} 'segmentation' RLE 'size' must be "
                    f"[height, width], got {str(segm['size'])[:40]}"
                )
            if list(segm["size"]) != [h, w]:
                raise DataError(
                    f"{ann_file}: annotation id {aid} 'segmentation' size "
                    f"{segm['size']} is not its image's [height, width] [{h}, {w}]"
                )
            num_rle += 1
        elif segm is not None and segm != []:
            raise DataError(
                f"{ann_file}: annotation id {aid} 'segmentation' must be a list of "
                f"polygons or an RLE dict, got {type(segm).__name__}"
            )
        num_crowd += bool(ann.get("iscrowd", 0))
        kept.append(ann)

    if degenerate and skip_degenerate:
        warnings.warn(
            f"{ann_file}: skipping {len(degenerate)} annotation(s) with a degenerate "
            f"'bbox' (w or h <= 0), ids {_first(degenerate)}",
            stacklevel=2,
        )

    if require_images:
        if image_dir is None:
            raise DataError(f"{ann_file}: require_images=True needs an image_dir")
        _check_image_files(data["images"], Path(image_dir), ann_file)

    dataset = dict(data)
    dataset["annotations"] = kept
    return {
        "ann_file": str(ann_file),
        "image_dir": None if image_dir is None else str(image_dir),
        "num_images": len(images),
        "num_annotations": len(kept),
        "num_crowd": num_crowd,
        "num_polygon": num_polygon,
        "num_rle": num_rle,
        "categories": [categories[k] for k in sorted(categories)],
        "degenerate_ann_ids": degenerate,
        "dataset": dataset,
    }


def _require_keys(obj, keys, ann_file: Path, where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{ann_file}: {where} must be an object, got {type(obj).__name__}")
    for k in keys:
        if k not in obj:
            raise DataError(f"{ann_file}: {where} is missing key '{k}'")


def _first(items, n: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (", ..." if len(items) > n else "")


def _check_image_files(images: list, image_dir: Path, ann_file: Path) -> None:
    """All ``file_name``s exist under ``image_dir``: one directory listing, then set look-ups."""
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image directory not found (images of {ann_file})")
    present = set(os.listdir(image_dir))
    missing = []
    for img in images:
        name = img["file_name"]
        if name in present:
            continue
        if ("/" in name or os.sep in name) and (image_dir / name).is_file():
            continue
        missing.append(name)
    if missing:
        raise DataError(
            f"{image_dir}: {len(missing)} image file(s) listed in {ann_file} 'images' are missing: {_first(missing)}"
        )


def check_same_categories(train: str | Path | Mapping, val: str | Path | Mapping) -> list[dict]:
    """The categories of ``train`` and ``val`` (COCO files or loaded dicts) must be the same.

    Raises ``DataError`` naming the ids present in only one of them, or an id whose name differs.
    Returns the categories sorted by id.
    """

    def cats(src):
        data = load_json(src, "annotation file") if not isinstance(src, Mapping) else src
        name = str(src) if not isinstance(src, Mapping) else "<dict>"
        if not isinstance(data, Mapping) or not isinstance(data.get("categories"), list):
            raise DataError(f"{name}: not a COCO instances file: missing top-level key 'categories'")
        for i, c in enumerate(data["categories"]):
            _require_keys(c, ("id", "name"), Path(name), f"categories[{i}]")
            _check_id(c["id"], Path(name), f"categories[{i}]")
        return name, {c["id"]: c for c in data["categories"]}

    train_name, train_cats = cats(train)
    val_name, val_cats = cats(val)
    only_train = sorted(set(train_cats) - set(val_cats))
    only_val = sorted(set(val_cats) - set(train_cats))
    if only_train or only_val:
        raise DataError(
            f"{val_name}: 'categories' ids differ from {train_name}: only in train {only_train}, only in val {only_val}"
        )
    for cid in sorted(train_cats):
        if train_cats[cid]["name"] != val_cats[cid]["name"]:
            raise DataError(
                f"{val_name}: 'categories' id {cid} is named "
                f"{val_cats[cid]['name']!r}, but {train_cats[cid]['name']!r} in "
                f"{train_name}"
            )
    return [train_cats[k] for k in sorted(train_cats)]


def coco_from_dict(dataset: Mapping) -> COCO:
    """A pycocotools ``COCO`` built from an already-loaded dict, without its console output."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
