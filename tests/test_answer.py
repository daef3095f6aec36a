"""The answer sentence: derived from the tables' own tests on a known store, its numbers
recomputed here with plain loops (and scipy for the seed t-tests)."""

import numpy as np
import pytest
from scipy import stats

from bench.core.results import ResultsStore, default_run_id
from bench.tables import answer_sentences, bootstrap_indices, build_tables, run_table

N = 400  # evaluation images
B = 1000  # resamples, as the tables use


def row(label, protocol, seed, top1, extra=None, init=None, backbone="vit_demo_patch8", sha=None):
    extra = extra or {}
    init = init or label
    return {
        "schema": 3,
        "run_id": default_run_id(
            "s", "inat2017", protocol, None, init, backbone, seed, extra, label=label, checkpoint_sha256=sha
        ),
        "suite": "s",
        "task": "inat2017",
        "protocol": protocol,
        "k": None,
        "init": init,
        "label": label,
        "backbone": backbone,
        "checkpoint_sha256": sha,
        "provenance": None,
        "seed": seed,
        "metrics": {"top1": top1},
        "status": "ok",
        "error": None,
        "iterations": 1,
        "wall_time_s": 1.0,
        "config_hash": "c",
        "code_version": "test",
        "device": "cpu",
        "date": "2024-01-01T00:00:00+00:00",
        "extra": extra,
        "deviations": [],
    }


def add_run(store, folder, label, protocol, seed, correct, **kw):
    name = f"{label}-{protocol}-{seed}.npz"
    np.savez(folder / name, ids=np.array([f"img{i:04d}" for i in range(N)]), correct=correct)
    store.append(row(label, protocol, seed, float(correct.mean() * 100), extra={"per_example": name}, **kw))


@pytest.fixture
def known(tmp_path):
    """Fine-tuned: mae clearly above random. Linear probe: mae = random up to 6 images of 400."""
    rng = np.random.default_rng(11)
    store = ResultsStore(tmp_path)
    runs = {}
    for seed in (0, 1):
        runs[("random", "finetune", seed)] = rng.random(N) < 0.45
        runs[("mae", "finetune", seed)] = rng.random(N) < 0.75
        base = rng.random(N) < 0.5
        runs[("random", "linear", seed)] = base
        near = base.copy()
        near[np.flatnonzero(~base)[:3]] = True  # +3 images for mae ...
        near[np.flatnonzero(base)[:3]] = False  # ... and -3: the same accuracy
        runs[("mae", "linear", seed)] = near
    for (label, protocol, seed), correct in runs.items():
        add_run(store, tmp_path, label, protocol, seed, correct)
    floor = rng.random(N) < 0.6
    add_run(store, tmp_path, "raw_pixels", "logreg", 0, floor, backbone="raw_pixels")
    return store, runs, floor


def seeds_images_difference(a_runs, b_runs):
    """mean(a) - mean(b), and the 95 % percentile interval of the seeds x images bootstrap, by
    loops: each resample draws the images (the same draw for every run) and each cell's seeds
    with replacement (cell a from generator 1, cell b from generator 2)."""
    idx = bootstrap_indices(N, B, 0)
    pick_a = np.random.default_rng(1).integers(0, len(a_runs), size=(B, len(a_runs)))
    pick_b = np.random.default_rng(2).integers(0, len(b_runs), size=(B, len(b_runs)))
    diffs = []
    for k in range(B):
        mean_a = np.mean([a_runs[j][idx[k]].mean() * 100 for j in pick_a[k]])
        mean_b = np.mean([b_runs[j][idx[k]].mean() * 100 for j in pick_b[k]])
        diffs.append(mean_a - mean_b)
    point = np.mean([r.mean() * 100 for r in a_runs]) - np.mean([r.mean() * 100 for r in b_runs])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return point, lo, hi


