"""Reading COCO-format instance files: a validator that stops bad annotations at the reader, and the
fixed held-out part of a training split used for hyperparameter selection.

The generated set (``make_coco_dataset``) lives in ``tasks/detection/coco_generate.py`` and is
re-exported here.

``validate_coco(ann_file, image_dir)`` checks a COCO instances file (ours or the real 450 MB
``instances_train2017.json``: one ``json.load``, set look-ups, one directory listing) and raises
``DataError`` with one line naming the file, the annotation id and the key at fault. Everything that
later reaches pycocotools' C code or a trainer is checked here, because those crash (SIGSEGV) or
train silently on bad values:

* images: ``height`` and ``width`` positive integers, ``height * width`` within the image pixel limit
  (``bench.core.images.max_pixels``);
* ``bbox``: 4 finite numbers within ``COORD_MARGIN`` image sizes of the image;
* polygons: flat lists of at least 3 (x, y) points, numbers, finite, within ``COORD_MARGIN`` image
  sizes of the image (pycocotools rasterises with C ints: 1e308 overflows and crashes);
* RLE: ``size`` = the image's [height, width]; uncompressed ``counts`` non-negative integers summing to
  height * width; compressed ``counts`` strings decoded here in Python (pycocotools' decoder writes
  past its buffer when the runs add up to more than the image) and held to the same rule;
* a ``segmentation`` on every annotation (Mask R-CNN trains and evaluates masks; mmdet's mask loader
  fails on an instance without one);
* ``iscrowd`` 0 or 1; ``area``, when present, a finite number >= 0.

``check_same_categories`` compares the categories of a train and a val file.

Held-out split (hyperparameter selection that never reads val): ``heldout_split(ann_file)`` returns
``(train_ids, heldout_ids)``, image ids of the training file. The held-out part is
``min(HELDOUT_CAP, round(HELDOUT_FRACTION * n))`` images (at least 1, never all), n = the images with
at least one non-crowd annotation (so that its AP is defined), drawn with
``numpy.random.default_rng(HELDOUT_SEED)`` from the sorted ids: the same for every initialisation,
seed and grid point. For COCO train2017 (about 117,000 such images) that is 5,000 images, as many as
val2017; val is never touched, so the part is disjoint from it. ``write_heldout_split(coco_root,
out_dir)`` writes the two annotation files (``instances_train2017-minus-heldout.json`` and
``instances_train2017-heldout.json``, both with images in ``train2017/``) for the detection engines,
and reuses them while the source file and the settings are unchanged (``heldout_split.json``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from bench.core.errors import DataError
from bench.core.images import max_pixels
from bench.core.io import atomic_write_json, load_json  # noqa: F401  (both public here for evaluation.py)
from tasks.detection.coco_generate import (  # noqa: F401  (the generator's public names, imported from here before)
    SHAPE_CATEGORIES,
    make_coco_dataset,
    uncompressed_rle_counts,
)

# Coordinates (polygons, boxes) may lie at most this many image sizes outside the image: real COCO
# polygons stray by a pixel at most; pycocotools scales by 5 into C ints, so this keeps it far from overflow.
COORD_MARGIN = 1.0
HELDOUT_FRACTION = 0.1  # of the training images with an object ...
HELDOUT_CAP = 5000  # ... at most as many as COCO val2017
HELDOUT_SEED = 0  # fixed, not the run's seed: every init, seed and grid point sees the same carve
HELDOUT_FILES = ("instances_train2017-minus-heldout.json", "instances_train2017-heldout.json")
HELDOUT_MANIFEST = "heldout_split.json"


# --------------------------------------------------------------------------------------------------
# validator
# --------------------------------------------------------------------------------------------------


def _check_id(value, ann_file, where: str, key: str = "id"):
    """COCO ids are integers (strings tolerated); anything else is named."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{ann_file}: {where} {key!r} must be an integer, got {type(value).__name__} {str(value)[:40]}")
    return value


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_coco(
    ann_file: str | Path, image_dir: str | Path | None, *, require_images: bool = True, skip_degenerate: bool = True
) -> dict:
    """Check a COCO instances file (and its images) and return a summary.

    Raises ``DataError`` (one line naming ``ann_file`` or ``image_dir``, the annotation id and the key
    at fault) when: a top-level key ``images`` / ``annotations`` / ``categories`` is missing; an
    image, category or annotation lacks a required key or repeats an id; an annotation points at an
    image id or category id that is not listed; any value listed in the module docstring is out of
    its range; or, with ``require_images``, image files are missing from ``image_dir`` (the first 5
    are named, with the count).

    Annotations with a degenerate box (w or h <= 0; real ``instances_train2017.json`` has one, id
    918) are skipped with a ``warnings.warn`` naming their count and first ids (for training). With
    ``skip_degenerate=False`` they are kept (and checked), without a warning, as pycocotools keeps
    them when it evaluates (so that metrics match the official ones).

    Returns a dict: ``ann_file``, ``image_dir``, ``num_images``, ``num_annotations`` (kept),
    ``num_crowd``, ``num_polygon``, ``num_rle`` (of the kept), ``categories`` (list of category
    dicts, sorted by id), ``degenerate_ann_ids`` and ``dataset``: the loaded dict, with the
    degenerate annotations removed if ``skip_degenerate`` (pass it to ``coco_from_dict`` rather
    than loading the file again).
    """
    ann_file = Path(ann_file)
    data = _load_instances(ann_file)
    images = _index_images(data["images"], ann_file)
    categories = _index_categories(data["categories"], ann_file)
    kept, degenerate, counts = _check_annotations(data["annotations"], images, categories, ann_file, skip_degenerate)
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
        **counts,
        "categories": [categories[k] for k in sorted(categories)],
        "degenerate_ann_ids": degenerate,
        "dataset": dataset,
    }


