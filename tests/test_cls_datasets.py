"""Classification readers (iNaturalist 2017/2018/2019, Places365, Places205, image folders) on sets
generated in the exact real formats, their errors, the digits-based generators, and fuzzing."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.core.errors import BenchError, DataError
from tasks.classification import (
    ClassificationSplit,
    ImageDataset,
    generate,
    load_rgb,
    make_image_folder,
    make_inat_dataset,
    make_places205_dataset,
    make_places365_dataset,
    read_image_folder,
    read_inat,
    read_places205,
    read_places365,
    read_split,
    read_splits,
)
from tasks.classification import datasets as cd

N_TRAIN, N_VAL, N_CLASSES = 4, 2, 3
SMALL = dict(n_train_per_class=N_TRAIN, n_val_per_class=N_VAL, num_classes=N_CLASSES, image_size=16)


# the generated formats ('digits' is real data in the folder format: tests/test_cls_paper_protocol.py)
FORMATS = tuple(d for d in cd.DATASETS if d != "digits")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """One small generated set per format, shared (read-only) by the tests of this module."""
    base = tmp_path_factory.mktemp("cls")
    out = {}
    for year in (2017, 2018, 2019):
        out[f"inat{year}"] = make_inat_dataset(base / f"inat{year}", year, **SMALL)
    out["places365"] = make_places365_dataset(base / "places365", **SMALL)
    out["places205"] = make_places205_dataset(base / "places205", **SMALL)
    out["folder"] = make_image_folder(base / "folder", **SMALL)
    return out


def copy_of(sets, name, tmp_path) -> Path:
    return Path(shutil.copytree(sets[name], tmp_path / name))


def error_of(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------------------------
# Readers on the generated sets


@pytest.mark.parametrize(
    "year,prefix",
    [
        (2017, "train_val_images/Plantae/Abies concolor/"),
        (2018, "train_val2018/Plantae/0/"),
        (2019, "train_val2019/Plants/0/"),
    ],
)
def test_inat_reader_counts_labels_and_layout(sets, year, prefix):
    root = sets[f"inat{year}"]
    train, val = read_inat(root, year, "train"), read_inat(root, year, "val")
    assert isinstance(train, ClassificationSplit)
    assert (len(train), len(val)) == (N_CLASSES * N_TRAIN, N_CLASSES * N_VAL)
    assert train.classes == val.classes == ["Abies concolor", "Amanita muscaria", "Cardinalis cardinalis"]
    assert Counter(train.labels) == {0: N_TRAIN, 1: N_TRAIN, 2: N_TRAIN}
    assert Counter(val.labels) == {0: N_VAL, 1: N_VAL, 2: N_VAL}
    assert (train.name, val.name) == (f"inat{year}/train", f"inat{year}/val")
    first, label = train.samples[0]
    assert label == 0 and first.relative_to(root).as_posix().startswith(prefix)
    assert first.is_file() and len(first.stem) == 32  # md5-named like the real files
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    data = json.loads((root / f"val{year}.json").read_text())
    assert set(data) == {"info", "images", "categories", "annotations", "licenses"}
    assert ("supercategory" in data["categories"][0]) == (year != 2019)
    assert ("genus" in data["categories"][0]) == (year != 2017)


def test_places365_reader(sets, tmp_path):
    root = sets["places365"]
    train, val = read_places365(root, "train"), read_places365(root, "val")
    assert (len(train), len(val)) == (N_CLASSES * N_TRAIN, N_CLASSES * N_VAL)
    assert train.classes == ["/a/airfield", "/b/beach", "/c/coast"]
    assert train.samples[0] == (root / "data_256/a/airfield/00000001.jpg", 0)
    assert (root / "places365_train_standard.txt").read_text().splitlines()[0] == "/a/airfield/00000001.jpg 0"
    # val: flat 'Places365_val_%08d.jpg <label>' in val_256/, numbered regardless of class
    lines = (root / "places365_val.txt").read_text().split()
    assert lines[0] == "Places365_val_00000001.jpg"
    assert val.samples[0] == (root / "val_256/Places365_val_00000001.jpg", int(lines[1]))
    assert Counter(val.labels) == {0: N_VAL, 1: N_VAL, 2: N_VAL}
    assert not (root / "categories_places365.txt").read_text().endswith("\n")  # like the real file
    # torchvision's folder name for the same tar
    copy = copy_of(sets, "places365", tmp_path)
    (copy / "data_256").rename(copy / "data_256_standard")
    assert read_places365(copy, "train").samples[5] == (copy / "data_256_standard/b/beach/00000002.jpg", 1)


def test_places205_reader_both_layouts(sets, tmp_path):
    root = sets["places205"]
    train, val = read_places205(root, "train"), read_places205(root, "val")
    assert (len(train), len(val)) == (N_CLASSES * N_TRAIN, N_CLASSES * N_VAL)
    assert train.classes == ["/a/abbey", "/a/airport_terminal", "/c/coast"]
    nested = root / "data/vision/torralba/deeplearning/images256"
    assert train.samples[0] == (nested / "a/abbey/00000001.jpg", 0)
    assert val.samples[-1] == (nested / f"c/coast/{N_TRAIN + N_VAL:08d}.jpg", 2)
    csv = (root / "trainvalsplit_places205/train_places205.csv").read_text().splitlines()
    assert csv[0] == "a/abbey/00000001.jpg 0" and len(csv) == N_CLASSES * N_TRAIN
    copy = copy_of(sets, "places205", tmp_path)
    shutil.move(copy / "data/vision/torralba/deeplearning/images256", copy / "images256")
    shutil.rmtree(copy / "data")
    assert read_places205(copy, "val").samples[0] == (copy / f"images256/a/abbey/{N_TRAIN + 1:08d}.jpg", 0)


def test_image_folder_reader(sets):
    root = sets["folder"]
    train, val = read_image_folder(root, "train"), read_image_folder(root, "val")
    assert train.classes == ["0_zero", "1_one", "2_two"]
    assert (len(train), len(val)) == (N_CLASSES * N_TRAIN, N_CLASSES * N_VAL)
    assert all(path.parent.name == train.classes[label] for path, label in train.samples + val.samples)


@pytest.mark.parametrize("dataset", FORMATS)
def test_read_split_dispatch_matches_readers(sets, dataset):
    train, val = read_splits(dataset, sets[dataset])
    assert read_split(dataset, sets[dataset], "train") == train
    assert read_split(dataset, sets[dataset], "val") == val
    assert train.num_classes == N_CLASSES and len(val) == N_CLASSES * N_VAL


@pytest.mark.parametrize("dataset", FORMATS)
def test_generated_labels_are_the_digits_shown(sets, dataset):
    """1-nearest-neighbour over all 1,797 scikit-learn digits recovers each image's label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    bank = digits.images.reshape(len(digits.images), -1)
    bank = (bank - bank.mean(1, keepdims=True)) / bank.std(1, keepdims=True)
    train, val = read_splits(dataset, sets[dataset])
    hits = 0
    for path, label in train.samples + val.samples:
        grey = np.asarray(load_rgb(path).convert("L"), dtype=np.float64).reshape(8, 2, 8, 2).mean((1, 3))
        grey = (grey.ravel() - grey.mean()) / grey.std()
        hits += int(digits.target[np.argmax(bank @ grey)] == label)
    assert hits >= len(train) + len(val) - 1  # 17 of 18 at least (observed: all)


