"""ADE20K-layout generator, validator and reference mIoU (tasks/segmentation/ade_data.py)."""

import math
import shutil

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError, DataError
from tasks.segmentation import ade_data
from tasks.segmentation.ade_data import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    confusion_miou,
    make_ade20k_dataset,
    render_ade20k_sample,
    sample_rng,
    validate_ade20k,
)

SIZE = (64, 96)  # (H, W): not square, so a swapped H/W shows up
THINGS = (13, 21, 37)  # person, car, lamp
STUFF = (1, 3)  # wall, sky


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_ade20k_dataset(root, n_train=6, n_val=3, image_size=SIZE, seed=3, classes=THINGS, stuff_classes=STUFF)
    return root


@pytest.fixture
def ade_copy(ade_root, tmp_path):
    """A private copy of the generated set, for tests that break it."""
    shutil.copytree(ade_root / "ADEChallengeData2016", tmp_path / "ADEChallengeData2016")
    return tmp_path / "ADEChallengeData2016"


def test_class_names_and_palette():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[2] == "sky"
    assert ADE20K_CLASSES[7] == "bed "  # mmseg's spelling, trailing space included
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[149] == "flag"
    assert len(ADE20K_PALETTE) == 150
    assert ADE20K_PALETTE[0] == (120, 120, 120) and ADE20K_PALETTE[149] == (92, 0, 255)


