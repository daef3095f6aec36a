"""The paper's per-entry hyperparameter search (issue #15): `bench run` expands a suite's grids into
candidate cells selected on a held-out part of the training set (or on val, said in the row),
then runs the best point on the reported split; resumable like every cell."""

from pathlib import Path

import pytest
import yaml

from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.core.run_record import read_run_record
from bench.runner import plan, run_suite
from bench.suite import load_suite

TINY = {
    "floors": False,  # the raw-pixel floor cells are tested on their own
    "task": "folder",
    "protocol": "linear",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 10, "n_val_per_class": 2, "num_classes": 2, "image_size": 32},
}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.slow
def test_search_ci_selects_the_best_heldout_point_and_reports_it(tmp_path, capsys):
    suite = load_suite("search_ci")
    cells = plan(suite)
    assert [c.role for c in cells if c.kind == "transfer"] == (["candidate"] * 4 + ["final"]) * 2
    out = tmp_path / "out"
    summary = run_suite(suite, out, tables=False)
    assert not summary.failed, summary.failed
    rows = ResultsStore(out).rows()
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 10 + 2  # + the 2 raw-pixel floors
    assert sorted(r["label"] for r in rows if r["init"] == "raw_pixels") == ["raw-pixels-1nn", "raw-pixels-logreg"]
    rows = [r for r in rows if r["init"] != "raw_pixels"]
    grids = {  # the same grid for every init (the loader refuses unequal grids without a reason)
        "random": {"lr": [0.1, 6.4], "weight_decay": [0.0, 0.05]},
        "mae": {"lr": [0.1, 6.4], "weight_decay": [0.0, 0.05]},
    }
    for init, grid in grids.items():
        candidates = [
            r
            for r in rows
            if r["extra"].get("search_role") == "candidate" and r["extra"]["cell"].startswith(f"{init}/")
        ]
        assert len(candidates) == 4
        # each candidate trained its own point on the held-out part of the training set
        points = [r["extra"]["overrides"] for r in candidates]
        assert points == [{"lr": a, "weight_decay": b} for a in grid["lr"] for b in grid["weight_decay"]]
        assert all(r["extra"]["select"] == "heldout" for r in candidates)
        # the final row: the argmax of the candidates' held-out top-1 (first listed on a tie)
        (final,) = [r for r in rows if r["extra"]["cell"] == f"{init}/folder/seed0"]
        scores = [r["metrics"]["top1"] for r in candidates]
        best = points[scores.index(max(scores))]
        search = final["extra"]["search"]
        assert search["grid"] == grid and search["chosen"] == best
        assert search["select_on"] == "heldout" and search["metric"] == "top1"
        assert [s["top1"] for s in search["scores"]] == scores and search["failed"] == []
        assert "search_role" not in final["extra"] and final["extra"]["select"] is None
        assert final["run_id"] == next(c.id for c in cells if c.name == f"{init}/folder/seed0")
        assert "generated data" in final["deviations"] and "smoke scale" not in final["deviations"]
        assert "selected on val" not in final["deviations"]
        # it trained the chosen point on the full training set (its own work dir and config)
        config = read_run_record(out / "work" / init / "folder" / "seed0" / "config.json")
        assert (config["lr"], config["weight_decay"]) == (best["lr"], best["weight_decay"])
        assert "select" not in config
    # resumable: a second run has nothing to do
    again = run_suite(suite, out, tables=False)
    assert again.ran == [] and len(again.skipped) == len(cells)


