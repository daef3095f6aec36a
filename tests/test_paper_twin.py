"""The paper suite's CPU twin (bench/suites/paper_twin.yaml) end to end: a self-pretrained tiny MAE
transferred to generated COCO, ADE20K and iNat 2017 sets with the paper suite's protocols; each task
searches its grid on a held-out part of the training split, the best point is retrained on the whole
training split and reported on val, and the tables mark the self-pretrained rows beside paper numbers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.results import ResultsStore
from bench.runner import plan, run_suite
from bench.runner.data import dataset_root
from bench.suite import load_suite
from bench.tables.cli import run_table
from bench.tables.reference import load_reference
from tasks.detection.coco_data import heldout_split

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.skipif(
        importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmseg") is None,
        reason="needs mmdet and mmseg (bash scripts/setup.sh)",
    ),
]
TABLES = {"coco": "table4_coco", "ade20k": "table5_ade20k", "inat2017": "table6_transfer_cls"}
PRETRAIN_STEPS = 2  # bench/suites/paper_twin.yaml: inits.mae.pretrain.steps
# The paper's MAE ViT-B numbers of each task's headline metric (Tables 4, 5, 6)
PAPER_B = {"coco": 50.3, "ade20k": 48.1, "inat2017": 70.5}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    suite = load_suite("paper_twin")
    out = tmp_path_factory.mktemp("twin") / "out"
    summary = run_suite(suite, out, tables=False)
    assert not summary.failed, summary.failed
    rows = ResultsStore(out).rows()
    assert all(r["status"] == "ok" for r in rows)
    return suite, out, {r["extra"]["cell"]: r for r in rows}


def test_the_twin_has_the_paper_suites_tasks_and_searches():
    paper, twin = load_suite("paper"), load_suite("paper_twin")
    by_label = {t.label: t for t in paper.tasks}
    for t in twin.tasks:
        p = by_label[t.label]
        assert (t.task, t.protocol, t.select_on) == (p.task, p.protocol, p.select_on) == (t.task, t.protocol, "heldout")
        assert set(t.search) <= set(p.search) and all(len(v) == 2 for v in t.search.values())
    assert {t.label for t in paper.tasks} >= set(TABLES) == {t.label for t in twin.tasks}
    assert [c.role for c in plan(twin) if c.kind == "transfer"] == ["candidate", "candidate", "final"] * 3


def _ids(row: dict) -> list[str]:
    return [str(i) for i in np.load(row["extra"]["per_example"])["ids"]]


def _candidates(rows: dict, task: str) -> list[dict]:
    return [r for cell, r in rows.items() if cell.startswith(f"mae/{task}/search/")]


@pytest.mark.slow
def test_each_task_selects_its_best_heldout_point_and_reports_it_on_val(twin):
    suite, out, rows = twin
    for t in suite.tasks:
        metric = t.spec.metrics[0]
        candidates, final = _candidates(rows, t.label), rows[f"mae/{t.label}/seed0"]
        points = [r["extra"]["overrides"] for r in candidates]
        assert points == [{name: v} for name, values in t.search.items() for v in values]
        assert all(r["extra"]["select"] == "heldout" and r["extra"]["search_role"] == "candidate" for r in candidates)
        # the final row trained the held-out argmax (the first listed point on a tie) on the full split
        scores = [r["metrics"][metric] for r in candidates]
        best = points[scores.index(max(scores))]
        search = final["extra"]["search"]
        assert search["chosen"] == best and search["select_on"] == "heldout" and search["metric"] == metric
        assert [s[metric] for s in search["scores"]] == scores and search["failed"] == []
        assert final["extra"].get("select") is None and "search_role" not in final["extra"]
        assert "selected on val" not in final["deviations"]
    # iNat's grid is far apart on purpose: the candidates differ (this seeded run: 4 vs 1 of the 6
    # held-out images), and the second listed point wins, so neither "first" nor "last" passes by luck
    inat = [r["metrics"]["top1"] for r in _candidates(rows, "inat2017")]
    assert inat[1] > inat[0] and rows["mae/inat2017/seed0"]["extra"]["search"]["chosen"] == {"blr": 5.0e-2}
    assert rows["mae/inat2017/seed0"]["extra"]["lr"] == pytest.approx(5.0e-2 * 16 / 256, rel=1e-9)


@pytest.mark.slow
def test_candidates_score_the_heldout_part_and_the_final_row_scores_val(twin):
    suite, out, rows = twin
    roots = {t.label: dataset_root(t, out) for t in suite.tasks}
    # COCO: the fixed carve of train2017 (tasks/detection/coco_data.py); val2017 for the final row
    coco = roots["coco"]
    train_ids, held_ids = heldout_split(coco / "annotations/instances_train2017.json")
    val = json.loads((coco / "annotations/instances_val2017.json").read_text())
    for r in _candidates(rows, "coco"):
        assert sorted(map(int, _ids(r))) == held_ids
        assert (r["extra"]["num_train_images"], r["extra"]["num_val_images"]) == (len(train_ids), len(held_ids))
    final = rows["mae/coco/seed0"]
    assert sorted(map(int, _ids(final))) == sorted(i["id"] for i in val["images"])
    assert final["extra"]["num_train_images"] == len(train_ids) + len(held_ids)
    assert final["extra"]["cfg_options"] == {"optim_wrapper.optimizer.lr": final["extra"]["search"]["chosen"]["lr"]}
    # ADE20K: held-out training images, then the validation images
    ade = roots["ade20k"] / "images"
    names = {split: sorted(p.stem for p in (ade / split).iterdir()) for split in ("training", "validation")}
    for r in _candidates(rows, "ade20k"):
        assert set(_ids(r)) < set(names["training"]) and _ids(r)
    assert sorted(_ids(rows["mae/ade20k/seed0"])) == names["validation"]
    # iNat 2017: held-out training files, then the val file's images
    inat = roots["inat2017"]
    files = {
        s: {i["file_name"] for i in json.loads((inat / f"{s}2017.json").read_text())["images"]}
        for s in ("train", "val")
    }
    for r in _candidates(rows, "inat2017"):
        assert set(_ids(r)) < files["train"] and len(_ids(r)) == r["extra"]["heldout_size"] == r["extra"]["n_val"]
    final = rows["mae/inat2017/seed0"]
    assert set(_ids(final)) == files["val"] and final["extra"]["n_train"] == len(files["train"])


def _stand_in_reference(rows: dict, path: Path) -> Path:
    """The paper's MAE ViT-B numbers, keyed to the twin's architecture and input sizes, so that the
    twin's final rows sit beside a paper number as the paper suite's rows do."""
    paper = load_reference()
    extra = []
    for task in TABLES:
        final = rows[f"mae/{task}/seed0"]
        for metric in final["metrics"]:
            ref = paper[(paper.task == task) & (paper.metric == metric) & (paper.init == "mae")]
            ref = ref[ref.backbone == "vit_base_patch16"]
            if len(ref):
                extra.append(
                    ref.iloc[0].to_dict() | {"backbone": final["backbone"], "img_size": final["extra"]["img_size"]}
                )
    pd.concat([paper, pd.DataFrame(extra)], ignore_index=True).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_self_pretrained_rows_carry_provenance_and_are_marked_beside_paper_numbers(twin, tmp_path):
    suite, out, rows = twin
    for r in rows.values():
        assert r["init"] == r["label"] == "mae" and r["checkpoint_sha256"]
        p = r["provenance"]
        assert (p["source"], p["method"], p["steps"]) == ("self-pretrained", "mae", PRETRAIN_STEPS)
    written = run_table(
        out,
        tmp_path / "tables",
        suite="paper_twin",
        reference_csv=_stand_in_reference(rows, tmp_path / "ref.csv"),
        plots=False,
    )
    data = rows["mae/coco/seed0"]["provenance"]["data"]
    text = f"MAE ViT-test/8: self-pretrained ({PRETRAIN_STEPS} steps on {data}), not the paper's checkpoint"
    for task, table in TABLES.items():
        md = (tmp_path / "tables" / f"{table}.md").read_text(encoding="utf-8")
        (letter,) = re.findall(rf"^<sup>([a-z]+)</sup> {re.escape(text)}", md, flags=re.M)
        # the MAE row's own cells carry that mark, beside the paper's number (the stand-in reference)
        (line,) = [line for line in md.splitlines() if line.startswith("| mae |")]
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert re.fullmatch(rf"[-0-9.]+( \[[^]]*\])?<sup>([a-z]+,)*{letter}(,[a-z]+)*</sup>", cells[0]), line
        assert cells[1].split("<sup>")[0] == f"{PAPER_B[task]:.1f}", line
    assert any(p.name == "table4_coco.csv" for p in written)
