"""The generated COCO dataset (layout, format, consistency, determinism) and the COCO validator."""

import copy
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bench.core.errors import DataError
from tasks.detection.coco_data import (
    SHAPE_CATEGORIES,
    check_same_categories,
    make_coco_dataset,
    uncompressed_rle_counts,
    validate_coco,
)
from tasks.detection.coco_generate import _COLOURS

# pycocotools 2.0.11 decode() warns under numpy 2 (its Cython __array__ lacks `copy`); not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 96, 128  # not square, so height / width mix-ups show


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco") / "data", n_train=8, n_val=4, image_size=(H, W), seed=3)


def _load(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_writes_the_coco_2017_layout(coco_root):
    assert sorted(p.name for p in coco_root.iterdir()) == ["annotations", "train2017", "val2017"]
    assert sorted(p.name for p in (coco_root / "annotations").iterdir()) == [
        "instances_train2017.json",
        "instances_val2017.json",
    ]
    for split, n in (("train2017", 8), ("val2017", 4)):
        data = _load(coco_root, split)
        assert list(data) == ["info", "licenses", "images", "annotations", "categories"]
        names = sorted(img["file_name"] for img in data["images"])
        assert len(names) == n
        assert sorted(p.name for p in (coco_root / split).iterdir()) == names
        for img in data["images"]:
            assert img["file_name"] == f"{img['id']:012d}.jpg"
            assert (img["height"], img["width"]) == (H, W)
            with Image.open(coco_root / split / img["file_name"]) as im:
                assert im.size == (W, H) and im.mode == "RGB"
    train_ids = {img["id"] for img in _load(coco_root, "train2017")["images"]}
    val_ids = {img["id"] for img in _load(coco_root, "val2017")["images"]}
    assert not train_ids & val_ids


def test_pycocotools_loads_it_with_non_contiguous_category_ids(coco_root):
    coco = COCO(str(coco_root / "annotations" / "instances_train2017.json"))
    assert coco.getCatIds() == [1, 3, 7, 18, 44]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["disc", "box", "triangle", "ring", "star"]
    assert all("supercategory" in c for c in coco.loadCats(coco.getCatIds()))
    assert len(coco.getImgIds()) == 8
    # every category has instances in train
    assert all(coco.getAnnIds(catIds=[c], iscrowd=False) for c in coco.getCatIds())


def test_bbox_and_area_match_the_decoded_mask(coco_root):
    for split in ("train2017", "val2017"):
        coco = COCO(str(coco_root / "annotations" / f"instances_{split}.json"))
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann)
            assert mask.shape == (H, W)
            ys, xs = np.nonzero(mask)
            expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert np.abs(np.array(ann["bbox"]) - expected).max() <= 1, ann["id"]
            assert ann["area"] == mask.sum()


def test_polygons_compressed_rle_and_crowd_uncompressed_rle_are_present(coco_root):
    for split in ("train2017", "val2017"):
        anns = _load(coco_root, split)["annotations"]
        polys = [a for a in anns if isinstance(a["segmentation"], list)]
        rles = [a for a in anns if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)]
        crowd = [a for a in anns if a["iscrowd"] == 1]
        assert polys and rles and crowd, split
        assert all(len(p) >= 6 and len(p) % 2 == 0 for a in polys for p in a["segmentation"])
        assert all(a["iscrowd"] == 0 for a in polys + rles)
        assert {a["category_id"] for a in rles} == {18}  # rings: a polygon cannot hold the hole
        for a in crowd:  # real COCO stores crowd regions as uncompressed RLE
            assert isinstance(a["segmentation"]["counts"], list)
            assert a["segmentation"]["size"] == [H, W]
            assert sum(a["segmentation"]["counts"]) == H * W


