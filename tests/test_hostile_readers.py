"""Hostile files at the readers (issue 24, items 2, 5, 6): COCO annotations that would crash
pycocotools or train silently, sizes declared in headers that would allocate gigabytes (images,
``.npz`` arrays, checkpoint records), and full disks under the atomic writers. Every hostile file is
built small in ``tmp_path``; nothing here allocates more than a few MB."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

import bench.core.checkpoint as ckpt
import bench.core.images as bimg
import bench.core.io as bio
import bench.core.npz as bnpz
from bench.core.data import ImageFolderImages, decode_rgb, load_rgb
from bench.core.errors import BenchError, CheckpointError, DataError, WriteError
from tasks.detection.coco_data import (
    HELDOUT_CAP,
    HELDOUT_FILES,
    coco_from_dict,
    heldout_size,
    heldout_split,
    make_coco_dataset,
    rle_string_counts,
    uncompressed_rle_counts,
    validate_coco,
    write_heldout_split,
)

# pycocotools 2.0.11 decode() warns under numpy 2 (its Cython __array__ lacks `copy`); not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
H, W = 64, 96
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco") / "data", n_train=16, n_val=4, image_size=(H, W), seed=1)


def _val(root) -> dict:
    return json.loads((root / "annotations" / "instances_val2017.json").read_text())


def _first(data, kind):
    """The first annotation whose segmentation is a polygon list / compressed RLE / uncompressed RLE."""
    for a in data["annotations"]:
        s = a["segmentation"]
        if (
            (kind == "polygon" and isinstance(s, list))
            or (kind == "compressed" and isinstance(s, dict) and isinstance(s["counts"], str))
            or (kind == "uncompressed" and isinstance(s, dict) and isinstance(s["counts"], list))
        ):
            return a
    raise AssertionError(f"no {kind} annotation in the generated set")


def _refused(tmp_path, data, name="bad.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))  # json.dumps writes NaN / Infinity as Python's json.load reads them
    with pytest.raises(DataError) as e:
        validate_coco(path, None, require_images=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


# --------------------------------------------------------------------------------------------------
# COCO annotations
# --------------------------------------------------------------------------------------------------
def test_polygon_with_1e308_coordinates_is_refused_before_pycocotools(coco_root, tmp_path):
    """The case that killed `bench det` with SIGSEGV inside pycocotools' rasteriser."""
    data = _val(coco_root)
    ann = _first(data, "polygon")
    ann["segmentation"][0][2:4] = [1e308, 1e308]
    msg = _refused(tmp_path, data)
    assert msg.endswith(
        f"annotation id {ann['id']} 'segmentation' polygon 0 point 1 (1e+308, 1e+308) lies far outside its "
        f"{W}x{H} image (allowed x -{W}..{2 * W}, y -{H}..{2 * H})"
    )


@pytest.mark.parametrize("value, shown", [(math.nan, "nan"), (math.inf, "inf")])
def test_non_finite_polygon(coco_root, tmp_path, value, shown):
    data = _val(coco_root)
    ann = _first(data, "polygon")
    ann["segmentation"][0][1] = value
    msg = _refused(tmp_path, data)
    assert f"annotation id {ann['id']} 'segmentation' polygon 0 holds a non-finite coordinate" in msg
    assert shown in msg


@pytest.mark.parametrize("bad", ["12.5", None, [1, 2], {"x": 1}])
def test_polygon_of_strings_or_other_non_numbers(coco_root, tmp_path, bad):
    data = _val(coco_root)
    ann = _first(data, "polygon")
    poly = ann["segmentation"][0]
    ann["segmentation"][0] = [*poly[:-1], bad]
    msg = _refused(tmp_path, data)
    assert msg.endswith(f"annotation id {ann['id']} 'segmentation' polygon 0 must hold numbers, got {bad!r}")


def test_garbage_compressed_rle_string(coco_root, tmp_path):
    data = _val(coco_root)
    ann = _first(data, "compressed")
    ann["segmentation"]["counts"] = "this is not RLE {~}"
    msg = _refused(tmp_path, data)
    assert msg.endswith(
        f"annotation id {ann['id']} 'segmentation' compressed RLE 'counts' is not a valid RLE string "
        "('this is not RLE {~}')"
    )