def test_layout_and_file_names(ade_root):
    data_root = ade_root / "ADEChallengeData2016"
    assert sorted(p.name for p in ade_root.iterdir()) == ["ADEChallengeData2016"]  # no temp left
    files = sorted(str(p.relative_to(data_root)) for p in data_root.rglob("*") if p.is_file())
    expected = sorted(
        [f"images/training/ADE_train_{i:08d}.jpg" for i in range(1, 7)]
        + [f"annotations/training/ADE_train_{i:08d}.png" for i in range(1, 7)]
        + [f"images/validation/ADE_val_{i:08d}.jpg" for i in range(1, 4)]
        + [f"annotations/validation/ADE_val_{i:08d}.png" for i in range(1, 4)]
    )
    assert files == expected
    with Image.open(data_root / "images/training/ADE_train_00000001.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 64))
    with Image.open(data_root / "annotations/validation/ADE_val_00000003.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (96, 64))
        assert np.asarray(im).dtype == np.uint8


def test_label_values(ade_root):
    allowed = {0, *THINGS, *STUFF}
    for path in sorted((ade_root / "ADEChallengeData2016/annotations").rglob("*.png")):
        values = set(np.unique(np.asarray(Image.open(path))).tolist())
        assert values <= allowed, path
        assert 0 in values, path  # the ignore ring around the shapes
        assert values & set(STUFF), path  # a background band
        assert values & set(THINGS), path  # at least one shape


def test_shapes_carry_their_class(ade_root):
    data_root = ade_root / "ADEChallengeData2016"
    n_checked = 0
    for split, stem, count in (("training", "train", 6), ("validation", "val", 3)):
        for index in range(1, count + 1):
            image, label, shapes = render_ade20k_sample(sample_rng(3, split, index), SIZE, THINGS, STUFF)
            on_disk = np.asarray(Image.open(data_root / f"annotations/{split}/ADE_{stem}_{index:08d}.png"))
            jpg = np.asarray(Image.open(data_root / f"images/{split}/ADE_{stem}_{index:08d}.jpg"))
            np.testing.assert_array_equal(on_disk, label)
            assert np.abs(jpg.astype(int) - image.astype(int)).mean() < 8  # JPEG quality 95
            assert 1 <= len(shapes) <= 3
            for shape in shapes:
                cy, cx = shape.center
                assert on_disk[cy, cx] == shape.class_index
                mask = shape.mask(SIZE)
                assert mask.sum() > 20
                assert (on_disk[mask] == shape.class_index).all()
                ring = ade_data._dilate(mask, ade_data.IGNORE_BORDER) & ~mask
                assert (on_disk[ring] == 0).all()
                # The shape's mean colour is nearest to its own class's palette colour.
                mean = jpg[mask].mean(axis=0)
                dists = {c: np.linalg.norm(mean - 0.8 * np.array(ADE20K_PALETTE[c - 1])) for c in THINGS}
                assert min(dists, key=dists.get) == shape.class_index
                n_checked += 1
    assert n_checked >= 9


def test_rectangle_mask_by_hand():
    shape = ade_data.Shape(13, "rectangle", center=(10, 20), half_size=(3, 5))
    mask = shape.mask((32, 48))
    assert mask.sum() == 7 * 11
    assert mask[7, 15] and mask[13, 25] and not mask[6, 20] and not mask[10, 26]


def test_deterministic(ade_root, tmp_path):
    make_ade20k_dataset(
        tmp_path / "same", n_train=3, n_val=1, image_size=SIZE, seed=3, classes=THINGS, stuff_classes=STUFF
    )
    make_ade20k_dataset(
        tmp_path / "other", n_train=3, n_val=1, image_size=SIZE, seed=4, classes=THINGS, stuff_classes=STUFF
    )
    for rel in (
        "images/training/ADE_train_00000003.jpg",
        "annotations/training/ADE_train_00000003.png",
        "annotations/validation/ADE_val_00000001.png",
    ):
        first = (ade_root / "ADEChallengeData2016" / rel).read_bytes()
        assert (tmp_path / "same/ADEChallengeData2016" / rel).read_bytes() == first
        assert (tmp_path / "other/ADEChallengeData2016" / rel).read_bytes() != first


def test_bad_generator_options_write_nothing(tmp_path):
    with pytest.raises(BenchError, match="class index 151 is outside 1..150"):
        make_ade20k_dataset(tmp_path, classes=(13, 151))
    with pytest.raises(BenchError, match="share class index 3"):
        make_ade20k_dataset(tmp_path, classes=(3, 13), stuff_classes=(1, 3))
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    calls = []
    real_write = ade_data._write_pair

    def failing_write(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(*args)

    monkeypatch.setattr(ade_data, "_write_pair", failing_write)
    with pytest.raises(OSError, match="disk full"):
        make_ade20k_dataset(tmp_path, n_train=4, n_val=1, image_size=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(ade_copy):
    root = ade_copy.parent
    with pytest.raises(BenchError, match="already exists"):
        make_ade20k_dataset(root, n_train=1, n_val=1, image_size=(32, 32))
    assert len(list((ade_copy / "images/training").iterdir())) == 6  # untouched
    make_ade20k_dataset(root, n_train=1, n_val=1, image_size=(32, 32), overwrite=True)
    assert len(list((ade_copy / "images/training").iterdir())) == 1
    assert sorted(p.name for p in root.iterdir()) == ["ADEChallengeData2016"]


def test_validate_generated(ade_root):
    summary = validate_ade20k(ade_root / "ADEChallengeData2016", "training")
    assert (summary.num_images, summary.num_value_checked) == (6, 6)
    assert summary.pixel_counts[0] > 0
    assert sum(summary.pixel_counts) == 6 * 64 * 96
    assert set(summary.values_present) <= {0, *THINGS, *STUFF}
    # The parent folder works too, and value_sample reads fewer labels.
    summary = validate_ade20k(ade_root, "validation", value_sample=2)
    assert (summary.num_images, summary.num_value_checked) == (3, 2)
    assert sum(summary.pixel_counts) == 2 * 64 * 96
    summary = validate_ade20k(ade_root, "validation", check_values=False)
    assert summary.num_value_checked == 0 and sum(summary.pixel_counts) == 0


@pytest.mark.parametrize("folder", ["images", "annotations"])
def test_validate_missing_folder(ade_copy, folder):
    shutil.rmtree(ade_copy / folder / "validation")
    with pytest.raises(DataError, match=f"{ade_copy / folder / 'validation'}: missing folder"):
        validate_ade20k(ade_copy, "validation")


def test_validate_unpaired_files(ade_copy):
    for i in (2, 5):
        (ade_copy / f"annotations/training/ADE_train_{i:08d}.png").unlink()
    with pytest.raises(
        DataError, match="2 image\\(s\\) .* have no .png label .*: ADE_train_00000002, ADE_train_00000005$"
    ):
        validate_ade20k(ade_copy, "training")
    (ade_copy / "images/validation/ADE_val_00000001.jpg").unlink()
    with pytest.raises(DataError, match="1 label\\(s\\) .* have no .jpg image .*: ADE_val_00000001$"):
        validate_ade20k(ade_copy, "validation")


def test_validate_many_unpaired_names_first_five(ade_copy):
    for i in range(1, 7):
        (ade_copy / f"images/training/ADE_train_{i:08d}.jpg").rename(
            ade_copy / f"images/training/ADE_train_{i:08d}.jpeg"
        )
    with pytest.raises(DataError) as info:
        validate_ade20k(ade_copy, "training")
    assert str(info.value) == f"{ade_copy / 'images/training'}: no .jpg images"
    for i in range(1, 7):
        (ade_copy / f"images/training/ADE_train_{i:08d}.jpeg").rename(ade_copy / f"images/training/X_{i:08d}.jpg")
    with pytest.raises(DataError) as info:
        validate_ade20k(ade_copy, "training")
    message = str(info.value)
    assert (
        message.startswith("6 image(s)")
        and "X_00000001, X_00000002, X_00000003, X_00000004, X_00000005, ...; 6 label(s)" in message
        and "X_00000006" not in message
    )


def test_validate_label_value_too_large(ade_copy):
    path = ade_copy / "annotations/training/ADE_train_00000004.png"
    label = np.asarray(Image.open(path)).copy()
    label[5, 7] = 200
    Image.fromarray(label).save(path)
    with pytest.raises(DataError, match=f"{path}: label value 200 > 150"):
        validate_ade20k(ade_copy, "training")
    assert validate_ade20k(ade_copy, "training", check_values=False).num_images == 6
    # Sampling 2 of 6 reads files 1 and 6 only, so it misses file 4.
    assert validate_ade20k(ade_copy, "training", value_sample=2).num_value_checked == 2


@pytest.mark.parametrize("mode", ["RGB", "I;16", "LA"])
def test_validate_label_not_single_channel_uint8(ade_copy, mode):
    path = ade_copy / "annotations/validation/ADE_val_00000002.png"
    Image.open(path).convert(mode).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    with pytest.raises(DataError, match=f"{path}: label must be a single-channel uint8 PNG .*got mode '{mode}'"):
        validate_ade20k(ade_copy, "validation", check_values=False)


def test_validate_size_mismatch(ade_copy):
    path = ade_copy / "annotations/training/ADE_train_00000001.png"
    Image.open(path).resize((48, 64), Image.NEAREST).save(path)
    with pytest.raises(
        DataError, match=f"{path}: label is 48x64 \\(WxH\\) but its image ADE_train_00000001.jpg is 96x64"
    ):
        validate_ade20k(ade_copy, "training")


def test_validate_unreadable_label(ade_copy):
    path = ade_copy / "annotations/training/ADE_train_00000003.png"
    path.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{path}: cannot read image"):
        validate_ade20k(ade_copy, "training")


def test_validate_bad_split(ade_root):
    with pytest.raises(BenchError, match="split must be one of"):
        validate_ade20k(ade_root, "train")


# --- confusion_miou --------------------------------------------------------------------------


def test_confusion_miou_by_hand_reduce_zero_label():
    # Raw labels as on disk (0 = ignore); after reduce_zero_label: 0 -> 255, v -> v - 1.
    label1 = np.array([[0, 1, 2], [3, 1, 1]])  # -> [[255, 0, 1], [2, 0, 0]]
    pred1 = np.array([[2, 0, 1], [2, 1, 0]])
    label2 = np.array([[1, 3], [3, 0]])  # -> [[0, 2], [2, 255]]
    pred2 = np.array([[2, 2], [0, 0]])
    # Counted (gt, pred) pairs: image 1: (0,0) (1,1) (2,2) (0,1) (0,0); image 2: (0,2) (2,2) (2,0).
    # Confusion (rows gt, cols pred): [[2, 1, 1], [0, 1, 0], [1, 0, 2]].
    # gt areas 4, 1, 3; pred areas 3, 2, 3; intersections 2, 1, 2.
    # IoU: 2/(4+3-2) = 40%, 1/(1+2-1) = 50%, 2/(3+3-2) = 50%; mIoU = 140/3 = 46.67%.
    # aAcc = 5/8 = 62.5%; Acc: 2/4 = 50%, 1/1 = 100%, 2/3 = 66.67%; mAcc = 72.22%.
    out = confusion_miou([pred1, pred2], [label1, label2], num_classes=3)
    np.testing.assert_array_equal(out["confusion"], [[2, 1, 1], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_allclose(out["IoU"], [40.0, 50.0, 50.0])
    np.testing.assert_allclose(out["Acc"], [50.0, 100.0, 200.0 / 3])
    assert out["mIoU"] == pytest.approx(140.0 / 3)
    assert out["aAcc"] == pytest.approx(62.5)
    assert out["mAcc"] == pytest.approx((50.0 + 100.0 + 200.0 / 3) / 3)


def test_confusion_miou_absent_class_is_nan_and_excluded():
    # No reduction; 255 is ignored. Class 2 is only predicted (IoU 0, counted),
    # class 3 appears nowhere (IoU NaN, left out of the mean).
    label = np.array([[0, 0], [1, 255]])
    pred = np.array([[0, 2], [1, 1]])
    # Counted (gt, pred): (0,0) (0,2) (1,1). IoU0 = 1/(2+1-1) = 50%, IoU1 = 1/1 = 100%, IoU2 = 0.
    out = confusion_miou([pred], [label], num_classes=4, reduce_zero_label=False)
    np.testing.assert_allclose(out["IoU"][:3], [50.0, 100.0, 0.0])
    assert math.isnan(out["IoU"][3])
    assert out["mIoU"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3
    assert out["aAcc"] == pytest.approx(200.0 / 3)
    assert math.isnan(out["Acc"][2]) and math.isnan(out["Acc"][3])
    assert out["mAcc"] == pytest.approx(75.0)  # (50 + 100) / 2


def test_confusion_miou_perfect_on_generated_labels(ade_root):
    labels = [
        np.asarray(Image.open(p))
        for p in sorted((ade_root / "ADEChallengeData2016/annotations/training").glob("*.png"))
    ]
    preds = [np.maximum(label.astype(np.int64) - 1, 0) for label in labels]  # 0 pixels: ignored
    out = confusion_miou(preds, labels)
    assert out["mIoU"] == 100.0 and out["aAcc"] == 100.0
    present = sorted(int(c) + 1 for c in np.flatnonzero(~np.isnan(out["IoU"])))
    assert set(present) <= {*THINGS, *STUFF} and set(STUFF) & set(present)
    # Predicting everything as the first stuff class: IoU of that class = its share of pixels.
    flat = [np.full_like(p, STUFF[0] - 1) for p in preds]
    out = confusion_miou(flat, labels)
    counted = sum(int((label > 0).sum()) for label in labels)
    of_class = sum(int((label == STUFF[0]).sum()) for label in labels)
    assert out["IoU"][STUFF[0] - 1] == pytest.approx(100.0 * of_class / counted)
    assert out["aAcc"] == pytest.approx(100.0 * of_class / counted)


def test_confusion_miou_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_miou([np.zeros((2, 2), int)], [np.zeros((2, 3), int)])
    with pytest.raises(DataError, match="label_list\\[0\\]: label value 151"):
        confusion_miou([np.zeros((1, 2), int)], [np.array([[1, 151]])])
    with pytest.raises(ValueError, match="pred_list\\[0\\]"):
        confusion_miou([np.array([[0, 150]])], [np.array([[1, 2]])])