def test_answer_from_a_known_store(known):
    store, runs, floor = known
    sentences = answer_sentences(store.dataframe(), "inat2017", base_dir=store.path.parent)
    assert len(sentences) == 4  # fine-tuned, linear probe, the floors, the best learned cell vs the floor

    ft = seeds_images_difference(
        [runs[("mae", "finetune", s)] for s in (0, 1)], [runs[("random", "finetune", s)] for s in (0, 1)]
    )
    assert ft[1] > 0  # the known effect (about 30 points) is resolved
    assert sentences[0] == (
        f"iNat 2017 (ViT-demo/8), fine-tuned: mae vs random: {ft[0]:+.1f} points [{ft[1]:+.1f}, {ft[2]:+.1f}], "
        "better (paired bootstrap over the same images and seeds (400 images, 2 vs. 2 seeds), p<0.05)."
    )
    lp = seeds_images_difference(
        [runs[("mae", "linear", s)] for s in (0, 1)], [runs[("random", "linear", s)] for s in (0, 1)]
    )
    assert lp[0] == 0.0 and lp[1] < 0 < lp[2]
    assert sentences[1] == (
        f"iNat 2017 (ViT-demo/8), linear probe: mae vs random: +0.0 points [{lp[1]:+.1f}, {lp[2]:+.1f}], "
        "not distinguishable (paired bootstrap over the same images and seeds (400 images, 2 vs. 2 seeds))."
    )
    # floors: the floor's single-run bootstrap, then the best learned cell (mae fine-tuned) against it
    idx = bootstrap_indices(N, B, 0)
    lo, hi = np.percentile([floor[i].mean() * 100 for i in idx], [2.5, 97.5])
    assert sentences[2] == (
        f"iNat 2017, raw-pixel floors (top1): raw pixels (logistic regression) {floor.mean() * 100:.1f} "
        f"[{lo:.1f}, {hi:.1f}]."
    )
    mae = [runs[("mae", "finetune", s)] for s in (0, 1)]
    vs_floor = seeds_images_difference(mae, [floor])
    assert sentences[3] == (
        "iNat 2017, the best learned cell against the highest floor: mae (fine-tuned, ViT-demo/8) vs raw pixels "
        f"(logistic regression): {vs_floor[0]:+.1f} points [{vs_floor[1]:+.1f}, {vs_floor[2]:+.1f}], better "
        "(paired bootstrap over the same images and seeds (400 images, 2 vs. 1 seeds), p<0.05)."
    )

    # the table marks agree with the sentence: mae is 'best' fine-tuned, n.s. on the linear probe
    tables = build_tables(store.dataframe(), None, base_dir=store.path.parent)
    assert tables["table6_transfer_cls"].attrs["info"][("mae", "iNat 2017", "ViT-demo/8")]["mark"] == "best"
    assert tables["linear_probe"].attrs["info"][("mae", "iNat 2017", "ViT-demo/8")]["mark"] == "tie"


def test_bench_table_writes_answer_md(known, tmp_path):
    store, _, _ = known
    paths = run_table(store.path, tmp_path / "out", plots=False, reference_csv=None)
    answer = tmp_path / "out" / "answer.md"
    assert answer in paths
    text = answer.read_text()
    assert text.splitlines()[0].endswith(
        "each init is one checkpoint, so the intervals leave out pretraining-run variance)"
    )
    sentences = answer_sentences(store.dataframe(), "inat2017", base_dir=store.path.parent)
    for sentence in sentences:
        assert sentence in text  # no name here needs Markdown escaping
    # the runner may pass the rows themselves
    assert answer_sentences(store.rows(), "inat2017", base_dir=store.path.parent) == sentences


def test_seed_t_tests_without_per_example_files(tmp_path):
    store = ResultsStore(tmp_path)
    random_ft, mae_ft = [40.0, 42.5, 41.0], [60.0, 63.0, 61.5]
    for seed in range(3):
        store.append(row("random", "finetune", seed, random_ft[seed]))
        store.append(row("mae", "finetune", seed, mae_ft[seed]))
    store.append(row("random", "linear", 0, 30.0))
    store.append(row("random", "linear", 1, 31.0))
    for seed, value in ((5, 31.5), (6, 29.0), (7, 33.0)):  # other seeds: Welch
        store.append(row("mae", "linear", seed, value))
    ft, lp = answer_sentences(store.dataframe(), "inat2017")
    ci = stats.ttest_rel(mae_ft, random_ft).confidence_interval()
    diff = np.mean(mae_ft) - np.mean(random_ft)
    assert ft == (
        f"iNat 2017 (ViT-demo/8), fine-tuned: mae vs random: {diff:+.1f} points "
        f"[{ci.low:+.1f}, {ci.high:+.1f}], better (paired t-test over seeds, p<0.05)."
    )
    welch = stats.ttest_ind([31.5, 29.0, 33.0], [30.0, 31.0], equal_var=False)
    ci = welch.confidence_interval()
    assert welch.pvalue > 0.05
    assert lp == (
        f"iNat 2017 (ViT-demo/8), linear probe: mae vs random: {np.mean([31.5, 29.0, 33.0]) - 30.5:+.1f} points "
        f"[{ci.low:+.1f}, {ci.high:+.1f}], not distinguishable (Welch t-test over seeds)."
    )


def test_no_baseline_and_untestable_pairs_say_so(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row("mae", "finetune", 0, 60.0))
    store.append(row("beit", "finetune", 0, 55.0))
    assert answer_sentences(store.dataframe(), "inat2017") == [
        "iNat 2017 (ViT-demo/8), fine-tuned: no 'random' runs to compare with (beit, mae only)."
    ]
    assert answer_sentences(store.dataframe(), "inat2017", baseline_label="beit") == [
        "iNat 2017 (ViT-demo/8), fine-tuned: mae vs beit: +5.0 points, not tested "
        "(no per-example results for a paired bootstrap)."
    ]
    assert answer_sentences(store.dataframe(), "coco") == ["COCO: no finished runs."]
