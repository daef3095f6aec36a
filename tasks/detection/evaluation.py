"""COCO evaluation of boxes and instance masks with pycocotools ``COCOeval``, metrics in percent.

Detections use the standard COCO results format, one dict per detection::

    {"image_id": 42, "category_id": 18, "score": 0.93,
     "bbox": [x, y, w, h],                                    # for iou type "bbox"
     "segmentation": {"size": [h, w], "counts": "<RLE str>"}}  # for iou type "segm"

``category_id`` is the COCO category id (e.g. 1, 3, 7, 18, 44 for the generated set), never a
model's contiguous label index; ``instances_to_coco_results`` builds these dicts from model output.

Metric names: ``APbox, APbox50, APbox75, APbox_s, APbox_m, APbox_l, ARbox1, ARbox10, ARbox100,
ARbox_s, ARbox_m, ARbox_l`` for "bbox" and the same with ``mask`` for "segm", in the order of
``COCOeval.stats``, times 100. A stat that COCOeval reports as -1 (no ground truth in that area
range) is ``nan``. As in detectron2 and mmdet, mask AP is computed without the detections' ``bbox``
so that small / medium / large use the mask area.

Per-example results (``per_example.npz`` in a detection run's folder, ``per_image_box_matches``):
COCOeval's per-image box matching for area range 'all' and 100 detections per image, so that a
resample of the val images gives its APbox without running the model again (``box_ap``; on all
images it equals ``coco_evaluate``'s APbox, tests/test_detection.py). Arrays:

* ``ids`` (N,) str: the val image ids, in COCOeval's (sorted) order;
* ``category_ids`` (K,) int64: the COCO category ids; ``iou_thresholds`` (T,) float64: 0.50:0.05:0.95;
* ``gt_count`` (N, K) int64: ground-truth boxes per image and category that count (not crowd, not ignored);
* ``det_image`` (M,) int64, ``det_category`` (M,) int64: each detection's row in ``ids`` / ``category_ids``
  (the top 100 of each image and category, as COCOeval keeps them);
* ``det_score`` (M,) float64; ``det_tp`` (M, T) bool: matched to a counted ground truth at threshold t;
  ``det_ignore`` (M, T) bool: matched to a crowd / ignored one (neither true nor false positive).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from bench.core.errors import BenchError, DataError
from tasks.detection.coco_data import atomic_write_json, check_rle, coco_from_dict, load_json, validate_coco

IOU_TYPES = ("bbox", "segm")
_STATS = (
    "AP",
    "AP50",
    "AP75",
    "AP_s",
    "AP_m",
    "AP_l",
    "AR1",
    "AR10",
    "AR100",
    "AR_s",
    "AR_m",
    "AR_l",
)  # the order of COCOeval.stats for bbox / segm
_TAG = {"bbox": "box", "segm": "mask"}


def metric_names(iou_type: str) -> list[str]:
    """The 12 metric names for ``iou_type`` in ``COCOeval.stats`` order, e.g. APbox, APbox50, ..."""
    tag = _TAG[iou_type]
    return [name[:2] + tag + name[2:] for name in _STATS]


def coco_evaluate(
    gt: str | Path | Mapping | COCO,
    detections: Sequence[dict] | str | Path,
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    verbose: bool = False,
) -> dict[str, float]:
    """Evaluate ``detections`` against ``gt`` with pycocotools and return metrics in percent.

    ``gt`` is a COCO instances file (checked with ``validate_coco``), a loaded dict, or a
    pycocotools ``COCO``. ``detections`` is a list of COCO result dicts or a JSON file of one.
    Every detection needs ``image_id``, ``category_id`` and ``score``, plus ``bbox`` for "bbox" and
    an RLE ``segmentation`` for "segm"; image and category ids must exist in ``gt`` (``DataError``
    otherwise). With no detections at all, every metric is 0.0 and a warning is issued.
    ``verbose`` lets pycocotools print its usual summary table.
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    iou_types = tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise BenchError(f"iou_types: unsupported {bad or 'empty'}; choose from {list(IOU_TYPES)}")

    coco_gt = _load_gt(gt)
    dets, source = _load_detections(detections)
    _check_detections(dets, coco_gt, iou_types, source)

    out: dict[str, float] = {}
    if not dets:  # COCO.loadRes cannot take an empty list
        warnings.warn(f"{source}: no detections; all {', '.join(iou_types)} metrics are 0.0", stacklevel=2)
        for iou_type in iou_types:
            out.update(dict.fromkeys(metric_names(iou_type), 0.0))
        return out
    for iou_type in iou_types:
        names = metric_names(iou_type)
        results = [_result(d, iou_type) for d in dets]
        printer = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with printer:
            coco_dt = coco_gt.loadRes(results)
            coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        for name, value in zip(names, coco_eval.stats):
            out[name] = float(value) * 100 if value >= 0 else math.nan
    return out


