"""Run identity of ``bench cls`` (issue 21 item 1): a run is what determines its result, the checkpoint's
bytes, the data and the effective config. Another checkpoint never resumes (or copies) a finished run."""

import argparse
import json

import pytest
import torch

from backbones.registry import build_backbone
from bench.core.errors import BenchError
from tasks.classification.cli import add_cls_arguments, transfer_run
from tasks.classification.generate import make_image_folder
from tasks.classification.run import run_classification

BB = "mae_vit_test_patch8"  # 32 px, dim 32, depth 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    root = make_image_folder(tmp / "digits", n_train_per_class=8, n_val_per_class=4, num_classes=4, image_size=32)
    ckpts = []
    for seed, name in ((0, "a.pth"), (1, "b.pth")):  # two "pretrainings" of one method
        torch.manual_seed(seed)
        torch.save({"model": build_backbone("random_vit_test_patch8").state_dict()}, tmp / name)
        ckpts.append(tmp / name)
    return root, ckpts


def cls(root, ckpt, *more):
    argv = ["--protocol", "finetune", "--dataset", "folder", "--data-root", str(root), "--backbone", BB]
    argv += ["--checkpoint", str(ckpt), "--config", "smoke", "--epochs", "2", "--batch-size", "8", "--no-progress"]
    args = add_cls_arguments(argparse.ArgumentParser()).parse_args(argv + list(more))
    return run_classification(transfer_run(args))


def test_another_checkpoint_is_another_run_never_a_copy(data, tmp_path, monkeypatch):
    root, (a, b) = data
    monkeypatch.chdir(tmp_path)  # the default folders go under work_dirs/cls/
    row_a = cls(root, a)
    row_b = cls(root, b)
    out_a, out_b = row_a["extra"]["out_dir"], row_b["extra"]["out_dir"]
    assert out_a != out_b and out_a.startswith("work_dirs/cls/folder-finetune-mae_vit_test_patch8-")
    assert row_a["run_id"] != row_b["run_id"]
    assert row_a["checkpoint_sha256"] != row_b["checkpoint_sha256"]
    assert row_b["iterations"] == row_a["iterations"] == 2 * (32 // 8)
    # B trained from its own weights: its own log, another training loss (a copy would repeat A's)
    log_a = [json.loads(x)["loss"] for x in (tmp_path / out_a / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x)["loss"] for x in (tmp_path / out_b / "log.jsonl").read_text().splitlines()]
    assert len(log_a) == len(log_b) == 8 and log_a != log_b
    assert row_a["extra"]["final_loss"] != row_b["extra"]["final_loss"]
    # the same command again resumes A's finished run: same folder, same numbers, nothing trained
    again = cls(root, a)
    assert again["extra"]["out_dir"] == out_a and again["metrics"] == row_a["metrics"]


def test_a_folder_of_another_checkpoint_or_data_is_refused_naming_the_key(data, tmp_path):
    root, (a, b) = data
    out = tmp_path / "run"
    row = cls(root, a, "--out", str(out))
    record = json.loads((out / "config.json").read_text())
    assert record["checkpoint_sha256"] == row["checkpoint_sha256"] and record["data"] == row["extra"]["data"]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(
        BenchError, match=r"config\.json: this folder holds a run with other settings \(checkpoint_sha256 "
    ):
        cls(root, b, "--out", str(out))
    # the same files at another place are the same data; other images are not
    other = make_image_folder(
        tmp_path / "other", n_train_per_class=8, n_val_per_class=4, num_classes=4, image_size=32, seed=5
    )
    with pytest.raises(BenchError, match=r"other settings \(data '"):
        cls(other, a, "--out", str(out))
    with pytest.raises(BenchError, match=r"other settings \(lr None -> 0\.5\)"):
        cls(root, a, "--out", str(out), "--cfg-options", "lr=0.5")
    with pytest.raises(BenchError, match=r"other settings \(label 'mae' -> 'mae-b'\)"):
        cls(root, a, "--out", str(out), "--label", "mae-b")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before


def test_label_and_cli_options_reach_the_row(data, tmp_path):
    root, (a, _) = data
    row = cls(root, a, "--out", str(tmp_path / "l"), "--label", "mae-ours", "--lr", "0.002", "--seed", "3")
    assert (row["label"], row["init"], row["seed"], row["extra"]["lr"]) == ("mae-ours", "mae", 3, 0.002)
    # a file that is no known release and no `bench pretrain` output: its provenance says so
    assert row["provenance"] == {"source": "unknown", "file": "a.pth", "verified": "not a known release"}


def test_config_names_and_small_sets_say_how_to_fix(data, tmp_path):
    root, (a, _) = data
    with pytest.raises(BenchError, match=r"--config smoek: no such file or config name; names: demo, smoke"):
        cls(root, a, "--config", "smoek")
    with pytest.raises(
        BenchError, match=r"fewer than one global batch of 1024; pass --batch-size N .* or --config smoke"
    ):
        cls(root, a, "--out", str(tmp_path / "big"), "--batch-size", "1024")
    assert not (tmp_path / "big").exists()
    with pytest.raises(
        BenchError, match=r"^batch_size 1 \(accum_iter 1\): the linear probe's BatchNorm needs at least 2"
    ):
        cls(root, a, "--protocol", "linear", "--batch-size", "1", "--out", str(tmp_path / "one"))
    assert not (tmp_path / "one").exists()
    with pytest.raises(
        BenchError, match=r"folder not found; folder expects train/<class>/\*\.jpg .*bench data folder --out DIR"
    ):
        cls(tmp_path / "nowhere", a, "--out", str(tmp_path / "x"))


def test_no_resume_starts_fresh_and_moves_the_previous_run_aside(data, tmp_path):
    root, (a, b) = data
    out = tmp_path / "fresh"
    first = cls(root, a, "--out", str(out))
    old = {p.name: p.read_bytes() for p in out.glob("checkpoint-*.pth")}
    second = cls(root, b, "--out", str(out), "--no-resume")  # another checkpoint: allowed, as a new run
    assert second["checkpoint_sha256"] != first["checkpoint_sha256"] and second["iterations"] == 8
    (aside,) = out.glob("previous-*")
    assert {p.name: p.read_bytes() for p in aside.glob("checkpoint-*.pth")} == old  # nothing deleted
    assert json.loads((aside / "result.json").read_text())["run_id"] == first["run_id"]
    assert json.loads((out / "result.json").read_text())["run_id"] == second["run_id"]
