"""coco_evaluate against pycocotools COCOeval run directly, on the generated COCO set."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.core.errors import BenchError, DataError
from tasks.detection.coco_data import make_coco_dataset
from tasks.detection.evaluation import coco_evaluate, instances_to_coco_results, metric_names, write_detections_json

# pycocotools 2.0.11 decode() warns under numpy 2 (its Cython __array__ lacks `copy`); not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BOX_NAMES = [
    "APbox",
    "APbox50",
    "APbox75",
    "APbox_s",
    "APbox_m",
    "APbox_l",
    "ARbox1",
    "ARbox10",
    "ARbox100",
    "ARbox_s",
    "ARbox_m",
    "ARbox_l",
]


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    root = make_coco_dataset(
        tmp_path_factory.mktemp("coco") / "data", n_train=1, n_val=10, image_size=(160, 160), seed=11
    )
    return root / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def gt(gt_file):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt_file))


def perfect_detections(gt):
    """One detection per non-crowd ground-truth instance, exact box and mask (str RLE counts)."""
    dets = []
    for ann in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        rle = mask_utils.encode(np.asfortranarray(gt.annToMask(ann)))
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": list(ann["bbox"]),
                "score": 1.0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    return dets


def perturbed_detections(gt, seed=0):
    """Shifted / rescaled boxes, shifted masks, random scores, some misses, some false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for d in perfect_detections(gt):
        if rng.random() < 0.15:
            continue  # a miss
        h, w = d["segmentation"]["size"]
        x, y, bw, bh = d["bbox"]
        dx, dy = rng.integers(-3, 4, 2)
        d["bbox"] = [x + dx, y + dy, bw * rng.uniform(0.8, 1.2), bh * rng.uniform(0.8, 1.2)]
        mask = np.roll(mask_utils.decode(d["segmentation"]), (int(dy), int(dx)), axis=(0, 1))
        rle = mask_utils.encode(np.asfortranarray(mask))
        d["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
        d["score"] = float(rng.uniform(0.05, 1.0))
        if rng.random() < 0.2:  # wrong class
            d["category_id"] = int(rng.choice([c for c in gt.getCatIds() if c != d["category_id"]]))
        dets.append(d)
    yy, xx = np.mgrid[0:160, 0:160]
    for k, image_id in enumerate(gt.getImgIds()):  # high-scoring false positives whose mask is
        box = [10.0, 20.0, 40.0, 40.0]  # "small" but whose box is "medium"
        mask = ((xx - 30) ** 2 + (yy - 40) ** 2 <= 17**2).astype(np.uint8)
        assert mask.sum() < 32**2 < box[2] * box[3]
        rle = mask_utils.encode(np.asfortranarray(mask))
        cat = gt.getCatIds()[k % len(gt.getCatIds())]
        dets.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "bbox": box,
                "score": 0.99,
                "segmentation": {"size": [160, 160], "counts": rle["counts"].decode()},
            }
        )
    return dets