def test_generators_are_deterministic_and_seeded(tmp_path):
    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a = digest(make_places365_dataset(tmp_path / "a", **SMALL, seed=3))
    b = digest(make_places365_dataset(tmp_path / "b", **SMALL, seed=3))
    c = digest(make_places365_dataset(tmp_path / "c", **SMALL, seed=4))
    assert a == b and len(a) == 2 + 1 + N_CLASSES * (N_TRAIN + N_VAL)
    assert digest(cd.make_dataset("places365", tmp_path / "d", **SMALL, seed=3)) == a
    assert a.keys() == c.keys() and a != c


def test_generator_never_leaves_partial_output(tmp_path, monkeypatch):
    calls = []
    real_save = generate._save_jpeg

    def failing_save(image, path):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        real_save(image, path)

    monkeypatch.setattr(generate, "_save_jpeg", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_inat_dataset(tmp_path / "out", 2018, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither 'out' nor the temp folder
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(BenchError, match="not an empty folder"):
        make_image_folder(tmp_path / "full", **SMALL)
    with pytest.raises(BenchError, match="sum <= 174"):
        make_image_folder(tmp_path / "big", n_train_per_class=170, n_val_per_class=10)


# --------------------------------------------------------------------------------------------------
# ImageDataset and image loading


def test_image_dataset_returns_label_and_transformed_rgb(sets):
    split = read_split("places365", sets["places365"], "val")
    plain = ImageDataset(split)
    assert len(plain) == N_CLASSES * N_VAL
    for index in (0, 3, len(split) - 1):
        image, label = plain[index]
        assert label == split.samples[index][1] and image.mode == "RGB" and image.size == (16, 16)
    sized = ImageDataset(split, transform=lambda im: np.asarray(im.resize((8, 8))))
    array, label = sized[4]
    assert array.shape == (8, 8, 3) and label == split.samples[4][1]


def test_image_dataset_decodes_with_torchvision_for_the_tensor_eval_transform(sets, monkeypatch):
    import torch

    from bench.core.data import IMAGENET_STD, TensorTransform
    from tasks.classification import protocols as P

    split = read_split("places365", sets["places365"], "val")
    ev = P.eval_transform(P.load_config("finetune", "vit_base_patch16"), 32)  # 16 px images: resize 36, crop 32
    assert isinstance(ev, TensorTransform)
    decoded = []
    import bench.core.data as bd  # ImageDataset reads through bench.core.data.LabelledImages

    real = bd.decode_rgb
    monkeypatch.setattr(bd, "decode_rgb", lambda path: decoded.append(path) or real(path))
    tensors, pils = ImageDataset(split, ev), ImageDataset(split, ev.reference)
    for index in (0, 3, len(split) - 1):
        (x, label), (y, label_pil) = tensors[index], pils[index]
        assert label == label_pil == split.samples[index][1] and x.shape == y.shape == (3, 32, 32)
        assert decoded[-1] == split.samples[index][0]
        # torch's and PIL's antialiased bicubic differ by rounding only (measured < 0.05 of 255)
        assert float(((x - y).abs() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).mean()) < 0.5
    assert len(decoded) == 3  # the PIL-transform dataset read with load_rgb


def test_load_rgb_handles_modes_and_bad_files(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent -> white
    rgba.save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").getpixel((1, 1)) == (77, 77, 77)
    wide = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    wide.save(tmp_path / "w.png")
    assert [load_rgb(tmp_path / "w.png").getpixel(xy)[0] for xy in ((0, 0), (1, 1))] == [0, 255]
    Image.new("P", (4, 4), 3).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").mode == "RGB"
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert "bad.jpg: cannot read image" in error_of(lambda: load_rgb(tmp_path / "bad.jpg"))


# --------------------------------------------------------------------------------------------------
# Bad inputs: one-line DataError naming the file and key


@pytest.mark.parametrize("key", ["annotations", "images", "categories"])
def test_inat_missing_key(sets, tmp_path, key):
    root = copy_of(sets, "inat2018", tmp_path)
    edit_json(root / "train2018.json", lambda d: d.pop(key))
    assert error_of(lambda: read_inat(root, 2018, "train")) == f"{root / 'train2018.json'}: missing key {key!r}"


def test_inat_annotation_of_unknown_image(sets, tmp_path):
    root = copy_of(sets, "inat2019", tmp_path)
    edit_json(root / "val2019.json", lambda d: d["annotations"][2].update(image_id=987654))
    message = error_of(lambda: read_inat(root, 2019, "val"))
    assert message == f"{root / 'val2019.json'}: annotations[2].image_id 987654 is not in 'images'"


def test_inat_bad_field_type_and_unannotated_image(sets, tmp_path):
    root = copy_of(sets, "inat2017", tmp_path)
    edit_json(root / "train2017.json", lambda d: d["categories"][1].update(id="1"))
    assert "train2017.json: categories[1].id must be an integer, got '1'" in error_of(
        lambda: read_inat(root, 2017, "train")
    )
    edit_json(root / "train2017.json", lambda d: (d["categories"][1].update(id=1), d["annotations"].pop()))
    assert "train2017.json: 1 image(s) have no annotation, first: id 11" in error_of(
        lambda: read_inat(root, 2017, "train")
    )


def test_inat_non_contiguous_ids_are_mapped_with_a_warning(sets, tmp_path):
    root = copy_of(sets, "inat2018", tmp_path)

    def spread(d):  # ids 0, 1, 2 -> 5, 15, 25
        for c in d["categories"]:
            c["id"] = 10 * c["id"] + 5
        for a in d["annotations"]:
            a["category_id"] = 10 * a["category_id"] + 5

    edit_json(root / "train2018.json", spread)
    edit_json(root / "val2018.json", spread)
    with pytest.warns(UserWarning, match=r"the 3 category ids are not contiguous 0\.\.2"):
        train, val = read_splits("inat2018", root)
    assert Counter(train.labels) == {0: N_TRAIN, 1: N_TRAIN, 2: N_TRAIN}
    assert train.classes == ["Abies concolor", "Amanita muscaria", "Cardinalis cardinalis"]
    assert val.labels == read_inat(sets["inat2018"], 2018, "val").labels


def test_inat_val_label_outside_train_categories(sets, tmp_path):
    root = copy_of(sets, "inat2018", tmp_path)
    edit_json(root / "val2018.json", lambda d: d["annotations"][0].update(category_id=77))
    message = error_of(lambda: read_inat(root, 2018, "val"))
    assert message.startswith(f"{root / 'val2018.json'}: category_id 77 (image 'train_val2018/Plantae/0/")
    assert message.endswith("is not in the train categories (train2018.json)")


def test_inat_unreadable_json(sets, tmp_path):
    root = copy_of(sets, "inat2018", tmp_path)
    (root / "train2018.json").write_text('{"images": [1, 2,\n  ]}')
    assert error_of(lambda: read_inat(root, 2018, "train")) == (
        f"{root / 'train2018.json'}: not valid JSON (Expecting value at line 2 column 3)"
    )  # bench.core.io.load_json
    (root / "train2018.json").unlink()
    assert error_of(lambda: read_inat(root, 2018, "val")) == f"{root / 'train2018.json'}: file not found"


def test_missing_images_are_counted_and_named(sets, tmp_path):
    root = copy_of(sets, "inat2018", tmp_path)
    train = read_inat(root, 2018, "train")
    for path, _ in train.samples[2:9]:
        path.unlink()
    message = error_of(lambda: read_inat(root, 2018, "train"))
    shown = ", ".join(repr(p.relative_to(root).as_posix()) for p, _ in train.samples[2:7])
    assert message == f"{root / 'train2018.json'}: 7 listed image file(s) missing under {root}, first: {shown}"
    root = copy_of(sets, "places365", tmp_path)
    shutil.rmtree(root / "val_256")
    (root / "val_256").mkdir()
    assert (
        f"places365_val.txt: {N_CLASSES * N_VAL} listed image file(s) missing under {root / 'val_256'}, "
        f"first: 'Places365_val_00000001.jpg', " in error_of(lambda: read_places365(root, "val"))
    )
    shutil.rmtree(root / "val_256")
    assert error_of(lambda: read_places365(root, "val")) == (
        f"{root}: no Places365 val image folder (looked for val_256, val_large)"
    )


def test_places_malformed_lines_name_file_and_line(sets, tmp_path):
    root = copy_of(sets, "places365", tmp_path)
    listing = root / "places365_train_standard.txt"
    lines = listing.read_text().splitlines()
    lines[2] = "/a/airfield/00000003.jpg zero"
    listing.write_text("\n".join(lines) + "\n")
    assert error_of(lambda: read_places365(root, "train")) == (
        f"{listing}:3: expected '<image> <label>', got '/a/airfield/00000003.jpg zero'"
    )
    categories = root / "categories_places365.txt"
    categories.write_text("/a/airfield 0\n/b/beach\n/c/coast 2")
    assert error_of(lambda: read_places365(root, "val")) == (
        f"{categories}:2: expected '<category> <id>', got '/b/beach'"
    )
    root = copy_of(sets, "places205", tmp_path)
    csv = root / "trainvalsplit_places205/val_places205.csv"
    csv.write_text(csv.read_text() + "a/abbey/x.jpg 1 2\n")
    assert error_of(lambda: read_places205(root, "val")) == (
        f"{csv}:{N_CLASSES * N_VAL + 1}: expected '<image> <label>', got 'a/abbey/x.jpg 1 2'"
    )


def test_val_labels_outside_train_label_set(sets, tmp_path):
    root = copy_of(sets, "places365", tmp_path)
    listing = root / "places365_val.txt"
    listing.write_text(listing.read_text().replace(" 0\n", " 42\n", 1))
    assert "places365_val.txt:" in (m := error_of(lambda: read_places365(root, "val")))
    assert m.endswith("label 42 is not a category of categories_places365.txt (the train label set)")
    root = copy_of(sets, "places205", tmp_path)
    csv = root / "trainvalsplit_places205/val_places205.csv"
    csv.write_text(csv.read_text() + "z/zen_garden/00000001.jpg 9\n")
    assert error_of(lambda: read_places205(root, "val")) == (
        f"{csv}:{N_CLASSES * N_VAL + 1}: label 9 does not occur in train_places205.csv (the train label set)"
    )
    root = copy_of(sets, "folder", tmp_path)
    (root / "val" / "7_seven").mkdir()
    assert "val/7_seven: class '7_seven' is not a train class" in error_of(lambda: read_image_folder(root, "val"))


def test_places205_inconsistent_folder_for_a_label(sets, tmp_path):
    root = copy_of(sets, "places205", tmp_path)
    csv = root / "trainvalsplit_places205/train_places205.csv"
    csv.write_text(csv.read_text().replace("a/airport_terminal/00000002.jpg 1", "a/airport_terminal/00000002.jpg 0"))
    assert error_of(lambda: read_places205(root, "train")) == (
        f"{csv}:6: label 0 and folder '/a/airport_terminal' disagree with an earlier line"
    )


def test_unknown_dataset_or_split_is_a_bench_error(sets):
    with pytest.raises(BenchError, match="unknown dataset 'imagenet'"):
        read_split("imagenet", sets["folder"], "train")
    with pytest.raises(BenchError, match="unknown split 'test'"):
        read_split("folder", sets["folder"], "test")


# --------------------------------------------------------------------------------------------------
# Fuzzing (issue 9): arbitrary files load or raise DataError, never a raw traceback

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# Entries that are well-formed (so whole files sometimes load) next to anything at all.
INAT_FILES = ("train_val2018/Plantae/0/a.jpg", "b.jpg", "train_val2018/missing.jpg")
small_id = st.integers(0, 3)
good_image = st.fixed_dictionaries({"id": small_id, "file_name": st.sampled_from(INAT_FILES)})
good_annotation = st.fixed_dictionaries({"image_id": small_id, "category_id": small_id})
good_category = st.fixed_dictionaries({"id": small_id, "name": st.text(max_size=6)})
any_entry = (
    st.dictionaries(st.sampled_from(["id", "file_name", "image_id", "category_id", "name"]), json_values, max_size=3)
    | json_values
)
inat_like = st.fixed_dictionaries(
    {},
    optional={
        "images": st.lists(good_image | any_entry, max_size=4),
        "annotations": st.lists(good_annotation | any_entry, max_size=4),
        "categories": st.lists(good_category | any_entry, max_size=4),
    },
)
inat_good = st.fixed_dictionaries(
    {
        "images": st.lists(good_image, min_size=1, max_size=4),
        "annotations": st.lists(good_annotation, max_size=5),
        "categories": st.lists(good_category, max_size=4),
    }
)


def _loads_or_data_error(call) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            assert isinstance(call(), ClassificationSplit)
        except DataError as e:
            assert "\n" not in str(e) and str(e)


@FUZZ
@given(
    train=inat_good | inat_like | json_values, val=inat_good | inat_like | json_values, split=st.sampled_from(cd.SPLITS)
)
def test_fuzz_inat_json(train, val, split):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train2018.json").write_text(json.dumps(train))
        (root / "val2018.json").write_text(json.dumps(val))
        for name in INAT_FILES[:2]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")
        _loads_or_data_error(lambda: read_inat(root, 2018, split))


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()[:-1]))
def test_fuzz_inat_raw_bytes(raw):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train2019.json").write_bytes(raw)
        _loads_or_data_error(lambda: read_inat(tmp, 2019, "train"))


def text_lines(*good_lines: str):
    """Files of up to 6 lines: well-formed ones, near misses and arbitrary text."""
    path_like = st.text(st.sampled_from("ab/_.0 \t"), max_size=10)
    label = st.integers(-2, 4).map(str) | st.sampled_from(["7" * 30, "7" * 5000])  # int() refuses > 4300 digits
    line = st.sampled_from(good_lines) | st.text(max_size=20) | st.builds(lambda p, n: f"{p} {n}", path_like, label)
    return st.lists(line, max_size=6).map("\n".join)


@FUZZ
@given(
    categories=text_lines("/a/b 0", "/c 1"),
    train=text_lines("/a/b/0.jpg 0", "a/b/0.jpg 1"),
    val=text_lines("0.jpg 0", "0.jpg 1"),
    split=st.sampled_from(cd.SPLITS),
)
def test_fuzz_places365_text(categories, train, val, split):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "categories_places365.txt").write_text(categories, encoding="utf-8")
        (root / "places365_train_standard.txt").write_text(train, encoding="utf-8")
        (root / "places365_val.txt").write_text(val, encoding="utf-8")
        for name in ("data_256/a/b", "val_256"):
            (root / name).mkdir(parents=True)
        (root / "data_256/a/b/0.jpg").write_bytes(b"")
        (root / "val_256/0.jpg").write_bytes(b"")
        _loads_or_data_error(lambda: read_places365(root, split))


