"""Labelled initialisations (issue #21): two checkpoints of one method in one suite are two labelled
inits with their own run ids, rows and table rows, never averaged as seeds. A CPU twin of
bench/suites/yours_vs_official.yaml: our own MAE pretraining (in the suite) against another MAE
checkpoint made beforehand (standing in for the official release), and random init, 2 seeds; the
raw-pixel floors and the answer sentences come with the tables."""

from pathlib import Path

import pytest
import yaml

from bench.core.errors import BenchError
from bench.core.results import ResultsStore, default_run_id
from bench.runner import plan, run_suite
from bench.suite import load_suite, pretrainer_fn

TINY_LINEAR = {
    "task": "folder",
    "protocol": "linear",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 6, "n_val_per_class": 4, "num_classes": 2, "image_size": 32},
}
PRETRAIN = {"method": "mae", "steps": 4, "batch_size": 16, "epoch_size": 64, "ckpt_every": 4}


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def twin(tmp_path: Path) -> dict:
    """The suite: 'mae-ours' pretrained here, 'mae-official' from a file made by another pretraining."""
    official = pretrainer_fn("mae")(
        "vit_test_patch8",
        tmp_path / "official",
        resume=False,
        progress=False,
        seed=7,
        **{k: v for k, v in PRETRAIN.items() if k != "method"},
    )
    return {
        "name": "yvo",
        "arch": "vit_test_patch8",
        "seeds": [0, 1],
        "inits": {
            "mae-ours": {"init": "mae", "pretrain": PRETRAIN},
            "mae-official": {"init": "mae", "checkpoint": str(official)},
            "random": {},
        },
        "tasks": {"lin": TINY_LINEAR},
    }


def test_the_bundled_yours_vs_official_suite_has_two_labelled_maes():
    suite = load_suite("yours_vs_official")
    maes = [i for i in suite.inits if i.init == "mae"]
    assert [i.label for i in maes] == ["mae-ours", "mae-official"]
    assert maes[0].checkpoint != maes[1].checkpoint
    cells = [c for c in plan(suite) if c.init.init == "mae"]
    assert len({c.id for c in cells}) == len(cells) == 2 * 2 * 3  # 2 labels x 2 tasks x 3 seeds


@pytest.mark.slow
def test_yours_vs_official_twin_gives_both_labelled_rows_in_the_table(tmp_path, capsys):
    path = write(tmp_path / "yvo.yaml", twin(tmp_path))
    suite = load_suite(path)
    cells = plan(suite)
    by_name = {c.name: c for c in cells}
    # run ids keyed by the label: the same method, arch and seed under two labels are two runs
    ours, official = by_name["mae-ours/lin/seed0"], by_name["mae-official/lin/seed0"]
    assert ours.id == default_run_id(
        "yvo", "folder", "linear", None, "mae", "vit_test_patch8", 0, ours.init.extra, label="mae-ours"
    )
    assert ours.id != official.id
    assert [c.name for c in cells if c.kind == "floor"] == ["raw-pixels/lin/seed0", "raw-pixels/lin/seed1"]

    out = tmp_path / "out"
    summary = run_suite(suite, out, jobs=2)
    assert not summary.failed, summary.failed
    rows = ResultsStore(out).rows()
    assert all(r["status"] == "ok" for r in rows)
    labels = sorted(r["label"] for r in rows)
    assert labels == sorted(
        ["mae-ours"] * 2 + ["mae-official"] * 2 + ["random"] * 2 + ["raw-pixels-logreg"] * 2 + ["raw-pixels-1nn"] * 2
    )
    sha = {r["label"]: set() for r in rows}
    for r in rows:
        sha[r["label"]].add(r["checkpoint_sha256"])
        assert r["init"] == {"mae-ours": "mae", "mae-official": "mae"}.get(r["label"], r["init"])
    # seeds are seeds of one checkpoint: one file per label, and the two MAEs' files differ
    assert len(sha["mae-ours"]) == len(sha["mae-official"]) == 1
    assert sha["mae-ours"] != sha["mae-official"]
    assert sha["random"] == {None}

    # the table shows both MAEs as rows of their own, beside random init and the floors
    tables = "\n".join(p.read_text(encoding="utf-8") for p in summary.tables if p.suffix == ".md")
    table_rows = [line for line in tables.splitlines() if line.startswith("|")]
    for label in ("mae-ours", "mae-official", "random", "raw pixels (logistic regression)", "raw pixels (k-NN)"):
        (line,) = [line for line in table_rows if line.startswith(f"| {label} |")]
        assert "n=2" in line, line  # two seeds of one checkpoint each, never four of one method
    # the answer: printed at the end and written beside the tables
    answer = (out / "answer.md").read_text(encoding="utf-8")
    assert "mae-ours vs random" in answer and "mae-official vs random" in answer
    printed = capsys.readouterr().out.rstrip().splitlines()
    # the answer comes last, after the tables; then only the summary line
    assert printed[-1] == "suite yvo: 9 cells ran, 0 were done, 0 failed"
    assert printed[-3:-1] == [answer.rstrip().splitlines()[-1], ""]
    assert max(i for i, line in enumerate(printed) if line.startswith("tables and plots in")) < len(printed) - 3