def test_compressed_rle_whose_runs_overrun_the_image(coco_root, tmp_path):
    """Valid characters, but runs summing past h*w: pycocotools' decoder would write past its buffer."""
    data = _val(coco_root)
    ann = _first(data, "compressed")
    ones = np.ones((H, W), np.uint8)
    over = mask_utils.encode(np.asfortranarray(np.concatenate([ones, ones])))["counts"].decode()  # 2*H*W pixels
    ann["segmentation"]["counts"] = over
    msg = _refused(tmp_path, data)
    assert msg.endswith(
        f"annotation id {ann['id']} 'segmentation' compressed RLE 'counts' cover {2 * H * W} pixels, "
        f"its {W}x{H} image has {H * W}"
    )


def test_uncompressed_rle_counts_past_the_image_and_negative(coco_root, tmp_path):
    data = _val(coco_root)
    ann = _first(data, "uncompressed")
    ann["segmentation"]["counts"] = ann["segmentation"]["counts"] + [5]
    assert _refused(tmp_path, data).endswith(
        f"annotation id {ann['id']} 'segmentation' RLE 'counts' cover {H * W + 5} pixels, its {W}x{H} image has {H * W}"
    )
    ann["segmentation"]["counts"] = [H * W + 7, -7]  # sums to h*w, but a negative run
    assert _refused(tmp_path, data).endswith(
        f"annotation id {ann['id']} 'segmentation' RLE 'counts' holds a negative run -7"
    )
    ann["segmentation"]["counts"] = [float(H * W)]
    assert _refused(tmp_path, data).endswith(
        f"annotation id {ann['id']} 'segmentation' RLE 'counts' must hold integers, got {float(H * W)!r}"
    )


@pytest.mark.parametrize("value", ["yes", 2, -1, 1.0, True, None])
def test_iscrowd_must_be_0_or_1(coco_root, tmp_path, value):
    data = _val(coco_root)
    ann = data["annotations"][0]
    ann["iscrowd"] = value
    assert _refused(tmp_path, data).endswith(f"annotation id {ann['id']} 'iscrowd' must be 0 or 1, got {value!r}")


@pytest.mark.parametrize("key", ["height", "width"])
@pytest.mark.parametrize("value", [0, -3, 64.0, "64", None, True])
def test_image_sizes_are_positive_integers(coco_root, tmp_path, key, value):
    data = _val(coco_root)
    img = data["images"][1]
    img[key] = value
    assert _refused(tmp_path, data).endswith(f"image id {img['id']} {key!r} must be a positive integer, got {value!r}")


def test_image_size_over_the_pixel_limit(coco_root, tmp_path):
    data = _val(coco_root)
    img = data["images"][0]
    img["height"] = img["width"] = 100_000  # 1e10 pixels: a mask of it would be 10 GB
    assert "is over the image pixel limit" in _refused(tmp_path, data)


@pytest.mark.parametrize(
    "bbox, fragment",
    [
        ([1.0, 2.0, math.inf, 3.0], "'bbox' must be 4 finite numbers"),
        ([1.0, 2.0, "3", 3.0], "'bbox' must be 4 finite numbers"),
        ([1e300, 2.0, 3.0, 3.0], "lies far outside its 96x64 image"),
        ([1.0, 2.0, 3.0, 1e12], "lies far outside its 96x64 image"),
    ],
)
def test_bbox_finite_and_near_the_image(coco_root, tmp_path, bbox, fragment):
    data = _val(coco_root)
    ann = data["annotations"][0]
    ann["bbox"] = bbox
    msg = _refused(tmp_path, data)
    assert f"annotation id {ann['id']} 'bbox' " in msg and fragment in msg


@pytest.mark.parametrize("area", [-1.0, math.nan, "12"])
def test_area_finite_and_non_negative(coco_root, tmp_path, area):
    data = _val(coco_root)
    ann = data["annotations"][0]
    ann["area"] = area
    assert f"annotation id {ann['id']} 'area' must be a finite number >= 0" in _refused(tmp_path, data)


def test_the_generated_and_the_fixed_rles_still_pass(coco_root):
    for split in ("train2017", "val2017"):
        s = validate_coco(coco_root / "annotations" / f"instances_{split}.json", coco_root / split)
        assert s["num_rle"] >= 1 and s["num_polygon"] >= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_rle_string_counts_match_pycocotools(h, w, seed):
    """Our Python decoder of compressed strings against pycocotools' encoder and an independent
    run-length count of the same mask."""
    mask = np.random.default_rng(seed).random((h, w)) < 0.4
    s = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert rle_string_counts(s) == uncompressed_rle_counts(mask)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=[chr(c) for c in range(48, 112)], min_size=1, max_size=12))
