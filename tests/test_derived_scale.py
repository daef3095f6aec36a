"""Whether a row compares with the paper is derived from the row (its checkpoint's provenance, its
data, its deviations), never from a suite's self-declared ``scale:``; partial fine-tuning rows say
when their epochs were fixed rather than searched (issue #22)."""

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from backbones.provenance import provenance_of
from bench.core.results import ResultsStore, make_row
from bench.runner import run_suite
from bench.runner.loop import comparability_note, paper_marks
from bench.suite import load_suite
from bench.tables.reference import load_reference

PAPER_TASKS = frozenset(load_reference()["task"])
TINY = {
    "floors": False,
    "task": "folder",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 10, "n_val_per_class": 2, "num_classes": 2, "image_size": 32},
}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def release(tmp_path: Path, name: str, blob: dict) -> dict:
    path = tmp_path / name
    torch.save(blob, path)
    return provenance_of(path, hashlib.sha256(path.read_bytes()).hexdigest(), blob)


def row(task="inat2019", init="mae", provenance=None, deviations=(), run_id=None, **kw) -> dict:
    return make_row(
        task=task,
        protocol=kw.pop("protocol", "finetune"),
        init=init,
        backbone="vit_base_patch16",
        seed=0,
        metrics={"top1": 50.0},
        provenance=provenance,
        deviations=list(deviations),
        run_id=run_id,
        **kw,
    )


# --------------------------------------------------------------------------------------------------
# The suite key
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["full", "smoke", "banana"])
def test_old_scale_key_is_ignored_with_one_note(tmp_path, capsys, value):
    doc = {"name": "old", "scale": value, "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}}
    path = write(tmp_path, {**doc, "tasks": {"lin": {**TINY, "protocol": "linear"}}})
    suite = load_suite(path)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"note: {path}: key 'scale' is ignored (whether a row is comparable to the paper is derived "
        "from its checkpoint, data and protocol); remove it"
    ]
    assert not hasattr(suite, "scale") and [t.label for t in suite.tasks] == ["lin"]


def test_bundled_suites_declare_no_scale():
    # demo.yaml is the lead's to edit; every other bundled suite says nothing about scale
    for name in ("ci", "search_ci", "dense_smoke", "yours_vs_official", "paper"):
        text = (Path(__file__).resolve().parent.parent / "bench" / "suites" / f"{name}.yaml").read_text()
        assert not any(line.startswith("scale:") for line in text.splitlines()), name


# --------------------------------------------------------------------------------------------------
# Derived per row
# --------------------------------------------------------------------------------------------------


def test_only_the_papers_checkpoint_data_and_protocol_compare(tmp_path):
    mae = release(tmp_path, "mae_pretrain_vit_base.pth", {"model": {"cls_token": 0, "blocks.0.attn.qkv.weight": 0}})
    beit = release(tmp_path, "beit_large_patch16_224_pt22k.pth", {"model": {"cls_token": 0}})
    unknown = provenance_of(tmp_path / "mae_pretrain_vit_base.pth.renamed")
    assert paper_marks(row(provenance=mae), PAPER_TASKS) == []
    assert paper_marks(row(task="coco", protocol="maskrcnn_fpn", init="random"), PAPER_TASKS) == []
    assert paper_marks(row(provenance=mae, deviations=["generated data"]), PAPER_TASKS) == [("data", "generated data")]
    assert paper_marks(row(task="folder", provenance=mae), PAPER_TASKS) == [
        ("data", "folder: not a dataset of the paper")
    ]
    assert paper_marks(row(init="beit", provenance=beit), PAPER_TASKS) == [
        ("checkpoint", "data ImageNet-22K (paper: ImageNet-1K); epochs 150 (paper: 800)")
    ]
    assert paper_marks(row(provenance=unknown), PAPER_TASKS) == [("checkpoint", "checkpoint of unknown provenance")]
    assert paper_marks(row(provenance=None), PAPER_TASKS) == [("checkpoint", "checkpoint of unknown provenance")]
    # the digits' own data phrase is the data mark; the schedule is a protocol mark
    digits = "scikit-learn digits (real 8x8 scans, upscaled), not the paper's data"
    assert paper_marks(
        row(task="digits", provenance=mae, deviations=[digits, "epochs 3 < paper 100"]), PAPER_TASKS
    ) == [
        ("data", digits),
        ("protocol", "epochs 3 < paper 100"),
    ]


