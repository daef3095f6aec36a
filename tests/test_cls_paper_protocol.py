"""The classification task against the paper's protocol (issues #15, #17): the linear probe trains on
augmented images by default, rows list their departures from the protocol files, held-out selection
never reads val, per-example results reproduce the row, the digits task, a torch-free registry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError, DataError
from tasks.classification import config as C
from tasks.classification.datasets import heldout_split, make_image_folder, read_splits

ROOT = Path(__file__).resolve().parents[1]
TEST_BB = "random_vit_test_patch8"
TINY = {"batch_size": 8, "eval_batch_size": 16, "num_workers": 0, "warmup_epochs": 0.0}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # conftest.py
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 3 classes x 20 train / 4 val images, 32 px
    return make_image_folder(
        tmp_path_factory.mktemp("cls") / "d",
        n_train_per_class=20,
        n_val_per_class=4,
        num_classes=3,
        image_size=32,
        seed=0,
    )


@pytest.mark.parametrize(
    "protocol,arch,k",
    [
        ("linear", "vit_base_patch16", None),
        ("linear", "vit_large_patch16", None),
        ("linear", "vit_huge_patch14", None),
        ("finetune", "vit_base_patch16", None),
        ("partial", "vit_large_patch16", 0),
        ("partial", "vit_large_patch16", 4),
    ],
)
def test_paper_configs_have_no_deviations_and_changes_are_named(protocol, arch, k):
    cfg = C.load_config(protocol, arch, k)
    assert C.paper_deviations(cfg, protocol, arch, k) == []
    changed = C.apply_overrides(dict(cfg), {"epochs": 50, "batch_size": 256, "weight_decay": 0.3})
    assert C.paper_deviations(changed, protocol, arch, k)[:3] == [
        f"epochs 50 < paper {cfg['epochs']:g}",
        f"batch 256 < paper {cfg['batch_size']}",
        f"weight_decay 0.3 != paper {cfg['weight_decay']:g}",
    ]
    if C.recipe(protocol, k) == "linear":  # Table 10: 90 epochs, batch 16384, augmented images
        assert (cfg["epochs"], cfg["batch_size"], cfg["cache_features"]) == (90, 16384, False)
        cached = C.apply_overrides(dict(cfg), {"cache_features": True})
        assert C.paper_deviations(cached, protocol, arch, k) == ["cached features (no augmentation)"]


def test_linear_probe_trains_on_random_resized_crops_and_flips():
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    from tasks.classification import protocols as P

    tf = P.train_transform(C.load_config("linear", "vit_base_patch16"), 224)
    kinds = [type(t) for t in tf.transforms]
    assert kinds[:2] == [RandomResizedCropAndInterpolation, T.RandomHorizontalFlip], kinds
    assert tf.transforms[0].scale == (0.08, 1.0) and tf.transforms[1].p == 0.5
    assert not any("RandAug" in k.__name__ or "Erasing" in k.__name__ or "ColorJitter" in k.__name__ for k in kinds)


def test_overrides_are_checked():
    cfg = C.load_config("finetune", "vit_base_patch16")
    with pytest.raises(BenchError, match=r"overrides: unknown key 'lrr'"):
        C.apply_overrides(dict(cfg), {"lrr": 0.1})
    with pytest.raises(BenchError, match=r"overrides: key 'weight_decay' must be float"):
        C.apply_overrides(dict(cfg), {"weight_decay": "big"})
    with pytest.raises(BenchError, match=r"overrides: key 'epochs' must be > 0"):
        C.apply_overrides(dict(cfg), {"epochs": 0})


def test_heldout_split_is_stratified_disjoint_and_fixed(tiny):
    train, val = read_splits("folder", tiny)
    rest, held = heldout_split(train)
    assert len(held) == 3 * 2 and len(rest) == 3 * 18  # round(0.1 * 20) per class
    assert np.bincount(held.labels).tolist() == [2, 2, 2]
    names = lambda s: {os.path.normpath(p) for p, _ in s.samples}  # noqa: E731
    assert names(held) | names(rest) == names(train)
    assert not names(held) & names(rest) and not names(held) & names(val)
    assert heldout_split(train)[1].samples == held.samples  # no dependence on any run seed
    # a class with one image stays in training; nothing to hold out at all is an error
    one = type(train)([train.samples[0], train.samples[-1]], train.classes, "t")
    with pytest.raises(DataError, match="no class has 2 or more images"):
        heldout_split(one)


def _run(tiny, tmp_path, name, **kw):
    from tasks.classification.run import run_classification

    return run_classification(
        "linear", "folder", tiny, TEST_BB, None, out_dir=tmp_path / name, config=TINY, epochs=1, progress=False, **kw
    )


def test_heldout_run_reports_the_heldout_part_and_per_example_results(tiny, tmp_path):
    train, _ = read_splits("folder", tiny)
    held = heldout_split(train)[1]
    rows = [
        _run(tiny, tmp_path, f"s{seed}", seed=seed, select="heldout", overrides={"lr": 1.0, "weight_decay": 0.0})
        for seed in (0, 1)
    ]
    for row in rows:
        ex = row["extra"]
        assert (ex["select"], ex["heldout_size"], ex["n_val"], ex["n_train"]) == ("heldout", 6, 6, 54)
        assert row["iterations"] == 54 // 8 and ex["lr"] == 1.0
        # the per-example arrays are the held-out images and reproduce the row exactly
        data = np.load(ex["per_example"])
        assert Path(ex["per_example"]).is_absolute() and Path(ex["per_example"]).parent == Path(ex["out_dir"])
        assert data["ids"].tolist() == [os.path.relpath(p, tiny) for p, _ in held.samples]
        assert data["correct"].dtype == bool and data["correct5"].shape == (6,)
        assert row["metrics"]["top1"] == 100.0 * data["correct"].sum() / 6
        assert row["metrics"]["top5"] == 100.0 * data["correct5"].sum() / 6 == 100.0  # 3 classes: top-5 is all
        assert "cached features (no augmentation)" not in row["deviations"]
        assert "epochs 1 < paper 90" in row["deviations"] and "base lr 32 != paper 0.1" in row["deviations"]
        assert not (Path(ex["out_dir"]) / "features-train.pth").exists()  # the augmented, uncached probe
    # the normal run on val: its per-example ids are the val images, and it may not reuse a selection folder
    row = _run(tiny, tmp_path, "val", overrides={"cache_features": True})
    data = np.load(row["extra"]["per_example"])
    assert data["ids"].tolist() == sorted(data["ids"].tolist()) and len(data["ids"]) == 12
    assert all(i.startswith("val" + os.sep) for i in data["ids"])
    assert row["metrics"]["top1"] == 100.0 * data["correct"].sum() / 12
    assert row["extra"]["select"] is None and "heldout_size" not in row["extra"]
    assert row["deviations"][0] == "cached features (no augmentation)"
    with pytest.raises(BenchError, match="other settings"):
        _run(tiny, tmp_path, "s0", seed=0, overrides={"lr": 1.0, "weight_decay": 0.0})
    with pytest.raises(BenchError, match="select must be None or 'heldout'"):
        _run(tiny, tmp_path, "x", select="val")


def test_digits_task_generates_the_labelled_and_eval_digits(tmp_path):
    from sklearn.datasets import load_digits

    from bench.core.data import DIGITS_PER_CLASS, digits_split
    from tasks.registry import get_task

    spec = get_task("digits")
    assert spec.img_size == 64 and spec.runnable and spec.heldout and "lr" in spec.search_keys
    assert set(spec.generator_options()) == {"n_train_per_class", "n_val_per_class", "num_classes", "image_size"}
    root = spec.generate(tmp_path / "digits")
    train, val = spec.reader(root)
    assert (len(train), len(val), train.num_classes) == (
        10 * DIGITS_PER_CLASS["labelled"],
        10 * DIGITS_PER_CLASS["eval"],
        10,
    )
    assert train.classes == [str(d) for d in range(10)]
    target = load_digits().target
    index = lambda s: [int(Path(p).stem) for p, _ in s.samples]  # noqa: E731  file name = index in load_digits()
    for split, name in ((train, "labelled"), (val, "eval")):
        assert sorted(index(split)) == sorted(digits_split(name)[2].tolist())
        assert [target[i] for i in index(split)] == split.labels  # labels are the real digits
    pretrain = set(digits_split("pretrain")[2].tolist())
    assert (
        not pretrain & set(index(train)) and not pretrain & set(index(val)) and not set(index(train)) & set(index(val))
    )
    # the pixels are the Digits images (64 px RGB)
    x, _, idx = digits_split("labelled")
    first = int(idx[0])
    path = next(p for p, _ in train.samples if int(Path(p).stem) == first)
    assert np.array_equal(np.asarray(Image.open(path)), x[0].permute(1, 2, 0).numpy())
    # the options take a subset of the same images, like the other generators' options
    small = spec.reader(
        spec.generate(tmp_path / "small", n_train_per_class=3, n_val_per_class=2, num_classes=4, image_size=16)
    )
    assert [len(s) for s in small] == [12, 8] and small[0].classes == ["0", "1", "2", "3"]
    assert set(index(small[0])) <= set(index(train)) and set(index(small[1])) <= set(index(val))
    assert Image.open(small[0].samples[0][0]).size == (16, 16)
