"""Statistics in the tables: bootstrap intervals over evaluation images, paired comparisons, seed
intervals and tests, footnotes for deviations and searches, and store faults in one line."""

import json
import math
import os
import re
import signal

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.core.errors import BenchError
from bench.core.results import ResultsStore, default_run_id
from bench.tables import (
    PerExampleError,
    bootstrap_indices,
    bootstrap_interval,
    build_tables,
    full_metric,
    load_reference,
    metric_from_counts,
    paired_bootstrap,
    run_table,
    t_interval,
    table_to_long,
    to_latex,
    to_markdown,
)
from bench.tables.stats import _Cell, _compare, _resampled


def row(
    init,
    seed,
    metrics,
    task="inat2017",
    protocol="finetune",
    backbone="vit_base_patch16",
    extra=None,
    deviations=(),
    run_id=None,
    suite="demo",
):
    extra = extra or {}
    return {
        "schema": 2,
        "suite": suite,
        "task": task,
        "protocol": protocol,
        "k": None,
        "init": init,
        "run_id": run_id or default_run_id(suite, task, protocol, None, init, backbone, seed, extra),
        "backbone": backbone,
        "checkpoint_sha256": None,
        "seed": seed,
        "metrics": metrics,
        "status": "ok",
        "error": None,
        "iterations": 10,
        "wall_time_s": 1.0,
        "config_hash": "c",
        "code_version": "test",
        "device": "cpu",
        "date": "2024-01-01T00:00:00+00:00",
        "extra": extra,
        "deviations": list(deviations),
    }


def correct_file(path, correct, ids=None):
    correct = np.asarray(correct, dtype=bool)
    ids = np.array([f"img{i:04d}" for i in range(len(correct))]) if ids is None else np.asarray(ids)
    np.savez(path, ids=ids, correct=correct, correct5=np.ones_like(correct))
    return path


def cls_cell(tmp_path, name, correct, ids=None, seed=0):
    path = correct_file(tmp_path / f"{name}.npz", correct, ids)
    return _Cell([{"seed": seed, "value": float(np.mean(correct) * 100), "per_example": str(path)}], "top1", 1000)


# -- intervals --------------------------------------------------------------------------------


def test_bootstrap_interval_of_800_at_half_is_about_3_5_points():
    correct = np.zeros(800, dtype=bool)
    correct[::2] = True  # p = 0.5
    lo, hi = bootstrap_interval("top1", {"correct": correct})
    # normal approximation of the binomial: 1.96 * sqrt(0.25 / 800) * 100 = 3.46 points
    assert lo < 50.0 < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 800) * 100, abs=0.4)
    # a fixed seed: the same table twice
    assert bootstrap_interval("top1", {"correct": correct}) == (lo, hi)


def test_resampled_metric_matches_a_direct_loop_over_indices():
    rng = np.random.default_rng(3)
    n, c = 40, 5
    union = rng.integers(0, 50, size=(n, c))
    union[:, 4] = 0  # a class never present: left out of the mean
    inter = (union * rng.random((n, c))).astype(np.int64)
    arrays = {"intersect": inter, "union": union}
    # mIoU on all images: mean over present classes of sum(I) / sum(U)
    expected = np.mean(inter.sum(0)[:4] / union.sum(0)[:4]) * 100
    assert full_metric("mIoU", arrays) == pytest.approx(expected)
    idx = bootstrap_indices(n, samples=6, seed=1)
    counts = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    got = metric_from_counts("mIoU", arrays, counts)
    for k, i in enumerate(idx):
        u, t = union[i].sum(0), inter[i].sum(0)
        assert got[k] == pytest.approx(np.mean(t[u > 0] / u[u > 0]) * 100)
    correct = rng.random(n) < 0.3
    got = metric_from_counts("top1", {"correct": correct}, counts)
    assert got == pytest.approx([correct[i].mean() * 100 for i in idx])


def test_seed_interval_is_students_t():
    values = [50.0, 51.0, 53.0]
    lo, hi = t_interval(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)  # 4.303 * 1.528 / 1.732
    assert (lo, hi) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert hi - lo == pytest.approx(2 * 3.7947, abs=1e-3)


def test_cell_interval_contains_its_estimate_and_refuses_a_file_that_disagrees(tmp_path):
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    cell = cls_cell(tmp_path, "a", correct)
    assert cell.method == "images" and cell.lo < cell.mean < cell.hi
    path = correct_file(tmp_path / "b.npz", correct)
    wrong = _Cell([{"seed": 0, "value": 12.0, "per_example": str(path)}], "top1", 1000)
    assert math.isnan(wrong.lo) and "gives top1" in wrong.why_none and "the row 12.00" in wrong.why_none