@pytest.mark.slow
def test_select_on_val_reports_the_best_candidates_row_and_says_so(tmp_path):
    doc = {
        "name": "val",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"t": {**TINY, "search": {"lr": [0.1, 6.4]}, "select_on": "val"}},
    }
    out = tmp_path / "out"
    summary = run_suite(load_suite(write(tmp_path, doc)), out, tables=False)
    assert not summary.failed, summary.failed
    rows = {r["extra"]["cell"]: r for r in ResultsStore(out).rows()}
    cands = [rows[f"random/t/search/seed0/lr={lr}"] for lr in (0.1, 6.4)]
    assert all(r["extra"]["select"] is None for r in cands)  # candidates ran on val
    final = rows["random/t/seed0"]
    best = max(cands, key=lambda r: r["metrics"]["top1"])
    assert final["metrics"] == best["metrics"]
    assert final["extra"]["search"]["chosen"] == best["extra"]["overrides"]
    assert "selected on val" in final["deviations"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"momentum": [0.9]}}, r"unknown key 'tasks.t.search.momentum'; allowed: lr, "),
        ({"search": {"lr": []}}, r"key tasks.t.search.lr must be a non-empty list of finite numbers"),
        ({"search": {"lr": [0.1, 0.1]}}, r"key tasks.t.search.lr lists a value twice"),
        ({"search": {"lr": [float("inf")]}}, r"key tasks.t.search.lr must be a non-empty list"),
        (
            {"search": {"lr": list(range(1, 9)), "weight_decay": list(range(9))}},
            r"key 'tasks.t.search' has more than 64 points",
        ),
        (
            {"search": {"lr": [1.0]}, "select_on": "test"},
            r"key tasks.t.select_on is 'test'; allowed: "
            r"heldout, val",
        ),
    ],
)
def test_grid_errors_are_one_line(tmp_path, change, message):
    doc = {
        "name": "g",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"t": {**TINY, **change}},
    }
    with pytest.raises(BenchError, match=message) as info:
        load_suite(write(tmp_path, doc))
    assert "\n" not in str(info.value)


def test_dense_search_maps_to_config_keys(tmp_path):
    doc = {
        "name": "d",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"ade20k": {"iters": 2, "generate": {"n_train": 2}, "search": {"lr": [1e-4, 1e-3]}}},
    }
    doc["tasks"]["ade20k"]["select_on"] = "val"
    doc["inits"]["random"]["search"] = {"ade20k": {"drop_path": [0.0, 0.1], "iters": [2, 4]}}
    suite = load_suite(write(tmp_path, doc))
    names = [c.name for c in plan(suite)]
    assert names == [
        "random/ade20k/search/seed0/drop_path=0.0_iters=2",
        "random/ade20k/search/seed0/drop_path=0.0_iters=4",
        "random/ade20k/search/seed0/drop_path=0.1_iters=2",
        "random/ade20k/search/seed0/drop_path=0.1_iters=4",
        "random/ade20k/seed0",
    ]
    # --only on the final cell keeps its candidates
    assert [c.name for c in plan(suite, only="random/ade20k/seed0")] == names
    from tasks.segmentation.task import SEARCH_CFG

    assert SEARCH_CFG["drop_path"] == "model.backbone.drop_path_rate"
    doc["inits"]["random"]["search"] = {"nope": {"lr": [1.0]}}
    with pytest.raises(BenchError, match=r"unknown key 'inits.random.search.nope'; allowed: ade20k"):
        load_suite(write(tmp_path, doc))


def test_unequal_grids_between_inits_are_refused_unless_a_reason_is_given(tmp_path):
    doc = {
        "name": "u",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}, "mae": {"checkpoint": "m.pth", "search": {"t": {"lr": [0.5, 6.4]}}}},
        "tasks": {"t": {**TINY, "search": {"lr": [0.1, 6.4]}}},
    }
    with pytest.raises(
        BenchError,
        match=r"key 'inits.mae.search.t': init 'mae' searches another grid for task 't' than init 'random' "
        r"\(lr \[0.5, 6.4\] vs lr \[0.1, 6.4\]\); give every init the same grid, or say why in "
        r"'tasks.t.unequal_grid_reason'$",
    ) as info:
        load_suite(write(tmp_path, doc))
    assert "\n" not in str(info.value)
    # an init without a search beside one with a search is unequal too
    doc["inits"]["mae"]["search"] = {"t": {"lr": [0.1, 6.4]}}
    doc["tasks"]["t"].pop("search")
    with pytest.raises(BenchError, match=r"\(lr \[0.1, 6.4\] vs no search\)"):
        load_suite(write(tmp_path, doc))
    # the same values in another order are the same grid
    doc["tasks"]["t"]["search"] = {"lr": [6.4, 0.1]}
    assert len(plan(load_suite(write(tmp_path, doc)))) == 2 * 3
    # a stated reason lets the grids differ, and says so in the suite
    doc["inits"]["mae"]["search"] = {"t": {"lr": [0.5, 6.4, 8.0]}}
    doc["tasks"]["t"]["unequal_grid_reason"] = "MAE's linear probe needs a larger lr (paper A.2)"
    suite = load_suite(write(tmp_path, doc))
    assert suite.tasks[0].unequal_grid_reason.startswith("MAE's")
    assert sum(c.role == "candidate" for c in plan(suite)) == 2 + 3