def _load_instances(ann_file: Path) -> dict:
    """The file's JSON object, with the three lists a COCO instances file needs."""
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
    return data


def _index_images(entries: list, ann_file: Path) -> dict:
    """{image id: (height, width)}; sizes are positive integers within the pixel limit."""
    images: dict = {}
    limit = max_pixels()
    for i, img in enumerate(entries):
        _require_keys(img, ("id", "file_name", "height", "width"), ann_file, f"images[{i}]")
        _check_id(img["id"], ann_file, f"images[{i}]")
        if not isinstance(img["file_name"], str):
            raise DataError(
                f"{ann_file}: images[{i}] 'file_name' must be a string, got {type(img['file_name']).__name__}"
            )
        for key in ("height", "width"):
            v = img[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DataError(f"{ann_file}: image id {img['id']} {key!r} must be a positive integer, got {_short(v)}")
        if limit and img["height"] * img["width"] > limit:
            raise DataError(
                f"{ann_file}: image id {img['id']} 'height' x 'width' {img['height']} x {img['width']} is over "
                f"the image pixel limit {limit}"
            )
        if img["id"] in images:
            raise DataError(f"{ann_file}: images[{i}] repeats image id {img['id']}")
        images[img["id"]] = (img["height"], img["width"])
    return images


def _index_categories(entries: list, ann_file: Path) -> dict:
    categories: dict = {}
    for i, cat in enumerate(entries):
        _require_keys(cat, ("id", "name"), ann_file, f"categories[{i}]")
        _check_id(cat["id"], ann_file, f"categories[{i}]")
        if cat["id"] in categories:
            raise DataError(f"{ann_file}: categories[{i}] repeats category id {cat['id']}")
        categories[cat["id"]] = cat
    return categories


def _check_annotations(entries: list, images: dict, categories: dict, ann_file: Path, skip_degenerate: bool):
    """(kept annotations, degenerate ids, {num_crowd, num_polygon, num_rle} of the kept)."""
    ann_ids: set = set()
    kept, degenerate = [], []
    counts = {"num_crowd": 0, "num_polygon": 0, "num_rle": 0}
    for i, ann in enumerate(entries):
        aid = _check_references(ann, i, images, categories, ann_file)
        if aid in ann_ids:
            raise DataError(f"{ann_file}: annotations[{i}] repeats annotation id {aid}")
        ann_ids.add(aid)
        where = f"{ann_file}: annotation id {aid}"
        h, w = images[ann["image_id"]]
        _check_bbox(ann["bbox"], h, w, where)
        _check_scalars(ann, where)
        if ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            degenerate.append(aid)
            if skip_degenerate:
                continue
        counts[f"num_{_check_segmentation(ann.get('segmentation'), h, w, where)}"] += 1
        counts["num_crowd"] += ann.get("iscrowd", 0)
        kept.append(ann)
    return kept, degenerate, counts


def _check_references(ann, i: int, images: dict, categories: dict, ann_file: Path):
    """The annotation's own id, after its keys and the image / category it points at are checked."""
    _require_keys(ann, ("id", "image_id", "category_id", "bbox"), ann_file, f"annotations[{i}]")
    aid = _check_id(ann["id"], ann_file, f"annotations[{i}]")
    _check_id(ann["image_id"], ann_file, f"annotation id {aid}", "image_id")
    _check_id(ann["category_id"], ann_file, f"annotation id {aid}", "category_id")
    if ann["image_id"] not in images:
        raise DataError(f"{ann_file}: annotation id {aid} has image_id {ann['image_id']}, which is not in 'images'")
    if ann["category_id"] not in categories:
        raise DataError(
            f"{ann_file}: annotation id {aid} has category_id {ann['category_id']}, which is not in 'categories'"
        )
    return aid


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_bbox(bbox, h: int, w: int, where: str) -> None:
    """4 finite numbers [x, y, w, h] within COORD_MARGIN image sizes of the image (w, h may be <= 0:
    degenerate boxes are the caller's to skip)."""
    m = COORD_MARGIN
    try:  # the common case in C-level arithmetic; strings and None raise TypeError, NaN / inf fail isfinite
        x, y, bw, bh = bbox if type(bbox) is list else ()
        if not math.isfinite(x + y + bw + bh):
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where} 'bbox' must be 4 finite numbers [x, y, w, h], got {str(bbox)[:60]}") from None
    if not (-m * w <= x <= (1 + m) * w and -m * h <= y <= (1 + m) * h) or max(abs(bw) / w, abs(bh) / h) > 1 + 2 * m:
        raise DataError(f"{where} 'bbox' {_short(bbox, 80)} lies far outside its {w}x{h} image")