def test_any_string_the_validator_accepts_decodes_safely_in_pycocotools(s):
    """Random RLE strings: whatever passes the check decodes in pycocotools to a mask whose
    area is the sum of the odd runs (the reference); whatever fails never reaches it."""
    h, w = 3, 4
    counts = rle_string_counts(s)
    if counts is None or min(counts) < 0 or sum(counts) != h * w:
        return
    mask = mask_utils.decode({"size": [h, w], "counts": s.encode()})
    assert mask.shape == (h, w) and int(mask.sum()) == sum(counts[1::2])


def test_bench_det_refuses_the_1e308_polygon_in_one_line(coco_root, tmp_path):
    """The CLI path that crashed: `bench det` on a train file with 1e308 coordinates, as a real process."""
    import shutil

    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    _first(data, "polygon")["segmentation"][0][0] = 1e308
    ann_file.write_text(json.dumps(data))
    r = subprocess.run(
        [sys.executable, "-m", "bench.cli", "det", "--backbone", "random_vit_test_patch8", "--data-root", str(root)]
        + ["--out", str(tmp_path / "run"), "--results", str(tmp_path / "runs.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # library warnings aside
    assert len(lines) == 1 and lines[0].startswith(f"error: {ann_file}: annotation id "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists() and not (tmp_path / "runs.jsonl").exists()
    assert "lies far outside" in lines[0]


# --------------------------------------------------------------------------------------------------
# COCO held-out split
# --------------------------------------------------------------------------------------------------
def test_heldout_size_rule():
    assert [heldout_size(n) for n in (0, 1, 2, 3, 16, 25, 1000)] == [0, 0, 1, 1, 2, 2, 100]
    assert heldout_size(117_266) == HELDOUT_CAP == 5000  # COCO train2017's images with an object
    with pytest.raises(DataError):
        heldout_size(10, fraction=1.0)


def test_heldout_split_is_fixed_disjoint_and_covers_train(coco_root, tmp_path):
    ann = coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    train, held = heldout_split(ann)
    all_ids = sorted(img["id"] for img in data["images"])
    assert sorted(train + held) == all_ids and not set(train) & set(held)
    assert len(held) == 2  # round(0.1 * 16)
    with_objects = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    assert set(held) <= with_objects
    # the same carve every time (it does not depend on any run seed), another seed another carve
    assert heldout_split(ann) == (train, held)
    others = {tuple(heldout_split(ann, seed=s)[1]) for s in range(1, 8)}
    assert len(others | {tuple(held)}) > 1
    rng_order = np.random.default_rng(0).permutation(len(with_objects))[:2]
    assert held == sorted(sorted(with_objects)[i] for i in rng_order)  # the documented draw
    val_ids = {img["id"] for img in _val(coco_root)["images"]}
    assert not val_ids & set(held)


def test_write_heldout_split_files_are_valid_coco_of_train_images(coco_root, tmp_path):
    info = write_heldout_split(coco_root, tmp_path / "split")
    assert [Path(info["train_ann"]).name, Path(info["heldout_ann"]).name] == list(HELDOUT_FILES)
    train = validate_coco(info["train_ann"], info["image_dir"])
    held = validate_coco(info["heldout_ann"], info["image_dir"])
    assert (train["num_images"], held["num_images"]) == (info["num_train"], info["num_heldout"]) == (14, 2)
    original = validate_coco(coco_root / "annotations" / "instances_train2017.json", None, require_images=False)
    assert train["num_annotations"] + held["num_annotations"] == original["num_annotations"]
    assert train["categories"] == held["categories"] == original["categories"]
    held_ids = {img["id"] for img in held["dataset"]["images"]}
    assert all(a["image_id"] in held_ids for a in held["dataset"]["annotations"])
    assert not any(a["image_id"] in held_ids for a in train["dataset"]["annotations"])


# --------------------------------------------------------------------------------------------------
# Images: header-declared sizes are checked before decoding or reading
# --------------------------------------------------------------------------------------------------
def _jpeg_declaring(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A 16x16 JPEG whose SOF0 header is patched to declare ``width`` x ``height``."""
    Image.new(mode, (16, 16), 128).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything decodes or reads the whole file."""

    def boom(*a, **k):
        raise AssertionError("decoded or read before the size check")

    monkeypatch.setattr(bimg, "_torchvision_decode", boom)
    monkeypatch.setattr(bimg, "_load_rgb_pil", boom)
    monkeypatch.setattr(bimg, "_read_bytes", boom)


@pytest.mark.parametrize(
    "side", [20000, 10000]
)  # 2x past PIL's limit (its own error), and between 1x and 2x (a warning)
def test_huge_grey_jpeg_refused_before_decoding(tmp_path, no_decoding, side):
    path = _jpeg_declaring(tmp_path / "huge.jpg", side, side)
    for read in (decode_rgb, load_rgb):
        with pytest.raises(DataError) as e:
            read(path)
        assert str(e.value).startswith(f"{path}: image is ") and "over the pixel limit" in str(e.value)
    assert side * side > Image.MAX_IMAGE_PIXELS


def test_sparse_3gb_jpeg_is_not_read(tmp_path, no_decoding):
    path = tmp_path / "a_big.jpg"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(path, quality=90)
    with open(path, "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk blocks, no memory
    with pytest.raises(DataError) as e:
        decode_rgb(path)
    assert str(e.value) == (
        f"{path}: file is {3 << 30} bytes, more than a 16x16 image can need ({16 * 256 + (16 << 20)}); "
        "refused before reading it"
    )


def test_image_folder_skips_the_oversized_file_with_a_warning(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _jpeg_declaring(folder / "a_huge.jpg", 20000, 20000)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "b_ok.png")
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image .*a_huge\.jpg: image is .*over the pixel limit"):
        ds = ImageFolderImages(folder, lambda img: img)
    assert np.asarray(ds[0]).tolist() == np.asarray(load_rgb(folder / "b_ok.png")).tolist()


def test_normal_images_still_decode_identically(tmp_path):
    path = tmp_path / "ok.jpg"
    rgb = (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(40, 48, 3)
    Image.fromarray(rgb).save(path, quality=95)
    assert bimg.image_size(path) == (48, 40)
    assert torch.equal(decode_rgb(path), bimg.pil_to_uint8(load_rgb(path)))


# --------------------------------------------------------------------------------------------------
# .npz arrays: shapes read from the .npy headers before anything is inflated
# --------------------------------------------------------------------------------------------------
def _npz_declaring(path: Path, shape, dtype="|b1") -> Path:
    """An .npz whose member 'det_tp.npy' declares ``shape`` but holds 1 KB of deflated zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("ids.npy", "w") as f:
            np.lib.format.write_array(f, np.array(["1", "2"]))
        with z.open("det_tp.npy", "w") as f:
            header = {"descr": dtype, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(f, header)
            f.write(b"\0" * 1024)
    return path


def test_npz_declaring_3e9_values_is_refused_before_inflating(tmp_path, monkeypatch):
    path = _npz_declaring(tmp_path / "per_example.npz", (3_000_000_000,))
    assert bnpz.npz_sizes(path)["det_tp"] == ((3_000_000_000,), np.dtype(bool))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load before the size check"))
    with pytest.raises(DataError) as e:
        bnpz.load_npz(path)
    size = path.stat().st_size
    assert str(e.value) == (
        f"{path}: its arrays declare {3_000_000_000 + 2 * 4} bytes (largest 'det_tp': shape (3000000000,) bool) "
        f"in a {size}-byte file, over the limit ({bnpz.MAX_NPZ_BYTES} bytes, 100 x the file size); "
        "refused before inflating"
    )


def test_npz_ratio_limit_catches_a_smaller_bomb(tmp_path):
    path = _npz_declaring(tmp_path / "bomb.npz", (200_000_000,))  # 200 MB, under the 1 GiB cap
    with pytest.raises(DataError, match=r"declare 200000008 bytes"):
        bnpz.check_npz(path)


def test_npz_of_objects_is_refused_and_a_real_file_loads(tmp_path):
    obj = tmp_path / "obj.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match=r"member 'a.npy' holds Python objects"):
        bnpz.load_npz(obj)
    real = tmp_path / "real.npz"
    arrays = {"ids": np.array(["a", "b"]), "gt_count": np.arange(6).reshape(2, 3)}
    np.savez(real, **arrays)
    assert bnpz.check_npz(real) == 2 * 4 + 6 * 8
    out = bnpz.load_npz(real, names=["gt_count", "nope"])
    assert list(out) == ["gt_count"] and np.array_equal(out["gt_count"], arrays["gt_count"])
    (tmp_path / "not.npz").write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(DataError, match=r"not a readable \.npz file"):
        bnpz.load_npz(tmp_path / "not.npz")


# --------------------------------------------------------------------------------------------------
# Checkpoints: zip records declared far past the file's size are refused before torch.load
# --------------------------------------------------------------------------------------------------
def _deflated_copy(src: Path, dst: Path) -> Path:
    """``src`` (a torch.save zip) rewritten with every record deflated: the same checkpoint, a bomb."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            with zin.open(info) as fin, zout.open(info.filename, "w") as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
    return dst


def test_deflate_bomb_checkpoint_refused_before_torch_load(tmp_path, monkeypatch):
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.zeros(4 << 20)}}, plain)  # 16 MB of zeros
    bomb = _deflated_copy(plain, tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 200_000 < (16 << 20) < plain.stat().st_size
    # the premise: torch's reader does inflate deflated records (to the size the zip declares)
    assert torch.equal(torch.load(bomb, weights_only=True)["model"]["w"], torch.zeros(4 << 20))
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: pytest.fail("torch.load before the size check"))
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint_file(bomb)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {bomb} declares ") and msg.endswith("refused before inflating")
    assert f"in a {bomb.stat().st_size}-byte file" in msg and "data/0" in msg


def test_stored_checkpoints_still_load(tmp_path):
    sd = {"w": torch.arange(12.0).reshape(3, 4)}
    ckpt.save_atomic({"model": sd}, tmp_path / "ok.pth")
    assert torch.equal(ckpt.load_checkpoint_file(tmp_path / "ok.pth")["model"]["w"], sd["w"])


# --------------------------------------------------------------------------------------------------
# Full disk under the atomic writers
# --------------------------------------------------------------------------------------------------
def _fsync_enospc(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bio.os, "fsync", fsync)


def test_full_disk_keeps_the_previous_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    target = tmp_path / "results" / "table.csv"
    bio.atomic_write_text(target, "old\n")
    _fsync_enospc(monkeypatch)
    with pytest.raises(WriteError) as e:
        bio.atomic_write_text(target, "new\n")
    assert str(e.value) == (
        f"cannot write {target}: No space left on device; the disk is full or over quota (nothing was changed there)"
    )
    assert isinstance(e.value, BenchError) and isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]  # no temp file left


def test_full_disk_leaves_no_empty_folders(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _fsync_enospc(monkeypatch)
    with pytest.raises(WriteError):
        bio.atomic_write_json({"a": 1}, tmp_path / "out" / "a" / "b" / "x.json")
    assert list((tmp_path / "out").iterdir()) == []  # a/ and a/b/ were made for this write: gone
    with pytest.raises(WriteError):
        ckpt.save_atomic({"w": torch.zeros(3)}, tmp_path / "new" / "c.pth")
    assert not (tmp_path / "new").exists()


def test_other_errors_inside_the_block_pass_through(tmp_path):
    target = tmp_path / "deep" / "f.txt"
    with pytest.raises(ValueError, match="mine"):
        with bio.atomic_open(target) as f:
            f.write("half")
            raise ValueError("mine")
    assert not (tmp_path / "deep").exists()
    with pytest.raises(BenchError, match="is an existing file, not a folder"):
        (tmp_path / "file").write_text("x")
        bio.atomic_write_text(tmp_path / "file" / "y.txt", "z")


def test_a_real_write_past_the_file_size_limit(tmp_path):
    """A kernel-refused write (RLIMIT_FSIZE: EFBIG, as a quota would) in a child process: one line,
    the previous file intact, no temp file."""
    target = tmp_path / "log.json"
    target.write_text('{"old": true}')
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from bench.core.io import atomic_write_json\n"
        "from bench.core.errors import BenchError\n"
        "try:\n"
        f"    atomic_write_json({{'x': 'y' * 100000}}, {str(target)!r})\n"
        "except BenchError as e:\n"
        "    print(e); sys.exit(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stdout.strip() == (
        f"cannot write {target}: File too large; the disk is full or over quota (nothing was changed there)"
    )
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.json"]


# --------------------------------------------------------------------------------------------------
# Property: any value in any checked COCO field is refused in one line or is safe for pycocotools
# --------------------------------------------------------------------------------------------------
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, -1, 64, 96, 6143, 6144, 6145]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 0.5, 63.9, 95.9]),
    st.text(max_size=6),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=9),
    st.lists(st.lists(_SCALARS, min_size=6, max_size=10), min_size=1, max_size=2),  # polygons
    st.fixed_dictionaries(
        {
            "size": st.one_of(st.just([H, W]), _SCALARS),
            "counts": st.one_of(
                _SCALARS,
                st.lists(st.integers(-5, H * W + 5), max_size=5),
                st.text(alphabet=[chr(c) for c in range(40, 120)], max_size=10),
            ),
        }
    ),
)
_FIELDS = st.sampled_from(
    [("ann", "bbox"), ("ann", "segmentation"), ("ann", "iscrowd"), ("ann", "area"), ("img", "height"), ("img", "width")]
)