@FUZZ
@given(
    train=text_lines("a/b/0.jpg 0", "a/c/0.jpg 1"),
    val=text_lines("a/b/0.jpg 0", "a/b/0.jpg 1") | st.binary(max_size=30),
    split=st.sampled_from(cd.SPLITS),
)
def test_fuzz_places205_text(train, val, split):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "trainvalsplit_places205").mkdir()
        (root / "trainvalsplit_places205/train_places205.csv").write_text(train, encoding="utf-8")
        csv = root / "trainvalsplit_places205/val_places205.csv"
        csv.write_bytes(val if isinstance(val, bytes) else val.encode())
        (root / "images256/a/b").mkdir(parents=True)
        (root / "images256/a/b/0.jpg").write_bytes(b"")
        _loads_or_data_error(lambda: read_places205(root, split))


def test_generate_dataset_writes_every_layout_its_reader_takes(tmp_path):
    from tasks.classification.generate import generate_dataset

    for name in cd.DATASETS:
        opts = {"n_train_per_class": 3, "n_val_per_class": 2, "num_classes": 2}
        root = generate_dataset(name, tmp_path / name, **opts)
        train, val = read_splits(name, root)
        assert (len(train), len(val), train.num_classes) == (6, 4, 2), name
    with pytest.raises(BenchError, match=r"digits: unknown option 'seed'; known: n_train_per_class"):
        generate_dataset("digits", tmp_path / "x", seed=1)
    with pytest.raises(BenchError, match=r"unknown dataset 'imagenet'"):
        generate_dataset("imagenet", tmp_path / "y")