def _result(det: dict, iou_type: str) -> dict:
    """A fresh copy of ``det`` for ``COCO.loadRes`` (which adds keys to what it gets): plain
    numbers, and only the field of ``iou_type`` (a segm result with a bbox would get the box area
    for the small / medium / large split)."""
    out = {"image_id": det["image_id"], "category_id": det["category_id"], "score": float(det["score"])}
    if iou_type == "bbox":
        out["bbox"] = [float(v) for v in det["bbox"]]
    else:
        out["segmentation"] = det["segmentation"]
    return out


def _load_gt(gt) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, Mapping):
        return coco_from_dict(gt)
    # checked like any COCO file, but degenerate boxes stay in, as in pycocotools' own evaluation
    summary = validate_coco(gt, None, require_images=False, skip_degenerate=False)
    return coco_from_dict(summary["dataset"])


def _load_detections(detections) -> tuple[list, str]:
    if isinstance(detections, (str, Path)):
        dets, source = load_json(detections, "detections file"), str(detections)
    else:
        dets, source = detections, "detections"
    if not isinstance(dets, (list, tuple)):
        raise DataError(f"{source}: detections must be a list of result objects, got {type(dets).__name__}")
    return list(dets), source


def _check_detections(dets: list, coco_gt: COCO, iou_types: tuple, source: str) -> None:
    """Required keys present, finite boxes and scores, RLE masks that cover their image exactly (what
    reaches pycocotools' C code is checked first), and image / category ids known to the ground truth."""
    required = ["image_id", "category_id", "score"]
    required += [{"bbox": "bbox", "segm": "segmentation"}[t] for t in iou_types]
    img_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    unknown_img, unknown_cat = set(), set()
    for i, d in enumerate(dets):
        _check_detection(d, i, coco_gt, required, iou_types, source)
        if d["image_id"] not in img_ids:
            unknown_img.add(d["image_id"])
        if d["category_id"] not in cat_ids:
            unknown_cat.add(d["category_id"])
    if unknown_img:
        raise DataError(
            f"{source}: 'image_id' {sorted(unknown_img, key=_id_order)[:5]} not in the ground truth "
            f"images ({len(unknown_img)} unknown id(s))"
        )
    if unknown_cat:
        raise DataError(
            f"{source}: 'category_id' {sorted(unknown_cat, key=_id_order)[:5]} not in the ground "
            f"truth categories {sorted(cat_ids)[:10]} (use COCO category ids, not "
            "label indices)"
        )


def _id_order(v):
    """Sort key for ids of mixed types (ints, then strings)."""
    return (type(v).__name__, v)


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _check_detection(d, i: int, coco_gt: COCO, required: list, iou_types: tuple, source: str) -> None:
    where = f"{source}: detection [{i}]"
    if not isinstance(d, dict):
        raise DataError(f"{where} must be an object, got {type(d).__name__}")
    for key in required:
        if key not in d:
            raise DataError(f"{where} is missing key '{key}'")
    if not _finite(d["score"]):
        raise DataError(f"{where} 'score' must be a finite number, got {str(d['score'])[:40]}")
    if "bbox" in iou_types:
        box = d["bbox"]
        if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4 or not all(_finite(v) for v in box):
            raise DataError(f"{where} 'bbox' must be [x, y, w, h], 4 finite numbers")
    if "segm" in iou_types:
        segm = d["segmentation"]
        if not (isinstance(segm, dict) and "counts" in segm and "size" in segm):
            raise DataError(f"{where} 'segmentation' must be an RLE dict with 'counts' and 'size'")
        img = coco_gt.imgs.get(d["image_id"])
        if img is not None:  # an unknown image id is reported with the others
            counts = segm["counts"]
            plain = {**segm, "counts": counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts}
            check_rle(plain, img["height"], img["width"], where)


def instances_to_coco_results(image_id: int, boxes_xyxy, scores, category_ids, masks=None) -> list[dict]:
    """COCO result dicts for one image from model output.

    ``boxes_xyxy`` (N, 4) in pixels of the original image, ``scores`` (N,), ``category_ids`` (N,)
    COCO category ids, and optionally ``masks`` (N, H, W) boolean at the original image size
    (encoded as RLE with ``counts`` as str, ready for JSON).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    cats = np.asarray(category_ids).reshape(-1)
    if not len(boxes) == len(scores) == len(cats):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores, {len(cats)} category ids")
    rles = None
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or len(masks) != len(boxes):
            raise ValueError(f"masks must be (N, H, W) with N={len(boxes)}, got {masks.shape}")
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) if len(masks) else []
    out = []
    for k in range(len(boxes)):
        x0, y0, x1, y1 = boxes[k].tolist()
        det = {
            "image_id": int(image_id),
            "category_id": int(cats[k]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[k]),
        }
        if rles is not None:
            det["segmentation"] = {
                "size": [int(v) for v in rles[k]["size"]],
                "counts": rles[k]["counts"].decode("ascii"),
            }
        out.append(det)
    return out


def write_detections_json(detections: Sequence[dict], path: str | Path) -> Path:
    """Write COCO results to ``path`` atomically (numpy scalars and bytes RLE counts converted)."""
    return atomic_write_json([_plain(d) for d in detections], path, separators=(",", ":"))


def _plain(obj):
    """``obj`` with numpy values and bytes turned into JSON types."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    return obj


