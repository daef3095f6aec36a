"""``bench perf det --agreement`` (bench/perf/detection.py) at its tiniest: 2 seeds x 2 engines, a few
iterations. The report's numbers are recomputed here from the runs' rows and the engines' own log
files (scipy's t quantile, a plain JSON parse), never taken from the code under test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.core.errors import BenchError

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("detectron2", "mmdet", "scipy")),
    reason="the agreement benchmark trains on both engines (bash scripts/setup.sh installs them)",
)


def _t_interval(values):
    from scipy import stats

    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def _fg_from_log(row) -> float:
    """The last quarter of the run's logged fg accuracies (%), read straight from the engine's file."""
    log = Path(row["extra"]["log_file"])
    if row["extra"]["engine"] == "detectron2":
        lines = (log.parent / "metrics.json").read_text().splitlines()
        pairs = [(e["iteration"] + 1, 100 * e["fast_rcnn/fg_cls_accuracy"]) for e in map(json.loads, lines)]
    else:
        lines = (log.parent / "vis_data" / f"{log.stem}.json").read_text().splitlines()
        pairs = [(e["iter"], e["fg_acc"]) for e in map(json.loads, lines) if "fg_acc" in e]
    return float(np.mean([v for it, v in pairs if it > 0.75 * row["iterations"]]))


def _parser():
    import argparse

    from bench.perf.cli import add_perf_arguments

    return add_perf_arguments(argparse.ArgumentParser())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``bench perf det --agreement`` through the command's own path; the report it wrote."""
    import torch

    from bench.perf.cli import perf_main

    out = tmp_path_factory.mktemp("agree")
    argv = ["det", "--agreement", "--seeds", "2", "--train-iters", "4", "--train-images", "2", "--out", str(out)]
    argv += ["--mmdet-options", f"{POLY2MASK}=False"]  # one setting swapped in mmdet's runs only
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert perf_main(_parser().parse_args(argv)) == 0
    finally:
        torch.set_num_threads(n)
    return json.loads((out / "agreement.json").read_text()), out


POLY2MASK = "train_dataloader.dataset.pipeline.1.poly2mask"  # LoadAnnotations: polygon mask targets


def test_a_swapped_setting_reaches_only_its_engines_runs_and_the_report_says_so(report):
    from mmengine.config import Config

    rep, out = report
    assert rep["setting"]["swaps"] == {"mmdet": {POLY2MASK: False}}
    for seed in (0, 1):
        (saved,) = (out / f"mmdet-s{seed}").glob("*.py")  # the config mmengine ran, as it saved it
        load = Config.fromfile(str(saved)).train_dataloader.dataset.pipeline[1]
        assert load["type"] == "LoadAnnotations" and load["poly2mask"] is False
        assert "poly2mask" not in (out / f"detectron2-s{seed}" / "config.yaml").read_text()
    from bench.perf.detection import agreement_table

    assert f"swapped in the mmdet runs only: {POLY2MASK}=False" in agreement_table(rep)


def test_report_numbers_come_from_the_runs_rows(report):
    rep, out = report
    rows = rep["rows"]
    assert [(r["extra"]["engine"], r["seed"]) for r in rows] == [
        ("mmdet", 0),
        ("detectron2", 0),
        ("mmdet", 1),
        ("detectron2", 1),
    ]
    assert all(r["iterations"] == 4 and r["protocol"] == "maskrcnn_fpn" and r["init"] == "random" for r in rows)
    # the same generated set for every run
    assert len({json.dumps(r["extra"].get("data"), sort_keys=True) for r in rows}) == 1
    assert rep["complete"] and rep["setting"]["seeds"] == 2 and rep["setting"]["iters"] == 4
    for run, row in zip(rep["runs"], rows):
        assert run["APbox"] == row["metrics"]["APbox"] and run["APmask"] == row["metrics"]["APmask"]
        assert run["fg_acc"] == pytest.approx(_fg_from_log(row), abs=1e-9)
        assert 0 <= run["fg_acc"] <= 100
    for eng in ("mmdet", "detectron2"):
        mine = [r for r in rows if r["extra"]["engine"] == eng]
        e = rep["engines"][eng]
        assert e["seeds"] == [0, 1]
        for metric in ("APbox", "APmask"):
            values = [r["metrics"][metric] for r in mine]
            mean, lo, hi = _t_interval(values)
            assert e[metric]["mean"] == pytest.approx(mean, abs=1e-9)
            if values[0] != values[1]:  # two equal values: a zero-width interval
                assert (e[metric]["lo"], e[metric]["hi"]) == pytest.approx((lo, hi), abs=1e-9)
            assert e[metric]["min"] == min(values)
        fg = [_fg_from_log(r) for r in mine]
        assert e["fg_acc"]["mean"] == pytest.approx(np.mean(fg)) and e["fg_acc"]["min"] == pytest.approx(min(fg))
    for metric in ("APbox", "APmask"):
        a, b = rep["engines"]["mmdet"][metric], rep["engines"]["detectron2"][metric]
        assert rep["overlap"][metric] == (max(a["lo"], b["lo"]) <= min(a["hi"], b["hi"]))
        x, y = ([r["metrics"][metric] for r in rows if r["extra"]["engine"] == e] for e in ("mmdet", "detectron2"))
        d = rep["difference"][metric]
        assert d["mean"] == pytest.approx(np.mean(x) - np.mean(y), abs=1e-9)
        if np.var(x) + np.var(y) > 0:  # Welch's test, by scipy
            from scipy import stats

            welch = stats.ttest_ind(x, y, equal_var=False)
            assert d["p"] == pytest.approx(welch.pvalue, abs=1e-9)
            lo, hi = welch.confidence_interval(0.95)
            assert (d["lo"], d["hi"]) == pytest.approx((lo, hi), abs=1e-9)
    assert rep["separated"] == all(_fg_from_log(r) >= rep["fg_separated"] for r in rows)