def cocoeval_directly(gt, dets, iou_type):
    """Plain pycocotools; for segm the results carry no bbox (as detectron2 / mmdet do)."""
    keep = "bbox" if iou_type == "bbox" else "segmentation"
    results = [{k: v for k, v in d.items() if k in ("image_id", "category_id", "score", keep)} for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(results), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_metric_names():
    assert metric_names("bbox") == BOX_NAMES
    assert metric_names("segm") == [n.replace("box", "mask") for n in BOX_NAMES]


def test_perfect_detections_give_ap_100(gt_file, gt):
    dets = perfect_detections(gt)
    assert len(dets) >= 15
    m = coco_evaluate(gt_file, dets)
    assert sorted(m) == sorted(metric_names("bbox") + metric_names("segm"))
    for name in ("APbox", "APbox50", "APbox75", "APmask", "APmask50", "APmask75", "ARbox100", "ARmask100"):
        assert m[name] == pytest.approx(100.0), name
    # 160 px images hold small and medium objects only: COCOeval's -1 for "large" becomes nan
    assert math.isnan(m["APbox_l"]) and math.isnan(m["APmask_l"])
    assert m["APbox_s"] == pytest.approx(100.0) and m["APbox_m"] == pytest.approx(100.0)


def test_perturbed_detections_equal_cocoeval_run_directly(gt_file, gt):
    dets = perturbed_detections(gt)
    m = coco_evaluate(gt_file, dets)
    for iou_type in ("bbox", "segm"):
        direct = cocoeval_directly(gt, dets, iou_type)
        ours = [m[n] for n in metric_names(iou_type)]
        for name, a, b in zip(metric_names(iou_type), ours, direct):
            if b < 0:
                assert math.isnan(a), name
            else:
                assert a == pytest.approx(100 * b, abs=1e-12), name
    assert 5 < m["APbox"] < 90 and 5 < m["APmask"] < 90  # a real, non-trivial score
    assert m["APbox50"] > m["APbox75"]


def test_inputs_are_not_modified_and_gt_may_be_a_coco_or_dict(gt_file, gt):
    dets = perturbed_detections(gt, seed=1)
    snapshot = json.dumps(dets)
    from_file = coco_evaluate(gt_file, dets, iou_types=("segm",))
    assert json.dumps(dets) == snapshot
    from_coco = coco_evaluate(gt, dets, iou_types="segm")
    from_dict = coco_evaluate(json.loads(gt_file.read_text()), dets, iou_types=["segm"])
    assert from_file == from_coco == from_dict
    assert sorted(from_file) == sorted(metric_names("segm"))


def test_numpy_values_in_memory_evaluate_the_same(gt_file, gt):
    dets = perturbed_detections(gt, seed=3)
    raw = [
        dict(
            d,
            image_id=np.int64(d["image_id"]),
            category_id=np.int32(d["category_id"]),
            bbox=np.asarray(d["bbox"], dtype=np.float64),
            score=np.float64(d["score"]),
        )
        for d in dets
    ]
    assert coco_evaluate(gt_file, raw) == pytest.approx(coco_evaluate(gt_file, dets), nan_ok=True)


def test_degenerate_gt_boxes_are_kept_for_evaluation_as_in_pycocotools(gt_file, tmp_path):
    data = json.loads(gt_file.read_text())
    ann = next(a for a in data["annotations"] if not a["iscrowd"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt_full = COCO(str(gt_file))
    dets = perfect_detections(gt_full)
    ann["bbox"][3] = 0.0  # its detection no longer matches: one miss, and AP drops below 100
    path = tmp_path / "gt_degenerate.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        gt_degenerate = COCO(str(path))
    m = coco_evaluate(path, dets, ("bbox",))
    assert m["APbox"] < 100
    assert m["APbox"] == pytest.approx(100 * cocoeval_directly(gt_degenerate, dets, "bbox")[0])


def test_written_detections_evaluate_the_same(gt_file, gt, tmp_path):
    dets = perturbed_detections(gt, seed=2)
    # numpy scalars and bytes RLE counts, as models produce them
    raw = [
        dict(
            d,
            score=np.float32(d["score"]),
            image_id=np.int64(d["image_id"]),
            bbox=np.asarray(d["bbox"]),
            segmentation={"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"].encode()},
        )
        for d in dets
    ]
    path = write_detections_json(raw, tmp_path / "out" / "dets.json")
    assert [p.name for p in path.parent.iterdir()] == ["dets.json"]  # no temporary left over
    loaded = json.loads(path.read_text())
    assert isinstance(loaded[0]["segmentation"]["counts"], str)
    assert coco_evaluate(gt_file, path) == pytest.approx(coco_evaluate(gt_file, loaded), nan_ok=True)
    assert coco_evaluate(gt_file, path)["APbox"] == pytest.approx(
        100 * cocoeval_directly(gt, dets, "bbox")[0], abs=1e-4
    )  # float32 scores: same ranking


def test_instances_to_coco_results(gt_file, gt):
    dets = []
    for image_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=False))
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        masks = np.stack([gt.annToMask(a) for a in anns]) if anns else np.zeros((0, 160, 160))
        dets += instances_to_coco_results(
            image_id, boxes, np.linspace(1, 0.5, len(anns)), [a["category_id"] for a in anns], masks
        )
    assert dets[0]["bbox"] == pytest.approx(gt.loadAnns(gt.getAnnIds(iscrowd=False))[0]["bbox"])
    assert isinstance(dets[0]["segmentation"]["counts"], str)
    m = coco_evaluate(gt_file, dets)
    assert m["APbox"] == pytest.approx(100.0) and m["APmask"] == pytest.approx(100.0)
    assert instances_to_coco_results(1, np.zeros((0, 4)), [], [], np.zeros((0, 5, 5))) == []