def test_inat_2018_2019_heldout_is_class_balanced(tmp_path):
    """A long-tailed train split (40 / 20 / 5 images per class): iNat 2018 / 2019 hold out 3 per class
    (as their val has about 3), the other datasets a class-stratified 10 %."""
    samples = [(tmp_path / f"{c}_{i}.jpg", c) for c, n in enumerate((40, 20, 5)) for i in range(n)]
    split = cd.ClassificationSplit(samples, ["a", "b", "c"], "train")
    for dataset, want in (("inat2018", [3, 3, 3]), ("inat2019", [3, 3, 3]), ("inat2017", [4, 2, 1])):
        rest, held = cd.heldout_for(dataset, split)
        assert [held.labels.count(c) for c in range(3)] == want, dataset
        assert len(rest) + len(held) == 65 and not set(rest.samples) & set(held.samples)
    assert cd.heldout_for("inat2018", split)[1].samples == cd.heldout_for("inat2018", split)[1].samples


def test_missing_data_names_the_layout_and_bench_data(tmp_path):
    with pytest.raises(
        DataError,
        match=r"train2018\.json: file not found; inat2018 expects train2018\.json.*"
        r"\(a small one: bench data inat2018 --out DIR\)",
    ):
        read_splits("inat2018", tmp_path)