@settings(max_examples=150, deadline=None)
@given(field=_FIELDS, value=_VALUES, index=st.integers(0, 3))
def test_fuzzed_coco_fields_are_refused_or_safe(coco_root, tmp_path_factory, field, value, index):
    data = _val(coco_root)
    where, key = field
    entry = data["annotations" if where == "ann" else "images"][index]
    entry[key] = value
    path = tmp_path_factory.mktemp("fuzz") / "instances.json"
    path.write_text(json.dumps(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate boxes
            summary = validate_coco(path, None, require_images=False, skip_degenerate=False)
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
        return
    coco = coco_from_dict(summary["dataset"])
    for ann in summary["dataset"]["annotations"]:  # what mmdet / detectron2 / COCOeval do with them
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        if isinstance(ann["segmentation"], dict):  # the painted pixels are the odd runs
            counts = ann["segmentation"]["counts"]
            runs = counts if isinstance(counts, list) else rle_string_counts(counts)
            assert int(mask.sum()) == sum(runs[1::2])


def test_write_heldout_split_reuses_its_files_until_the_source_or_settings_change(coco_root, tmp_path):
    import shutil

    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    out = tmp_path / "split"
    first = write_heldout_split(root, out)
    stamp = [os.stat(first[k]).st_mtime_ns for k in ("train_ann", "heldout_ann")]
    assert write_heldout_split(root, out) == first  # same source, same settings: nothing rewritten
    assert [os.stat(first[k]).st_mtime_ns for k in ("train_ann", "heldout_ann")] == stamp
    other = write_heldout_split(root, out, seed=5)  # another seed: rewritten, recorded
    assert other["seed"] == 5 and json.loads((out / "heldout_split.json").read_text())["seed"] == 5
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"] = data["images"][:10]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in data["images"]}]
    ann.write_text(json.dumps(data))  # the source changed: carved again
    again = write_heldout_split(root, out, seed=5)
    assert again["num_train"] + again["num_heldout"] == 10


@pytest.mark.parametrize("shape", [(-1, 2**64), (-(2**34 - 1), 2**30), (-2, -3), (2**70,)])
def test_npz_headers_with_negative_or_absurd_dimensions_are_refused(tmp_path, shape):
    # found by the round-3 fuzzer: a negative dimension made the declared total negative, so it passed
    import zipfile

    from bench.core.npz import load_npz

    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    blob = b"\x93NUMPY\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little") + header + b" " * pad + b"\n"
    path = tmp_path / "per_example.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.npy", blob + b"\0" * 64)
    with pytest.raises(DataError, match=r"member 'a.npy' declares shape .* of float32, which no array has"):
        load_npz(path)


def test_a_long_zigzag_polygon_is_refused_before_pycocotools_rasterises_it(tmp_path):
    # found by the round-3 fuzzer: 1,806 points inside the allowed band on a 4000x4000 image made
    # pycocotools' rleFrPoly allocate gigabytes (SIGSEGV under a memory cap)
    import json

    from tasks.detection.coco_data import validate_coco

    h = w = 4000
    poly = [v for i in range(1806) for v in (-w if i % 2 else 2 * w, (i * 7) % h)]
    ann = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [dict(ann, segmentation=[poly])],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation id 5 'segmentation' polygon 0 has 1806 points tracing \d+ px"):
        validate_coco(path, None, require_images=False)
    ok = [10, 10, 3000, 10, 3000, 3000, 10, 3000] * 20  # a long but ordinary outline (80 points) passes
    path.write_text(json.dumps(dict(doc, annotations=[dict(ann, segmentation=[ok])])))
    validate_coco(path, None, require_images=False)