def _check_scalars(ann: dict, where: str) -> None:
    """``iscrowd`` is 0 or 1 (pycocotools and both engines test it for truth: "yes" would be a crowd);
    ``area`` (COCOeval's small / medium / large split) a finite number >= 0."""
    if "iscrowd" in ann and (type(ann["iscrowd"]) is not int or ann["iscrowd"] not in (0, 1)):
        raise DataError(f"{where} 'iscrowd' must be 0 or 1, got {_short(ann['iscrowd'])}")
    if "area" in ann and not (_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
        raise DataError(f"{where} 'area' must be a finite number >= 0, got {_short(ann['area'])}")


def _check_segmentation(segm, h: int, w: int, where: str) -> str:
    """'polygon' or 'rle' after checking it against its h x w image (every annotation needs one)."""
    if isinstance(segm, list) and segm:
        for k, poly in enumerate(segm):
            if not _polygon_fits(poly, h, w):  # the exact reason, only for the rare bad one
                _check_polygon(poly, k, h, w, where)
        return "polygon"
    if isinstance(segm, dict):
        check_rle(segm, h, w, where)
        return "rle"
    if segm is None or segm == []:  # mmdet's mask loader and COCOeval's segm both index it
        raise DataError(
            f"{where} has no 'segmentation'; instance masks are trained and evaluated, give polygons or an RLE"
        )
    raise DataError(f"{where} 'segmentation' must be a list of polygons or an RLE dict, got {type(segm).__name__}")


# A polygon's outline (sum over edges of the longer of |dx|, |dy|) may be at most MAX_TRACE x (h + w) and
# MAX_TRACE_PX pixels; polygons of at most FAST_POINTS points on images of at most FAST_SIDE px cannot
# exceed either (each edge spans at most 3 x the image).
MAX_TRACE, MAX_TRACE_PX = 150, 2_000_000
FAST_POINTS, FAST_SIDE = 50, 13_000


def _polygon_fits(poly, h: int, w: int) -> bool:
    """The common case, fast (C-level sum / min / max; the real train file has ~1.2 M polygons): a flat
    list of >= 3 points, numbers, finite, within the margin. False sends it to ``_check_polygon``."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or len(poly) > 2 * FAST_POINTS:
        return False
    if max(h, w) > FAST_SIDE:
        return False
    try:
        if not math.isfinite(sum(poly)):  # strings / None / lists raise TypeError; NaN and inf show here
            return False
        xs, ys = poly[0::2], poly[1::2]
        m = COORD_MARGIN
        return -m * w <= min(xs) and max(xs) <= (1 + m) * w and -m * h <= min(ys) and max(ys) <= (1 + m) * h
    except (TypeError, OverflowError):
        return False


def _check_polygon(poly, k: int, h: int, w: int, where: str) -> None:
    """A flat list [x1, y1, x2, y2, ...] of >= 3 points, finite numbers near the image."""
    if not isinstance(poly, list) or len(poly) % 2:
        raise DataError(f"{where} 'segmentation' polygon {k} must be a flat list [x1, y1, x2, y2, ...] of even length")
    if len(poly) < 6:
        raise DataError(f"{where} 'segmentation' polygon {k} has {len(poly) // 2} point(s); a polygon needs at least 3")
    try:
        xy = np.asarray(poly)
    except (ValueError, TypeError, OverflowError):  # ragged nesting
        xy = None
    if xy is None or xy.ndim != 1 or xy.dtype.kind not in "iuf":  # strings, nulls, lists, huge ints
        bad = next((v for v in poly if not _number(v)), poly[0])
        raise DataError(f"{where} 'segmentation' polygon {k} must hold numbers, got {_short(bad)}")
    xy = xy.astype(np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        raise DataError(f"{where} 'segmentation' polygon {k} holds a non-finite coordinate ({_short(poly, 60)})")
    m = COORD_MARGIN
    lo, hi = np.array([-m * w, -m * h]), np.array([(1 + m) * w, (1 + m) * h])
    outside = np.flatnonzero(((xy < lo) | (xy > hi)).any(1))
    if len(outside):
        x, y = xy[outside[0]].tolist()
        raise DataError(
            f"{where} 'segmentation' polygon {k} point {int(outside[0])} ({x:g}, {y:g}) lies far outside its "
            f"{w}x{h} image (allowed x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g})"
        )
    # pycocotools rasterises an edge in ~5 x its longer side in ints, unchecked: bound the outline
    trace = float(np.abs(np.diff(np.vstack([xy, xy[:1]]), axis=0)).max(1).sum())
    if trace > min(MAX_TRACE * (h + w), MAX_TRACE_PX):
        raise DataError(
            f"{where} 'segmentation' polygon {k} has {len(xy)} points tracing {trace:.0f} px, over "
            f"min({MAX_TRACE} x its {w}x{h} image's height + width, {MAX_TRACE_PX}): no object's outline is that long"
        )


def check_rle(segm: dict, h: int, w: int, where: str) -> None:
    """'size' is the image's [h, w]; 'counts' (a list, or a compressed string) are runs covering h*w exactly."""
    if "counts" not in segm or "size" not in segm:
        raise DataError(f"{where} 'segmentation' RLE needs 'counts' and 'size'")
    size = segm["size"]
    if not isinstance(size, list) or len(size) != 2:
        raise DataError(f"{where} 'segmentation' RLE 'size' must be [height, width], got {str(size)[:40]}")
    if list(size) != [h, w] or any(isinstance(v, bool) for v in size):
        raise DataError(f"{where} 'segmentation' size {size} is not its image's [height, width] [{h}, {w}]")
    counts = segm["counts"]
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            raise DataError(
                f"{where} 'segmentation' compressed RLE 'counts' is not a valid RLE string ({_short(counts)})"
            )
        kind = "compressed RLE"
    elif isinstance(counts, list):
        if not all(type(v) is int for v in counts):
            bad = next(v for v in counts if type(v) is not int)
            raise DataError(f"{where} 'segmentation' RLE 'counts' must hold integers, got {_short(bad)}")
        runs, kind = counts, "RLE"
    else:
        raise DataError(f"{where} 'segmentation' RLE 'counts' must be a list or a string, got {type(counts).__name__}")
    negative = next((v for v in runs if v < 0), None)
    if negative is not None:
        raise DataError(f"{where} 'segmentation' {kind} 'counts' holds a negative run {negative}")
    total = sum(runs)
    if total != h * w:
        raise DataError(f"{where} 'segmentation' {kind} 'counts' cover {total} pixels, its {w}x{h} image has {h * w}")


def rle_string_counts(s: str, max_chars: int = 13) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, in Python), or
    None when ``s`` is not one: a character outside '0'..'o', a run cut off at the end, or a run of
    more than ``max_chars`` characters (over 64 bits). Runs may come out negative; the caller checks."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k >= max_chars:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


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