def test_empty_detections_give_zeros_with_a_warning(gt_file):
    with pytest.warns(UserWarning, match=r"^detections: no detections; all bbox, segm metrics are 0\.0$"):
        m = coco_evaluate(gt_file, [])
    assert m == dict.fromkeys(metric_names("bbox") + metric_names("segm"), 0.0)


def test_bad_detections_raise_data_error(gt_file, gt, tmp_path):
    dets = perfect_detections(gt)
    with pytest.raises(
        DataError,
        match=r"detections: detection \[0\] is missing key "
        r"'segmentation'",
    ):
        coco_evaluate(gt_file, [{k: v for k, v in d.items() if k != "segmentation"} for d in dets])
    # ... but bbox-only results are fine for bbox AP
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in dets]
    assert coco_evaluate(gt_file, boxes_only, ("bbox",))["APbox"] == pytest.approx(100.0)
    with pytest.raises(DataError, match=r"'image_id' \[999999\] not in the ground truth images"):
        coco_evaluate(gt_file, [dict(dets[0], image_id=999999)] + dets)
    with pytest.raises(
        DataError,
        match=r"'category_id' \[0, 2\] not in the ground truth "
        r"categories \[1, 3, 7, 18, 44\] \(use COCO category ids",
    ):
        coco_evaluate(gt_file, [dict(dets[0], category_id=0), dict(dets[1], category_id=2)])
    bad = tmp_path / "dets.json"
    bad.write_text('{"image_id": 1}')
    with pytest.raises(DataError, match=r"dets\.json: detections must be a list"):
        coco_evaluate(gt_file, bad)
    with pytest.raises(BenchError, match=r"iou_types: unsupported \['keypoints'\]"):
        coco_evaluate(gt_file, dets, ("bbox", "keypoints"))


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"score": math.nan}, "detection [2] 'score' must be a finite number, got nan"),
        ({"score": "high"}, "detection [2] 'score' must be a finite number, got high"),
        ({"bbox": [1.0, 2.0, math.inf, 4.0]}, "detection [2] 'bbox' must be [x, y, w, h], 4 finite numbers"),
        (
            {"segmentation": {"size": [160, 160], "counts": "not RLE at all ~"}},
            "detection [2] 'segmentation' compressed RLE 'counts' is not a valid RLE string ('not RLE at all ~')",
        ),
        (
            {"segmentation": {"size": [160, 160], "counts": [0, 160 * 160 + 1]}},
            "detection [2] 'segmentation' RLE 'counts' cover 25601 pixels, its 160x160 image has 25600",
        ),
        (
            {"segmentation": {"size": [80, 80], "counts": [6400]}},
            "detection [2] 'segmentation' size [80, 80] is not its image's [height, width] [160, 160]",
        ),
    ],
)
def test_hostile_detections_are_refused_before_pycocotools(gt_file, gt, change, fragment):
    """What reaches pycocotools' C code (RLE strings it decodes, boxes, scores) is checked first."""
    dets = perfect_detections(gt)
    dets[2] = dict(dets[2], **change)
    with pytest.raises(DataError) as e:
        coco_evaluate(gt_file, dets)
    assert str(e.value) == "detections: " + fragment