def test_the_printed_table_shows_the_report(report):
    from bench.perf.detection import agreement_table

    rep, _ = report
    text = agreement_table(rep)
    for eng in ("mmdet", "detectron2"):
        e = rep["engines"][eng]
        assert f"| {eng} | {e['APbox']['mean']:.1f} [{e['APbox']['lo']:.1f}, {e['APbox']['hi']:.1f}] |" in text
    assert ("APbox: overlap" in text) == rep["overlap"]["APbox"]


def test_agreement_options_are_checked():
    from bench.perf.cli import check_perf_options

    parser = _parser()
    for argv, message in (
        (["det", "--agreement", "--img-size", "128"], "--img-size: an option of the timing"),
        (["det", "--agreement", "--seeds", "1"], "--seeds must be >= 2"),
        (["det", "--seeds", "3"], "--seeds: only with --agreement"),
        (["det", "--mmdet-options", "a=1"], "--mmdet-options: only with --agreement"),
    ):
        with pytest.raises(BenchError, match=message):
            check_perf_options(parser.parse_args(argv))
    check_perf_options(parser.parse_args(["det", "--agreement", "--seeds", "3", "--train-iters", "10"]))


def test_report_statistics_against_scipy_on_spread_values():
    """The tiny runs' AP can be all zero (no spread): here the report's intervals, the overlap verdict
    and Welch's test on runs with spread, against scipy."""
    from scipy import stats

    from bench.perf.detection import agreement_report

    values = {"mmdet": [35.2, 41.5, 41.9, 35.1, 46.5], "detectron2": [48.4, 40.8, 36.0, 46.7, 38.6]}
    masks = {"mmdet": [39.7, 35.6, 38.6, 39.4, 41.1], "detectron2": [50.7, 48.4, 37.9, 46.6, 42.5]}
    runs = [
        dict(engine=e, seed=s, APbox=values[e][s], APmask=masks[e][s], fg_acc=55.0 + s + (e == "mmdet"))
        for s in range(5)
        for e in ("mmdet", "detectron2")
    ]
    rep = agreement_report(runs)
    for metric, table in (("APbox", values), ("APmask", masks)):
        for e in ("mmdet", "detectron2"):
            v = np.array(table[e])
            lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
            got = rep["engines"][e][metric]
            assert (got["mean"], got["lo"], got["hi"], got["min"]) == pytest.approx((v.mean(), lo, hi, v.min()))
        welch = stats.ttest_ind(table["mmdet"], table["detectron2"], equal_var=False)
        d = rep["difference"][metric]
        assert (d["lo"], d["hi"]) == pytest.approx(tuple(welch.confidence_interval(0.95)))
        assert d["p"] == pytest.approx(welch.pvalue)
        a, b = rep["engines"]["mmdet"][metric], rep["engines"]["detectron2"][metric]
        assert rep["overlap"][metric] == (max(a["lo"], b["lo"]) <= min(a["hi"], b["hi"]))
    assert rep["difference"]["APmask"]["p"] == pytest.approx(0.0464, abs=1e-3)  # scipy's, for these values
    assert rep["separated"] and rep["engines"]["mmdet"]["fg_acc"]["min"] == 56.0
    runs[0]["fg_acc"] = 12.0
    assert not agreement_report(runs)["separated"]


def test_mmdet_fg_accuracy_is_detectron2s_fg_cls_accuracy():
    """The ``fg_acc`` mmdet now logs equals detectron2's own ``fast_rcnn/fg_cls_accuracy`` (x 100) on
    the same scores and labels (label K = background in both)."""
    import torch
    from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats
    from detectron2.utils.events import EventStorage

    from tasks.detection.mmdet_run import fg_accuracy

    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(64, 6, generator=g), torch.randint(0, 6, (64,), generator=g)
    labels[:40] = 5  # most RoIs background, as sampled
    scores[40:50, :] = 0
    scores[40:50, 0] = 5  # some confident ones, right or wrong
    with EventStorage() as storage:
        _log_classification_stats(scores, labels)
        theirs = storage.latest()["fast_rcnn/fg_cls_accuracy"][0]
    ours = float(fg_accuracy(scores, labels, 5))
    assert ours == pytest.approx(100 * theirs) and 0 < ours < 100