__all__ = ["IOU_TYPES", "coco_evaluate", "instances_to_coco_results", "metric_names", "write_detections_json"]


def per_image_box_matches(gt, detections) -> dict[str, np.ndarray]:
    """The per-image box matching of COCOeval (area 'all', 100 detections): the arrays of a
    detection run's ``per_example.npz`` (module docstring)."""
    coco_gt = _load_gt(gt)
    dets, source = _load_detections(detections)
    _check_detections(dets, coco_gt, ("bbox",), source)
    img_ids, cat_ids = sorted(coco_gt.getImgIds()), sorted(coco_gt.getCatIds())
    out = dict(ids=np.array([str(i) for i in img_ids]), category_ids=np.array(cat_ids, dtype=np.int64))
    gt_count = np.zeros((len(img_ids), len(cat_ids)), dtype=np.int64)
    rows: dict[str, list] = {k: [] for k in ("det_image", "det_category", "det_score", "det_tp", "det_ignore")}
    coco_eval = None
    if dets:  # COCO.loadRes cannot take an empty list
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes([_result(d, "bbox") for d in dets]), "bbox")
            coco_eval.evaluate()
    thresholds = (Params(iouType="bbox") if coco_eval is None else coco_eval.params).iouThrs
    out["iou_thresholds"] = np.asarray(thresholds, dtype=np.float64)
    if coco_eval is None:  # no detections: only the ground-truth counts
        for i, img in enumerate(img_ids):
            for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img], iscrowd=False)):
                gt_count[i, cat_ids.index(a["category_id"])] += not a.get("ignore", 0)
    else:
        n_img, n_area = len(coco_eval.params.imgIds), len(coco_eval.params.areaRng)
        all_area = coco_eval.params.areaRngLbl.index("all")
        t = len(coco_eval.params.iouThrs)
        for k in range(len(cat_ids)):
            for i in range(n_img):
                e = coco_eval.evalImgs[k * n_area * n_img + all_area * n_img + i]
                if e is None:
                    continue
                gt_count[i, k] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                n = len(e["dtScores"])
                rows["det_image"] += [i] * n
                rows["det_category"] += [k] * n
                rows["det_score"] += list(e["dtScores"])
                rows["det_tp"] += list((np.asarray(e["dtMatches"]) > 0).T.reshape(n, t))
                rows["det_ignore"] += list(np.asarray(e["dtIgnore"], dtype=bool).T.reshape(n, t))
    t = len(out["iou_thresholds"])
    out.update(
        gt_count=gt_count,
        det_image=np.array(rows["det_image"], dtype=np.int64),
        det_category=np.array(rows["det_category"], dtype=np.int64),
        det_score=np.array(rows["det_score"], dtype=np.float64),
        det_tp=np.array(rows["det_tp"], dtype=bool).reshape(-1, t),
        det_ignore=np.array(rows["det_ignore"], dtype=bool).reshape(-1, t),
    )
    out["det_tp"] &= ~out["det_ignore"]
    return out


def box_ap(arrays: Mapping[str, np.ndarray], images: Sequence[int] | np.ndarray | None = None) -> float:
    """APbox in percent (COCOeval.accumulate's rule: 101-point interpolated precision, averaged
    over IoU thresholds and the categories with ground truth) of the images ``images`` (row indices
    into ``arrays['ids']``, repeats allowed: a bootstrap resample; None: all) of a per-example file."""
    n = len(arrays["ids"])
    images = np.arange(n) if images is None else np.asarray(images, dtype=np.int64)
    counts = np.bincount(images, minlength=n)  # how often each image is drawn
    rec_thrs = np.linspace(0.0, 1.00, 101)
    gt = (arrays["gt_count"] * counts[:, None]).sum(0)
    cat, img = arrays["det_category"], arrays["det_image"]
    precisions = []
    for k in range(len(arrays["category_ids"])):
        if gt[k] == 0:
            continue  # COCOeval: -1, left out of the mean
        sel = np.flatnonzero((cat == k) & (counts[img] > 0))
        sel = np.repeat(sel, counts[img[sel]])
        # COCOeval concatenates images in id order and sorts stably by score
        sel = sel[np.lexsort((img[sel], -arrays["det_score"][sel]))]
        tp, ig = arrays["det_tp"][sel], arrays["det_ignore"][sel]
        tps = np.cumsum(tp & ~ig, 0, dtype=np.float64)
        fps = np.cumsum(~tp & ~ig, 0, dtype=np.float64)
        for t in range(tps.shape[1]):
            rc = tps[:, t] / gt[k]
            pr = tps[:, t] / (fps[:, t] + tps[:, t] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
            q = np.zeros(len(rec_thrs))
            idx = np.searchsorted(rc, rec_thrs, side="left")
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            precisions.append(q)
    return float(np.mean(precisions) * 100) if precisions else math.nan


def write_per_example(path: str | Path, gt, detections) -> Path:
    """``per_example.npz`` (``per_image_box_matches``) at ``path``, atomically."""
    from bench.core.io import atomic_open

    arrays = per_image_box_matches(gt, detections)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)