# --------------------------------------------------------------------------------------------------
# held-out split of a training file
# --------------------------------------------------------------------------------------------------


def heldout_size(n: int, fraction: float = HELDOUT_FRACTION, cap: int = HELDOUT_CAP) -> int:
    """How many of ``n`` candidate images are held out: round(fraction * n), at least 1, at most
    ``cap`` and never all of them (0 when n < 2)."""
    if not 0 < fraction < 1 or cap < 1:
        raise DataError(f"held-out fraction must be in (0, 1) and the cap >= 1, got {fraction}, {cap}")
    return 0 if n < 2 else min(n - 1, cap, max(1, round(fraction * n)))


def heldout_split(
    ann_file: str | Path, seed: int = HELDOUT_SEED, fraction: float = HELDOUT_FRACTION, cap: int = HELDOUT_CAP
) -> tuple[list, list]:
    """(train image ids, held-out image ids) of a COCO training file (checked with ``validate_coco``),
    both sorted. Candidates are the images with at least one non-crowd annotation; ``heldout_size`` of
    them are drawn with ``default_rng(seed)`` from the sorted ids; every other image (with or without
    annotations) stays in train."""
    data = validate_coco(ann_file, None, require_images=False)["dataset"]
    return _heldout_ids(data, ann_file, seed, fraction, cap)