# -- significance -----------------------------------------------------------------------------


def test_a_clearly_better_init_is_best_a_tied_one_is_not(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.random(800) < 0.5
    better = base | (rng.random(800) < 0.4)  # about 70 %
    assert _compare(cls_cell(tmp_path, "better", better), cls_cell(tmp_path, "base", base), 1000)[0] == "best"
    same_rate = base.copy()
    flip = rng.choice(800, 40, replace=False)
    same_rate[flip] = ~same_rate[flip]  # the same accuracy up to noise, on other images
    verdict, how = _compare(cls_cell(tmp_path, "x", same_rate), cls_cell(tmp_path, "base2", base), 1000)
    assert verdict == "tie" and how == "paired bootstrap over the same images"


def test_pairing_finds_a_small_consistent_gain_the_unpaired_intervals_hide(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.random(800) < 0.5
    gain = base.copy()
    wrong = np.flatnonzero(~base)[:16]
    gain[wrong] = True  # +2 points, the same images otherwise
    a, b = cls_cell(tmp_path, "gain", gain), cls_cell(tmp_path, "base", base)
    assert a.lo < b.hi  # the two single-run intervals overlap ...
    assert _compare(a, b, 1000)[0] == "best"  # ... but the paired difference is > 0
    lo, hi = paired_bootstrap("top1", a.data, b.data)
    assert 0 < lo < 2.0 < hi


def test_pairing_needs_the_same_ids_and_aligns_their_order(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.random(200) < 0.5
    better = base | (rng.random(200) < 0.5)
    ids = np.array([f"img{i:04d}" for i in range(200)])
    a = cls_cell(tmp_path, "a", better, ids)
    perm = rng.permutation(200)
    b = cls_cell(tmp_path, "b", base[perm], ids[perm])  # same images, other order
    b_sorted = cls_cell(tmp_path, "c", base, ids)
    assert paired_bootstrap("top1", a.data, b.data) == paired_bootstrap("top1", a.data, b_sorted.data)
    other = cls_cell(tmp_path, "d", base, np.array([f"other{i}" for i in range(200)]))
    with pytest.raises(PerExampleError, match="evaluated on different images"):
        paired_bootstrap("top1", a.data, other.data)
    verdict, how = _compare(a, other, 1000)
    assert verdict == "untested" and "different images" in how


def test_seed_level_test_marks_best_only_when_seeds_separate():
    def cell(values):
        return _Cell([{"seed": s, "value": v, "per_example": None} for s, v in enumerate(values)], "top1", 1000)

    assert _compare(cell([70.0, 71.0, 70.5]), cell([60.0, 61.5, 60.2]), 1000)[0] == "best"
    verdict, how = _compare(cell([70.0, 62.0, 66.0]), cell([65.0, 64.0, 66.5]), 1000)
    assert verdict == "tie" and how == "paired t-test over seeds"
    assert _compare(cell([70.0, 71.0]), cell([60.0]), 1000)[0] == "untested"


# -- the tables through the store ---------------------------------------------------------------


@pytest.fixture
def demo_store(tmp_path):
    """A demo-like store: per-example files relative to the store's folder, a search with its
    candidates, deviations, and a detection run without per-image AP."""
    folder = tmp_path / "store"
    (folder / "runs").mkdir(parents=True)
    store = ResultsStore(folder)
    rng = np.random.default_rng(5)
    truth = {"mae": rng.random(800) < 0.8, "random": rng.random(800) < 0.45}
    truth["supervised"] = truth["random"].copy()
    # +0.5 points net on the same images: 10 gained, 6 lost (McNemar p = 0.45): a tie
    truth["supervised"][np.flatnonzero(~truth["random"])[:10]] = True
    truth["supervised"][np.flatnonzero(truth["random"])[:6]] = False
    common = ["smoke scale", "generated data"]
    for init, correct in truth.items():
        correct_file(folder / "runs" / f"{init}.npz", correct)
        extra = {"per_example": f"runs/{init}.npz", "num_classes": 10}
        devs = common + (["epochs 10 < paper 90"] if init == "mae" else [])
        if init == "mae":
            extra["search"] = {
                "grid": {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 0.05]},
                "chosen": {"lr": 0.001, "weight_decay": 0.05},
                "select_on": "heldout",
                "metric": "top1",
                "failed": ["lr=0.01,weight_decay=0.0"],
            }
        store.append(
            row(
                init, 0, {"top1": float(correct.mean() * 100)}, extra=extra, deviations=devs, backbone="vit_demo_patch8"
            )
        )
    for lr in (0.1, 0.01):  # the search's candidates: never shown
        store.append(
            row(
                "mae",
                0,
                {"top1": 99.0},
                extra={"search_role": "candidate", "lr": lr},
                run_id=f"cand{lr}",
                deviations=common,
                backbone="vit_demo_patch8",
            )
        )
    store.append(
        row("mae", 0, {"APbox": 20.0, "APmask": 18.0}, task="coco", protocol="maskrcnn_fpn", deviations=common)
    )
    return store, truth


def test_demo_store_tables_mark_best_ties_and_footnotes(demo_store, tmp_path):
    store, truth = demo_store
    out = tmp_path / "out"
    run_table(store.path, out, plots=False)
    tables = build_tables(store.dataframe(), load_reference(), base_dir=store.path.parent)
    t6 = tables["table6_transfer_cls"]
    assert t6.loc["mae", ("iNat 2017", "ViT-demo/8", "mean")] == pytest.approx(truth["mae"].mean() * 100)
    info = t6.attrs["info"]
    assert info[("mae", "iNat 2017", "ViT-demo/8")]["mark"] == "best"
    assert info[("mae", "iNat 2017", "ViT-demo/8")]["interval"] == "bootstrap over 800 images"
    assert info[("random", "iNat 2017", "ViT-demo/8")]["mark"] == ""

    md = (out / "table6_transfer_cls.md").read_text()
    mae = next(line for line in md.splitlines() if line.startswith("| mae |"))
    assert re.match(r"\| mae \| \*\*\d+\.\d\*\* \[\d+\.\d, \d+\.\d\]<sup>[a-z],[a-z]</sup> \|", mae)
    assert "99.0" not in md  # candidates left out
    assert (
        "hyperparameters chosen by a search (grid of 4 over lr x weight_decay; chosen lr=0.001, "
        "weight_decay=0.05; selected on heldout by top1; 1 candidate(s) failed)"
    ) in md
    assert "deviation from the paper's protocol: epochs 10 < paper 90" in md
    assert "Every run here departs from the paper's protocol: generated data; smoke scale." in md
    assert (
        "The paper has no number for ViT-demo/8 (its columns here: ViT-B, ViT-H, ViT-H448, "
        "ViT-L), so no paper column is shown for it."
    ) in md
    assert "(paper)" not in md
    assert "Prev best (paper, Table 6" in md and "iNat 2017 75.4 (note " in md

    # supervised and random: top two are 0.5 points apart on the same images -> a tie
    only_two = build_tables(store.dataframe(init=["random", "supervised"]), None, base_dir=store.path.parent)[
        "table6_transfer_cls"
    ]
    marks = {
        init: only_two.attrs["info"][(init, "iNat 2017", "ViT-demo/8")]["mark"] for init in ("random", "supervised")
    }
    assert marks == {"random": "tie", "supervised": "tie"}
    # "not distinguishable" in words, never the approximately-equal sign
    md, tex = to_markdown(only_two), to_latex(only_two)
    assert re.search(r"\| supervised \| 44\.2 \[\d+\.\d, \d+\.\d\] n\.s\.", md) and " n.s." in tex
    assert "n.s.: the top two are not distinguishable by that test" in md
    assert "\u2248" not in md and r"\approx" not in tex

    coco = (out / "table4_coco.md").read_text()
    assert "no interval: the run recorded no per-example file (extra.per_example)" in coco  # APbox
    assert "no interval: a single run of a metric without per-image arrays (COCO APmask)" in coco

    long = pd.read_csv(out / "table6_transfer_cls.csv")
    mae_row = long[long["init"] == "mae"].iloc[0]
    assert mae_row["mark"] == "best" and mae_row["ci_low"] < mae_row["mean"] < mae_row["ci_high"]
    assert mae_row["ci_low"] == round(mae_row["ci_low_raw"], 1)


def test_plots_draw_intervals_chance_and_deviation_note(demo_store, tmp_path):
    from matplotlib.figure import Figure

    from bench.tables import plot_tables
    from bench.tables.plots import _errorbars

    store, _ = demo_store
    paths = plot_tables(store.dataframe(), tmp_path / "plots", base_dir=store.path.parent)
    assert {p.name for p in paths} == {"bars_inat2017_finetune.png", "bars_coco_maskrcnn_fpn.png"}
    ax = Figure().add_subplot(1, 1, 1)
    _errorbars(ax, [0, 1], [(50.0, math.nan, math.nan), (60.0, 57.0, 62.0)], fmt="none")
    (bars,) = ax.containers  # one error bar: none for the cell without an interval
    segments = bars.lines[2][0].get_segments()
    assert len(segments) == 1 and np.allclose(segments[0], [[1, 57.0], [1, 62.0]])


# -- store faults (issue #16) -------------------------------------------------------------------


def test_a_bad_img_size_is_one_line_naming_store_and_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row("mae", 0, {"top1": 50.0}))
    store.append(row("mae", 1, {"top1": 50.0}, extra={"img_size": "big"}))
    with pytest.raises(BenchError) as e:
        run_table(store.path, tmp_path / "out", plots=False)
    assert str(e.value) == (
        f"results store {store.path} line 2: row key 'extra' entry 'img_size' "
        "must be a whole number of pixels, got 'big'"
    )
    assert not (tmp_path / "out").exists()


def test_a_folder_or_fifo_as_the_store_is_one_line_and_never_hangs(tmp_path):
    folder_store = tmp_path / "a" / "runs.jsonl"
    folder_store.mkdir(parents=True)
    with pytest.raises(BenchError, match=r"^results store .*a/runs\.jsonl is a folder, not a regular file$"):
        run_table(folder_store, tmp_path / "out")
    fifo = tmp_path / "b" / "runs.jsonl"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO store hung"))
    signal.alarm(10)
    try:
        with pytest.raises(BenchError, match=r"is a FIFO, not a regular file$"):
            run_table(fifo.parent, tmp_path / "out")
        with pytest.raises(BenchError, match=r"is a FIFO, not a regular file$"):
            ResultsStore(fifo).append(row("mae", 0, {"top1": 1.0}))
    finally:
        signal.alarm(0)


def test_schema_1_rows_make_tables_without_deviation_notes(tmp_path):
    store = ResultsStore(tmp_path)
    old = row("mae", 0, {"top1": 50.0})
    del old["deviations"]
    old["schema"] = 1
    store.path.write_text(json.dumps(old) + "\n")
    tables = build_tables(store.dataframe(), load_reference())
    long = table_to_long(tables["table6_transfer_cls"])
    assert list(long["mean"]) == [50.0]
    assert "departs from the paper's protocol" not in to_markdown(tables["table6_transfer_cls"])


def test_chunked_resamples_are_the_rows_of_one_index_matrix():
    rng = np.random.default_rng(7)
    n = 1_000_003 // 100  # 10000 images: 500 rows per chunk, so two chunks for 1000 resamples
    correct = rng.random(n) < 0.6
    idx = bootstrap_indices(n, samples=1000, seed=0)
    assert _resampled("top1", {"correct": correct}, 1000, 0) == pytest.approx(correct[idx].mean(1) * 100)


def _coco(seed, n_images=30, quality=0.8):
    """A small COCO set and detections that find each box with probability ``quality``."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "height": 100, "width": 100} for i in range(n_images)]
    anns, dets = [], []
    for img in images:
        for _ in range(2):
            x, y = rng.uniform(0, 60, 2)
            box = [float(x), float(y), 30.0, 30.0]
            cat = int(rng.integers(1, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": box,
                    "area": 900.0,
                    "iscrowd": 0,
                }
            )
            if rng.random() < quality:
                dets.append(
                    {
                        "image_id": img["id"],
                        "category_id": cat,
                        "score": float(rng.random()),
                        "bbox": [box[0] + float(rng.normal(0, 2)), box[1], 30.0, 30.0],
                    }
                )
            else:  # a false positive
                dets.append(
                    {
                        "image_id": img["id"],
                        "category_id": cat,
                        "score": float(rng.random()),
                        "bbox": [float(x) + 40, float(y), 20.0, 20.0],
                    }
                )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, dets


def test_detection_apbox_bootstraps_over_images_from_cocoeval_matches(tmp_path):
    pytest.importorskip("pycocotools")
    from tasks.detection.evaluation import coco_evaluate, write_per_example

    gt, good = _coco(0, quality=0.95)
    _, bad = _coco(0, quality=0.5)  # the same images, worse detections
    cells = {}
    for name, dets in (("good", good), ("bad", bad)):
        apbox = coco_evaluate(gt, dets, ("bbox",))["APbox"]  # pycocotools: the independent reference
        path = write_per_example(tmp_path / f"{name}.npz", gt, dets)
        cells[name] = _Cell([{"seed": 0, "value": apbox, "per_example": str(path)}], "APbox", 200)
        assert full_metric("APbox", cells[name].data[1]) == pytest.approx(apbox, abs=1e-9)
        assert cells[name].method == "images" and cells[name].lo < apbox < cells[name].hi
    assert _compare(cells["good"], cells["bad"], 200)[0] == "best"


# -- intervals with few seeds, plots, faults while writing (issues 20, 24) ----------------------


def test_two_seeds_get_a_seeds_x_images_bootstrap_not_a_clipped_t_interval(tmp_path):
    rng = np.random.default_rng(8)
    n = 500
    runs = [rng.random(n) < 0.27, rng.random(n) < 0.30]  # the demo's case: about 27 % and 2 seeds
    records = []
    for seed, correct in enumerate(runs):
        path = correct_file(tmp_path / f"s{seed}.npz", correct)
        records.append({"seed": seed, "value": float(correct.mean() * 100), "per_example": str(path)})
    cell = _Cell(records, "top1", 1000)
    assert cell.method == "seeds x images"
    # by loops: each resample draws the images once for both seeds, and the 2 seeds with replacement
    idx = bootstrap_indices(n, 1000, 0)
    pick = np.random.default_rng(1).integers(0, 2, size=(1000, 2))
    means = [np.mean([runs[s][idx[k]].mean() * 100 for s in pick[k]]) for k in range(1000)]
    assert (cell.lo, cell.hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert 0 < cell.lo < cell.mean < cell.hi < 100 and cell.hi - cell.lo < 15  # not [0.0, 72.1]
    lo_t, hi_t = t_interval([r["value"] for r in records])
    assert hi_t - lo_t > cell.hi - cell.lo  # the 2-seed t-interval (t = 12.7) is far wider


def test_a_t_interval_past_0_100_is_not_shown_clipped():
    def cell(values):
        return _Cell([{"seed": s, "value": v, "per_example": None} for s, v in enumerate(values)], "top1", 1000)

    wide = cell([10.0, 40.0])  # t(0.975, 1) * 21.2 / sqrt(2) = 190: past both ends
    assert math.isnan(wide.lo) and wide.method == ""
    assert "t-interval [-165.6, 215.6] passes the metric's 0-100 range" in wide.why_none
    narrow = cell([50.0, 51.0])
    assert narrow.method == "seeds" and (narrow.lo, narrow.hi) == pytest.approx((50.5 - 6.353, 50.5 + 6.353), abs=1e-3)


def test_plot_legends_need_two_entries_and_footers_wrap():
    from matplotlib.figure import Figure

    from bench.tables.plots import _footer, _legend

    ax = Figure(figsize=(4, 3)).add_subplot(1, 1, 1)
    ax.bar([0, 1], [1, 2], label="ViT-B")
    _legend(ax)
    assert ax.get_legend() is None  # one series: nothing to tell apart
    ax.axhline(1.5, label="chance")
    _legend(ax)
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["ViT-B", "chance"]

    phrases = [f"drop_path 0.{i} != paper 0.{i + 1}" for i in range(12)]
    sel = pd.DataFrame([{"deviations": phrases, "extra": {}}])
    fig = ax.figure
    _footer(fig, sel)
    text = fig.texts[-1].get_text()
    width = int(4 * 17)
    assert all(len(line) <= width for line in text.splitlines())
    assert "drop_path 0.11 \u2260 paper 0.12" in text.replace("\n", " ")  # wrapped, not cut off; != typeset
    assert "..." not in text


def test_a_full_disk_while_writing_leaves_no_folder_and_no_tables(demo_store, tmp_path, monkeypatch):
    import errno

    import bench.tables.cli as table_cli

    store, _ = demo_store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(table_cli, "plot_tables", full)  # the tables are written, then the disk fills
    out = tmp_path / "new" / "out"
    with pytest.raises(BenchError) as e:
        run_table(store.path, out)
    assert str(e.value) == f"{out}: cannot write the tables (No space left on device); nothing was changed there"
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    (existing / "table6_transfer_cls.md").write_text("the previous table")
    with pytest.raises(BenchError):
        run_table(store.path, existing)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt", "table6_transfer_cls.md"]
    assert (existing / "table6_transfer_cls.md").read_text() == "the previous table"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    monkeypatch.undo()
    paths = run_table(store.path, existing)  # the rerun writes everything
    assert (existing / "answer.md") in paths and all(p.parent == existing and p.is_file() for p in paths)