def test_values_a_search_chose_are_the_papers_protocol(tmp_path):
    # A.5: the paper adjusted lr and epochs per dataset, so a searched blr / epochs is no departure;
    # an unsearched key's deviation still is
    mae = release(tmp_path, "mae_pretrain_vit_base.pth", {"model": {"cls_token": 0, "blocks.0.attn.qkv.weight": 0}})
    phrases = ["base lr 0.00025 != paper 0.0005", "epochs 50 < paper 100", "mixup 0 != paper 0.8"]
    search = {"grid": {"blr": [2.5e-4, 5e-4], "epochs": [50, 100]}, "chosen": {"blr": 2.5e-4, "epochs": 50}}
    assert paper_marks(row(provenance=mae, deviations=phrases, extra={"search": search}), PAPER_TASKS) == [
        ("protocol", "mixup 0 != paper 0.8")
    ]
    assert paper_marks(row(provenance=mae, deviations=phrases), PAPER_TASKS) == [("protocol", p) for p in phrases]
    # COCO: searched epochs set the iterations; ADE20K's lr-only search leaves its 160k schedule marked
    coco = {"grid": {"lr": [8e-5], "epochs": [50, 100]}}
    assert (
        paper_marks(
            row(task="coco", init="random", deviations=["iterations 92188 < paper 184375"], extra={"search": coco}),
            PAPER_TASKS,
        )
        == []
    )
    ade = {"grid": {"lr": [1e-4, 2e-4]}}
    assert paper_marks(
        row(task="ade20k", init="random", deviations=["iterations 160000 > paper 126313"], extra={"search": ade}),
        PAPER_TASKS,
    ) == [("protocol", "iterations 160000 > paper 126313")]


def test_note_counts_finished_rows_and_names_why(tmp_path):
    mae = release(tmp_path, "mae_pretrain_vit_base.pth", {"model": {"cls_token": 0, "blocks.0.attn.qkv.weight": 0}})
    own = {"source": "self-pretrained", "verified": "its own run record", "steps": 100, "data": "digits"}
    rows = [
        row(provenance=mae, run_id="a", status="failed", error="boom"),
        row(provenance=mae, run_id="a"),  # a failed try, then ok: one comparable row
        row(provenance=own, run_id="b", deviations=["epochs 3 < paper 100", "generated data"]),
        row(provenance=own, run_id="c", deviations=["generated data"]),
        row(provenance=mae, run_id="d", deviations=["generated data"], extra={"search_role": "candidate"}),
    ]
    note = comparability_note(rows, PAPER_TASKS)
    assert note == (
        "Compared with the paper (derived per row from its checkpoint's provenance, its data and its "
        "recorded deviations): 1 of 3 rows comparable to the paper, 2 marked: checkpoint in 2 "
        "(self-pretrained (100 steps on digits), not the paper's checkpoint), data in 2 (generated data), "
        "protocol in 1 (epochs 3 < paper 100). A table marks such a cell beside the paper's number; "
        "compare them only as a sanity check."
    )
    assert comparability_note(rows[:2], PAPER_TASKS).endswith(": 1 of 1 rows comparable to the paper.")


def test_a_suite_declaring_full_scale_still_gets_its_rows_marked(tmp_path, capsys):
    doc = {"name": "claims", "scale": "full", "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}}
    suite = load_suite(write(tmp_path, {**doc, "tasks": {"lin": {**TINY, "protocol": "linear"}}}))
    out = tmp_path / "out"
    summary = run_suite(suite, out)
    assert not summary.failed
    (r,) = ResultsStore(out).rows()
    assert "smoke scale" not in r["deviations"] and r["deviations"][-1] == "generated data"
    printed = capsys.readouterr().out
    assert "0 of 1 rows comparable to the paper, 1 marked: data in 1 (generated data), protocol in 1 (" in printed


# --------------------------------------------------------------------------------------------------
# Partial fine-tuning epochs (A.1: best of 50/100/200 per k)
# --------------------------------------------------------------------------------------------------


def test_partial_rows_say_whether_their_epochs_were_searched(tmp_path):
    part = {**TINY, "protocol": "partial"}
    doc = {
        "name": "partial",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {
            "fixed": {**part, "k": [0, 1]},
            "searched": {**part, "k": [1], "search": {"epochs": [1, 2]}},
        },
    }
    out = tmp_path / "out"
    summary = run_suite(load_suite(write(tmp_path, doc)), out, tables=False)
    assert not summary.failed, summary.failed
    rows = {r["extra"]["cell"]: r for r in ResultsStore(out).rows()}
    fixed = "epochs 1 fixed; paper: best of 50/100/200 per k"
    assert fixed in rows["random/fixed/k1/seed0"]["deviations"]
    assert not any("fixed;" in d for d in rows["random/fixed/k0/seed0"]["deviations"])  # k = 0: linear probing
    final = rows["random/searched/k1/seed0"]
    assert final["extra"]["search"]["grid"] == {"epochs": [1, 2]}
    chosen = final["extra"]["search"]["chosen"]["epochs"]
    assert final["extra"]["epochs"] == chosen and not any("fixed;" in d for d in final["deviations"])
    candidates = [r for r in rows.values() if r["extra"].get("search_role") == "candidate"]
    assert len(candidates) == 2 and not any("fixed;" in d for r in candidates for d in r["deviations"])