def _heldout_ids(data: Mapping, name, seed: int, fraction: float, cap: int) -> tuple[list, list]:
    with_objects = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd", 0)}
    candidates = sorted(img["id"] for img in data["images"] if img["id"] in with_objects)
    m = heldout_size(len(candidates), fraction, cap)
    if m == 0:
        raise DataError(f"{name}: fewer than 2 images with an object, so nothing can be held out for selection")
    order = np.random.default_rng(seed).permutation(len(candidates))
    held = {candidates[i] for i in order[:m].tolist()}
    train = sorted(img["id"] for img in data["images"] if img["id"] not in held)
    return train, sorted(held)


def subset_instances(data: Mapping, image_ids) -> dict:
    """A COCO instances dict with only the images ``image_ids`` and their annotations (other keys kept)."""
    keep = set(image_ids)
    out = dict(data)
    out["images"] = [img for img in data["images"] if img["id"] in keep]
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return out


def write_heldout_split(
    coco_root: str | Path,
    out_dir: str | Path,
    seed: int = HELDOUT_SEED,
    fraction: float = HELDOUT_FRACTION,
    cap: int = HELDOUT_CAP,
) -> dict:
    """Write ``out_dir/instances_train2017-minus-heldout.json`` and ``out_dir/instances_train2017-heldout.json``
    (``HELDOUT_FILES``, atomically) from ``coco_root/annotations/instances_train2017.json``; images of
    both stay in ``coco_root/train2017``. Degenerate boxes are dropped (as for training). Returns
    ``{'train_ann', 'heldout_ann', 'image_dir', 'num_train', 'num_heldout', 'seed', 'fraction', 'cap',
    'source', 'source_size', 'source_mtime_ns'}``, also written to ``out_dir/heldout_split.json``: a later
    call with the same source file (size and mtime) and settings returns it without rewriting (the real
    train file is 450 MB)."""
    root, out_dir = Path(coco_root), Path(out_dir)
    source = root / "annotations" / "instances_train2017.json"
    manifest = out_dir / HELDOUT_MANIFEST
    st = source.stat() if source.is_file() else None
    wanted = {"source": str(source), "seed": seed, "fraction": fraction, "cap": cap}
    if st is not None:
        wanted.update(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    previous = _read_manifest(manifest)
    if previous and all(previous.get(k) == v for k, v in wanted.items()):
        if all(Path(previous[k]).is_file() for k in ("train_ann", "heldout_ann")):
            return previous
    with warnings.catch_warnings():  # the training run warns about degenerate boxes itself
        warnings.simplefilter("ignore")
        data = validate_coco(source, None, require_images=False)["dataset"]
    train_ids, held_ids = _heldout_ids(data, source, seed, fraction, cap)
    paths = [out_dir / name for name in HELDOUT_FILES]
    for path, ids in zip(paths, (train_ids, held_ids)):
        atomic_write_json(subset_instances(data, ids), path, separators=(",", ":"))
    info = {"train_ann": str(paths[0]), "heldout_ann": str(paths[1]), "image_dir": str(root / "train2017")}
    info.update(num_train=len(train_ids), num_heldout=len(held_ids), **wanted)
    atomic_write_json(info, manifest, indent=1)
    return info


def _read_manifest(path: Path) -> dict | None:
    try:
        data = load_json(path, "held-out manifest")
    except DataError:
        return None
    return data if isinstance(data, dict) else None


def coco_from_dict(dataset: Mapping) -> COCO:
    """A pycocotools ``COCO`` built from an already-loaded dict, without its console output."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