def test_ids_are_unique_across_splits(coco_root):
    anns = _load(coco_root, "train2017")["annotations"] + _load(coco_root, "val2017")["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)


def test_objects_are_drawn_in_their_category_colour_and_size_range(coco_root):
    """The painted pixels are the mask: the mean colour inside is nearest the category's colour."""
    data = _load(coco_root, "train2017")
    coco = COCO(str(coco_root / "annotations" / "instances_train2017.json"))
    files = {img["id"]: img["file_name"] for img in data["images"]}
    palette = {cid: np.array(rgb, dtype=float) for cid, rgb in _COLOURS.items()}
    checked = 0
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            continue
        assert 10 <= max(ann["bbox"][2:]) <= min(H, W) / 2 + 2
        img = np.asarray(Image.open(coco_root / "train2017" / files[ann["image_id"]]), float)
        mean = img[coco.annToMask(ann).astype(bool)].mean(0)
        nearest = min(palette, key=lambda c: np.linalg.norm(palette[c] - mean))
        assert nearest == ann["category_id"], (ann["id"], mean)
        checked += 1
    assert checked >= 10


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = make_coco_dataset(tmp_path / "a", n_train=3, n_val=2, seed=5)
    b = make_coco_dataset(tmp_path / "b", n_train=3, n_val=2, seed=5)
    c = make_coco_dataset(tmp_path / "c", n_train=3, n_val=2, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 + 3 + 2
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ann = Path("annotations/instances_train2017.json")
    assert (a / ann).read_bytes() != (c / ann).read_bytes()


def test_refuses_to_overwrite_and_leaves_no_temporary_files(tmp_path):
    root = make_coco_dataset(tmp_path / "d", n_train=1, n_val=1, seed=0)
    before = (root / "annotations" / "instances_val2017.json").read_bytes()
    with pytest.raises(DataError, match=r"annotations: already exists"):
        make_coco_dataset(root, n_train=2, n_val=2, seed=1)
    assert (root / "annotations" / "instances_val2017.json").read_bytes() == before
    with pytest.raises(DataError, match=r"image_size \(40000, 40000\) is too large; each side must be <= 4096"):
        make_coco_dataset(tmp_path / "huge", n_train=1, n_val=1, image_size=(40000, 40000))
    assert not (tmp_path / "huge").exists()
    make_coco_dataset(root, n_train=2, n_val=1, seed=1, overwrite=True)
    assert len(list((root / "train2017").iterdir())) == 2
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train2017", "val2017"]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_uncompressed_rle_counts_round_trip_through_pycocotools(h, w, seed):
    mask = np.random.default_rng(seed).random((h, w)) < 0.5
    rle = mask_utils.frPyObjects({"counts": uncompressed_rle_counts(mask), "size": [h, w]}, h, w)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)


# ----------------------------------------------------------------------------------------------
# validator
# ----------------------------------------------------------------------------------------------


def test_validate_accepts_the_generated_set(coco_root):
    data = _load(coco_root, "train2017")
    s = validate_coco(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017")
    assert s["num_images"] == 8
    assert s["num_annotations"] == len(data["annotations"])
    assert s["num_crowd"] == sum(a["iscrowd"] for a in data["annotations"]) >= 1
    assert s["num_polygon"] + s["num_rle"] == len(data["annotations"])
    assert [c["id"] for c in s["categories"]] == [1, 3, 7, 18, 44]
    assert s["degenerate_ann_ids"] == []
    assert s["dataset"]["annotations"] == data["annotations"]


@pytest.mark.parametrize(
    "drop, named",
    [
        (["categories"], "'categories'"),
        (["images", "annotations"], "'images', 'annotations'"),
    ],
)
def test_not_coco_names_the_missing_keys(coco_root, tmp_path, drop, named):
    data = _load(coco_root, "val2017")
    for k in drop:
        del data[k]
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(DataError) as e:
        validate_coco(path, coco_root / "val2017")
    msg = str(e.value)
    assert msg == f"{path}: not a COCO instances file: missing top-level key(s) {named}"


def test_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        validate_coco(path, None, require_images=False)
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found"):
        validate_coco(tmp_path / "nope.json", None, require_images=False)


def test_annotation_with_unknown_image_id(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    ann = data["annotations"][1]
    ann["image_id"] = 424242
    path = _write(tmp_path / "a.json", data)
    with pytest.raises(DataError) as e:
        validate_coco(path, coco_root / "val2017")
    assert str(e.value) == (f"{path}: annotation id {ann['id']} has image_id 424242, which is not in 'images'")


def test_annotation_with_unknown_category_and_duplicate_id(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    data["annotations"][0]["category_id"] = 2
    path = _write(tmp_path / "c.json", data)
    with pytest.raises(DataError, match=r"has category_id 2, which is not in 'categories'"):
        validate_coco(path, None, require_images=False)
    data = _load(coco_root, "val2017")
    data["annotations"][2]["id"] = data["annotations"][0]["id"]
    path = _write(tmp_path / "d.json", data)
    with pytest.raises(
        DataError,
        match=rf"annotations\[2\] repeats annotation id "
        rf"{data['annotations'][0]['id']}$",
    ):
        validate_coco(path, None, require_images=False)


def test_degenerate_boxes_are_warned_about_and_skipped(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    n = len(data["annotations"])
    data["annotations"][0]["bbox"][2] = 0.0  # w == 0, like real train2017 annotation 918
    data["annotations"][2]["bbox"][3] = -1.5  # h < 0
    bad_ids = [data["annotations"][0]["id"], data["annotations"][2]["id"]]
    path = _write(tmp_path / "degenerate.json", data)
    with pytest.warns(
        UserWarning,
        match=r"degenerate\.json: skipping 2 annotation\(s\) with a "
        rf"degenerate 'bbox' \(w or h <= 0\), ids "
        rf"{bad_ids[0]}, {bad_ids[1]}$",
    ):
        s = validate_coco(path, coco_root / "val2017")
    assert s["degenerate_ann_ids"] == bad_ids
    assert s["num_annotations"] == n - 2
    assert [a["id"] for a in s["dataset"]["annotations"]] == [
        a["id"] for a in data["annotations"] if a["id"] not in bad_ids
    ]


def test_degenerate_boxes_can_be_kept(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    data["annotations"][1]["bbox"][2] = 0.0
    path = _write(tmp_path / "keep_degenerate.json", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when they are kept
        s = validate_coco(path, None, require_images=False, skip_degenerate=False)
    assert s["degenerate_ann_ids"] == [data["annotations"][1]["id"]]
    assert s["dataset"]["annotations"] == data["annotations"]


def test_missing_image_files_name_the_first_five_and_the_count(coco_root, tmp_path):
    data = _load(coco_root, "train2017")
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    present = data["images"][6:]  # 6 of 8 are missing
    for img in present:
        (image_dir / img["file_name"]).write_bytes((coco_root / "train2017" / img["file_name"]).read_bytes())
    ann_file = coco_root / "annotations" / "instances_train2017.json"
    with pytest.raises(DataError) as e:
        validate_coco(ann_file, image_dir)
    first5 = ", ".join(img["file_name"] for img in data["images"][:5])
    assert str(e.value) == (f"{image_dir}: 6 image file(s) listed in {ann_file} 'images' are missing: {first5}, ...")
    s = validate_coco(ann_file, image_dir, require_images=False)  # no file check asked for
    assert s["num_images"] == 8
    with pytest.raises(DataError, match=r"image directory not found"):
        validate_coco(ann_file, tmp_path / "nowhere")


def test_polygon_with_fewer_than_three_points(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    ann = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))
    ann["segmentation"].append([10.0, 10.0, 20.0, 20.0])
    path = _write(tmp_path / "poly.json", data)
    with pytest.raises(DataError) as e:
        validate_coco(path, None, require_images=False)
    assert str(e.value) == (
        f"{path}: annotation id {ann['id']} 'segmentation' polygon 1 has 2 point(s); a polygon needs at least 3"
    )
    ann["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0]]
    _write(path, data)
    with pytest.raises(DataError, match=r"polygon 0 must be a flat list .* of even length"):
        validate_coco(path, None, require_images=False)


def test_rle_of_the_wrong_size(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    ann = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    ann["segmentation"]["size"] = [W, H]
    path = _write(tmp_path / "rle.json", data)
    with pytest.raises(
        DataError,
        match=rf"annotation id {ann['id']} 'segmentation' size "
        rf"\[{W}, {H}\] is not its image's",
    ):
        validate_coco(path, None, require_images=False)


def test_errors_are_one_line(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    del data["images"][0]["file_name"]
    path = _write(tmp_path / "x.json", data)
    with pytest.raises(DataError) as e:
        validate_coco(path, None, require_images=False)
    assert str(e.value) == f"{path}: images[0] is missing key 'file_name'"
    assert "\n" not in str(e.value)


def test_check_same_categories(coco_root, tmp_path):
    train = coco_root / "annotations" / "instances_train2017.json"
    val = coco_root / "annotations" / "instances_val2017.json"
    assert [c["id"] for c in check_same_categories(train, val)] == [1, 3, 7, 18, 44]
    assert check_same_categories(_load(coco_root, "train2017"), val) == list(SHAPE_CATEGORIES)

    data = _load(coco_root, "val2017")
    data["categories"] = [c for c in data["categories"] if c["id"] != 44]
    data["categories"].append({"supercategory": "x", "id": 90, "name": "toothbrush"})
    bad_val = _write(tmp_path / "val_bad.json", data)
    with pytest.raises(DataError) as e:
        check_same_categories(train, bad_val)
    assert str(e.value) == (f"{bad_val}: 'categories' ids differ from {train}: only in train [44], only in val [90]")

    data = _load(coco_root, "val2017")
    data["categories"][1]["name"] = "square"
    renamed = _write(tmp_path / "val_renamed.json", data)
    with pytest.raises(
        DataError, match=re.escape(f"{renamed}: 'categories' id 3 is named 'square', but 'box' in {train}")
    ):
        check_same_categories(train, renamed)


def test_validator_does_not_modify_its_input_file(coco_root, tmp_path):
    data = _load(coco_root, "val2017")
    data["annotations"][0]["bbox"][2] = 0
    path = _write(tmp_path / "keep.json", data)
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = validate_coco(path, None, require_images=False)
    assert path.read_bytes() == before
    assert len(s["dataset"]["annotations"]) == len(copy.deepcopy(data)["annotations"]) - 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