def test_two_entries_of_one_method_are_allowed_but_extra_cannot_relabel_measured_fields(tmp_path):
    doc = {
        "name": "lab",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"a": {"init": "mae", "checkpoint": "a.pth"}, "b": {"init": "mae", "checkpoint": "b.pth"}},
        "tasks": {"lin": TINY_LINEAR},
    }
    cells = plan(load_suite(write(tmp_path / "s.yaml", doc)))
    assert [c.name for c in cells] == ["a/lin/seed0", "b/lin/seed0", "raw-pixels/lin/seed0"]
    assert len({c.id for c in cells}) == 3
    for key, value in (("img_size", 448), ("search_role", "candidate"), ("cell", "x"), ("engine", "mmdet")):
        doc["inits"]["a"]["extra"] = {key: value}
        with pytest.raises(BenchError, match=rf"key inits\.a\.extra\.{key}: '{key}' is a field the run measures") as e:
            load_suite(write(tmp_path / "s.yaml", doc))
        assert "\n" not in str(e.value)
    doc["inits"]["a"]["extra"] = {"note": "ours, 800 epochs"}  # a plain note is fine
    assert load_suite(write(tmp_path / "s.yaml", doc)).inits[0].extra == {"note": "ours, 800 epochs"}


@pytest.mark.parametrize(
    "task, message",
    [
        ({**TINY_LINEAR, "generate": {"image_size": 40000}}, r"generate\.image_size is 40000; allowed: 1 to 2048$"),
        (
            {"task": "coco", "generate": {"image_size": [64, 40000]}},
            r"image_size is \[64, 40000\]; allowed: 1 to 2048$",
        ),
        ({"task": "coco", "generate": {"image_size": [0, 64]}}, r"image_size is \[0, 64\]; allowed: 1 to 2048$"),
        ({**TINY_LINEAR, "generate": {"n_train_per_class": 10**7}}, r"n_train_per_class is 10000000; at most 100000$"),
        (
            {**TINY_LINEAR, "generate": {"n_train_per_class": 90000, "num_classes": 10, "image_size": 2048}},
            r"key tasks\.t\.generate asks for 900100 images of 2048 x 2048 px, about \d+\.\d GiB; at most 4 GiB",
        ),
    ],
)
def test_huge_generated_sets_are_refused_at_load_in_one_line(tmp_path, task, message):
    doc = {"name": "big", "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}, "tasks": {"t": task}}
    with pytest.raises(BenchError, match=message) as e:
        load_suite(write(tmp_path / "s.yaml", doc))
    assert "\n" not in str(e.value) and "key tasks.t.generate" in str(e.value)


def test_amp_with_bf16_as_its_old_name_and_floors_only_for_classification(tmp_path):
    doc = {"name": "a", "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}, "tasks": {"t": TINY_LINEAR}}
    for keys, amp in (({}, False), ({"amp": True}, True), ({"bf16": True}, True), ({"amp": True, "bf16": True}, True)):
        doc["tasks"]["t"] = {**TINY_LINEAR, **keys}
        assert load_suite(write(tmp_path / "s.yaml", doc)).tasks[0].amp is amp
    doc["tasks"]["t"] = {**TINY_LINEAR, "amp": True, "bf16": False}
    with pytest.raises(BenchError, match=r"key tasks\.t\.bf16 contradicts 'tasks\.t\.amp'"):
        load_suite(write(tmp_path / "s.yaml", doc))
    doc["tasks"]["t"] = {**TINY_LINEAR, "floors": False}
    assert [c.kind for c in plan(load_suite(write(tmp_path / "s.yaml", doc)))] == ["transfer"]
    doc["tasks"]["t"] = {"task": "ade20k", "generate": {}, "floors": True}
    with pytest.raises(BenchError, match=r"key tasks\.t\.floors: raw-pixel floors are for classification tasks only$"):
        load_suite(write(tmp_path / "s.yaml", doc))
