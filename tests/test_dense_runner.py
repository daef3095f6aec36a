"""The shared dense runner (tasks/dense/runner.py, tasks/dense/mm_runner.py): resume from the newest
readable checkpoint of the run's own folder, atomic saves and a failed save as one error, the config
trust gate, quiet terminal output with everything in the log file, --cfg-options applied and
recorded, a non-finite loss stopping segmentation too."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError
from bench.core.results import ResultsStore, config_hash
from tasks.dense.runner import (
    RUN_RECORD,
    DenseOutcome,
    check_config_trust,
    paper_deviations,
    scale_schedule,
    set_batch_and_schedule,
    transfer_row,
)
from tasks.dense.workdir import check_record, resume_candidates
from tasks.spec import TransferRun

REPO = Path(__file__).resolve().parents[1]
TINY = "random_vit_test_patch8"
SMOKE_SEG = REPO / "tasks" / "segmentation" / "configs" / "smoke.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


# ------------------------------------------------------------------------------------------------
# engine-neutral pieces (no mmengine needed)
# ------------------------------------------------------------------------------------------------
def test_schedule_keeps_its_shape_and_batch_scales_iterations():
    cfg = dict(
        train_cfg=dict(max_iters=1000, val_interval=200),
        default_hooks=dict(checkpoint=dict(interval=500)),
        train_dataloader=dict(batch_size=8),
        total_batch_size=16,
        param_scheduler=[
            dict(type="LinearLR", by_epoch=False, begin=0, end=10),
            dict(type="MultiStepLR", by_epoch=False, begin=0, end=1000, milestones=[800, 950]),
            dict(type="PolyLR", by_epoch=False, begin=10, end=10**9),
        ],
    )
    facts = set_batch_and_schedule(cfg, "c.py", iters=None, batch_size=32, ckpt_interval=None, world_size=2)
    # half the iterations at twice the batch (same epochs); lr scaled by mmengine's auto_scale_lr
    assert facts == dict(total_batch_size=32, base_batch_size=16, max_iters=500)
    assert cfg["train_dataloader"]["batch_size"] == 16 and cfg["auto_scale_lr"] == dict(enable=True, base_batch_size=16)
    warm, steps, poly = cfg["param_scheduler"]
    assert (warm["begin"], warm["end"]) == (0, 5) and (steps["end"], steps["milestones"]) == (500, [400, 475])
    assert (poly["begin"], poly["end"]) == (5, 500)  # an end past training: the end of training
    assert cfg["train_cfg"]["val_interval"] == 200 and cfg["default_hooks"]["checkpoint"]["interval"] == 500
    scale_schedule(cfg, 3, "c.py")
    assert cfg["param_scheduler"][0]["end"] == 1 and cfg["param_scheduler"][1]["milestones"] == [2, 3]
    one = dict(cfg, param_scheduler=[dict(s) for s in cfg["param_scheduler"]])
    scale_schedule(one, 1, "c.py")  # --iters 1: the warm-up only; the emptied decay phase is dropped
    assert [(s["type"], s["begin"], s["end"]) for s in one["param_scheduler"]] == [
        ("LinearLR", 0, 1),
        ("MultiStepLR", 0, 1),
    ]
    # sizes far past any recipe are refused before anything is allocated
    with pytest.raises(BenchError, match="--batch-size 100000000000000000000: at most 4096 images per step"):
        set_batch_and_schedule(dict(cfg), "c.py", iters=None, batch_size=10**20, ckpt_interval=None, world_size=2)
    with pytest.raises(BenchError, match="--iters 1000000000000: at most 10000000"):
        scale_schedule(dict(cfg, param_scheduler=[]), 10**12, "c.py")
    with pytest.raises(BenchError, match="--batch-size 3: must be a positive multiple of the 2 processes"):
        set_batch_and_schedule(dict(cfg), "c.py", iters=None, batch_size=3, ckpt_interval=None, world_size=2)
    cfg["param_scheduler"][0]["by_epoch"] = True
    with pytest.raises(BenchError, match=r"c.py: key 'param_scheduler\[0\].by_epoch' must be False"):
        scale_schedule(cfg, 10, "c.py")


def test_paper_deviations_name_each_value_against_the_papers_and_reach_the_row():
    paper = {"iterations": 160000, "batch": 16, "crop": (512, 512), "lr": 1e-4}
    facts = {"iterations": 30, "batch": 32, "crop": (64, 64), "lr": 1e-4, "unrelated": 1}
    assert paper_deviations(facts, paper) == [
        "iterations 30 < paper 160000",
        "batch 32 > paper 16",
        "crop 64 != paper 512",
    ]
    assert paper_deviations({"crop": (64, 96), "lr": 2e-4}, paper) == [
        "crop 64x96 != paper 512",
        "lr 0.0002 != paper 0.0001",
    ]
    assert paper_deviations(dict(paper), paper) == [] and paper_deviations({}, paper) == []
    run = TransferRun(
        task="ade20k",
        protocol="upernet",
        backbone=TINY,
        checkpoint=None,
        data_root=Path("d"),
        work_dir=Path("w"),
        seed=0,
        suite="t",
        label="mine",
    )
    outcome = DenseOutcome(
        metrics={"mIoU": 1.0},
        hashed={},
        iterations=30,
        start_iter=0,
        wall_time_s=1.0,
        batch_size=4,
        world_size=1,
        config_name="smoke",
        config_file="smoke.py",
        cfg_options={},
        checkpoint=None,
        deviations=paper_deviations(facts, paper),
    )
    row = transfer_row(run, outcome)
    assert (row["label"], row["init"], row["extra"]["config_file"]) == ("mine", "random", "smoke.py")
    assert row["deviations"] == ["iterations 30 < paper 160000", "batch 32 > paper 16", "crop 64 != paper 512"]


def test_resume_candidates_use_the_folders_own_files(tmp_path):
    work = tmp_path / "copy"
    work.mkdir()
    for n in (2, 4, 10):
        (work / f"iter_{n}.pth").write_bytes(b"x")
    (work / "iter_x.pth").write_bytes(b"x")  # not a step
    assert resume_candidates(work) == [work / "iter_10.pth", work / "iter_4.pth", work / "iter_2.pth"]
    # mmengine writes an absolute path: the file of that name in THIS folder is taken
    (work / "last_checkpoint").write_text(str(tmp_path / "original" / "iter_4.pth"))
    assert resume_candidates(work) == [work / "iter_4.pth", work / "iter_10.pth", work / "iter_2.pth"]
    (work / "last_checkpoint").write_text("/nowhere/iter_99.pth")  # names nothing: newest first
    assert resume_candidates(work)[0] == work / "iter_10.pth"
    assert resume_candidates(tmp_path / "missing") == []


def test_record_guard_names_the_option_before_the_hash(tmp_path):
    from tasks.dense.workdir import write_record

    rec = dict(
        backbone="b",
        checkpoint_sha256="c1",
        label="mae-ours",
        data="d1",
        seed=0,
        iterations=15,
        batch_size=4,
        crop_size=[64, 64],
        cfg_options={},
        config_hash="aaa",
    )
    write_record(tmp_path, rec)
    check_record(tmp_path, dict(rec, iterations=20, config_hash="bbb"), resume=True)  # no checkpoint: nothing to mix
    (tmp_path / "iter_5.pth").write_bytes(b"x")
    with pytest.raises(BenchError, match=r"holds a run with other settings \(iterations 15 -> 20\); use the same"):
        check_record(tmp_path, dict(rec, iterations=20, config_hash="bbb"), resume=True)
    # what the run was trained from and on is named before the effective config
    with pytest.raises(BenchError, match=r"\(checkpoint_sha256 'c1' -> 'c2'\)"):
        check_record(tmp_path, dict(rec, checkpoint_sha256="c2", config_hash="bbb"), resume=True)
    with pytest.raises(BenchError, match=r"\(data 'd1' -> 'd2'\)"):
        check_record(tmp_path, dict(rec, data="d2", config_hash="bbb"), resume=True)
    with pytest.raises(BenchError, match=r"\(label 'mae-ours' -> 'mae-official'\)"):
        check_record(tmp_path, dict(rec, label="mae-official"), resume=True)
    with pytest.raises(BenchError, match=r"\(cfg_options \{\} -> \{'a': 1\}\)"):
        check_record(tmp_path, dict(rec, cfg_options={"a": 1}), resume=True)
    with pytest.raises(BenchError, match=r"\(config_hash 'aaa' -> 'bbb'\)"):
        check_record(tmp_path, dict(rec, config_hash="bbb"), resume=True)
    check_record(tmp_path, dict(rec, config_hash="bbb"), resume=False)
    (tmp_path / RUN_RECORD).unlink()
    with pytest.raises(BenchError, match="holds checkpoints but no run record"):
        check_record(tmp_path, rec, resume=True)
    os.mkfifo(tmp_path / "last_checkpoint")  # would block a read forever: refused before anything reads it
    with pytest.raises(BenchError, match=r"last_checkpoint: not a regular file; move it away or use another --out"):
        check_record(tmp_path, rec, resume=True)


def test_config_trust_gate_names_the_file_and_the_flag(tmp_path):
    shipped = REPO / "tasks" / "segmentation" / "configs"
    assert check_config_trust(SMOKE_SEG, shipped, False) == SMOKE_SEG.resolve()
    outside = tmp_path / "x.py"
    outside.write_text("")
    with pytest.raises(BenchError, match=f"{outside}: config file outside the package.*--trust-config"):
        check_config_trust(outside, shipped, False)
    assert check_config_trust(outside, shipped, True) == outside
    with pytest.raises(BenchError, match="--trust-config"):  # '..' does not make a file shipped
        check_config_trust(shipped / ".." / ".." / ".." / "tests" / "conftest.py", shipped, False)


def _cli(*args, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("task", ["seg", "det"])
def test_untrusted_config_is_refused_before_it_runs(tmp_path, task):
    marker = tmp_path / "marker"
    base = SMOKE_SEG if task == "seg" else REPO / "tasks" / "detection" / "configs" / "smoke_fpn.py"
    cfg = tmp_path / "x.py"
    cfg.write_text(f"_base_ = [{str(base)!r}]\nopen({str(marker)!r}, 'w').write('ran')\n")
    args = [task, "--backbone", TINY, "--data-root", tmp_path / "no_data", "--config", cfg, "--out", tmp_path / "w"]
    p = _cli(*args)
    assert p.returncode == 2 and not marker.exists()
    assert p.stderr.strip() == (
        f"error: {cfg}: config file outside the package; reading it runs it as Python code "
        f"(mmengine), so pass --trust-config (suite key 'trust_config: true') if you trust it"
    )
    p = _cli(*args, "--trust-config")
    assert marker.read_text() == "ran"  # read (then the missing data root stops the run)
    assert p.returncode == 2 and "no_data" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------
# run_dense on a toy mmengine model (seconds): resume fallback, atomic saves, a full disk
# ------------------------------------------------------------------------------------------------
def _toy_registry():
    import torch.nn as nn
    from mmengine.model import BaseModel
    from mmengine.registry import DATASETS, MODELS

    @MODELS.register_module(name="BenchToyModel", force=True)
    class ToyModel(BaseModel):
        def __init__(self, loss_weight=1.0):
            super().__init__()
            self.linear, self.loss_weight = nn.Linear(4, 1), loss_weight

        def forward(self, inputs, labels, mode="tensor"):
            out = self.linear(inputs).squeeze(1)
            return {"loss": self.loss_weight * ((out - labels) ** 2).mean()} if mode == "loss" else out

    @DATASETS.register_module(name="BenchToyData", force=True)
    class ToyData(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"inputs": torch.randn(4, generator=g), "labels": torch.tensor(float(i % 2))}


def toy_run(work, *, resume=True, iters=4, loss_weight=1.0, interval=2):
    from mmengine.config import Config

    from tasks.dense.mm_runner import run_dense

    cfg = Config(
        dict(
            model=dict(type="BenchToyModel", loss_weight=loss_weight),
            work_dir=str(work),
            train_dataloader=dict(
                dataset=dict(type="BenchToyData"),
                sampler=dict(type="InfiniteSampler", shuffle=True),
                batch_size=4,
                num_workers=0,
                collate_fn=dict(type="default_collate"),
            ),
            train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters),
            optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-2)),
            param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=iters)],
            default_hooks=dict(
                checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=interval, max_keep_ckpts=2),
                logger=dict(type="LoggerHook", interval=1),
            ),
            log_processor=dict(by_epoch=False),
            randomness=dict(seed=0),
        )
    )
    runner, _, _ = run_dense(
        cfg, name="toy", record={"iterations": iters}, resume=resume, register=_toy_registry, evaluate=lambda runner: {}
    )
    return runner.run_watch.start_iter


def test_toy_resume_takes_the_newest_readable_checkpoint_of_its_own_folder(tmp_path, capfd):
    work = tmp_path / "work"
    assert toy_run(work) == 0
    assert (work / "last_checkpoint").read_text() == "iter_4.pth" and not list(work.glob(".*.tmp"))
    data = (work / "iter_4.pth").read_bytes()
    (work / "iter_4.pth").write_bytes(data[: len(data) // 2])  # truncated (a kill mid-copy, a full disk)
    capfd.readouterr()
    assert toy_run(work) == 2
    out = capfd.readouterr()
    assert f"{work / 'iter_4.pth'}: unreadable checkpoint, falling back to the one before (" in out.out
    # the start line (device, dtype, world, backend), the log file's name, the fallback
    lines = out.out.strip().splitlines()
    assert len(lines) == 3 and lines[0] == "[toy] device cpu, dtype fp32, world 1, backend none" and not out.err
    (work / "last_checkpoint").write_text(str(tmp_path / "elsewhere" / "iter_9.pth"))
    assert toy_run(work) == 4
    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    (copy / "iter_4.pth").unlink()
    (copy / "last_checkpoint").write_text(str(work / "iter_2.pth"))  # absolute, into the original
    shutil.rmtree(work)
    assert toy_run(copy) == 2
    from tasks.dense.workdir import write_record

    write_record(copy, {"iterations": 3})  # a record edited by hand: the checkpoint's own step still refuses
    with pytest.raises(CheckpointError, match=r"iter_4.pth: checkpoint at iteration 4 of a longer run than this one"):
        toy_run(copy, iters=3)
    write_record(copy, {"iterations": 4})
    assert toy_run(copy, resume=False) == 0  # --no-resume: a fresh start, the old files moved aside
    [aside] = copy.glob("previous-*")
    moved = ["bench_dense_run.json", "iter_2.pth", "iter_4.pth", "last_checkpoint"]  # nothing deleted
    assert sorted(p.name for p in aside.iterdir()) == moved
    assert sorted(p.name for p in copy.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]  # the new run's own


def test_toy_non_finite_loss_stops_before_that_iterations_checkpoint(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"work: non-finite loss at iteration 1 \(this rank: loss=inf\); the last"
    ):
        toy_run(tmp_path / "work", loss_weight=1e39, interval=1)  # float32 overflow
    assert not list((tmp_path / "work").glob("iter_*.pth"))


def test_a_failed_checkpoint_write_is_one_error_and_leaves_the_earlier_ones(tmp_path, monkeypatch):
    from mmengine.fileio.backends.local_backend import LocalBackend

    work = tmp_path / "work"
    put = LocalBackend.put

    def full_disk(self, obj, filepath):
        if "iter_4" in str(filepath):
            Path(filepath).write_bytes(obj[: len(obj) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", full_disk)
    with pytest.raises(CheckpointError) as e:  # a BenchError: the suite runner records a failed row
        toy_run(work)
    assert str(e.value) == (
        f"{work / 'iter_4.pth'}: cannot write checkpoint (OSError: [Errno 28] No space left on "
        f"device); the earlier checkpoints in {work} are intact"
    )
    assert sorted(p.name for p in work.iterdir() if p.suffix in (".pth", ".tmp")) == ["iter_2.pth"]
    assert (work / "last_checkpoint").read_text() == "iter_2.pth"
    monkeypatch.setattr(LocalBackend, "put", put)
    assert toy_run(work) == 2


# ------------------------------------------------------------------------------------------------
# runs (mmseg)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    from tasks.segmentation.ade_data import make_ade20k_dataset

    root = tmp_path_factory.mktemp("ade")
    make_ade20k_dataset(root, n_train=4, n_val=2, image_size=(64, 64), seed=0)
    return root / "ADEChallengeData2016"


def seg(ade, work, **kw):
    from tasks.segmentation.run import run_segmentation, seg_run

    return run_segmentation(
        seg_run(TINY, None, ade, crop_size=64, work_dir=work, **{"iters": 4, "ckpt_interval": 2, **kw})
    )


def test_segmentation_resumes_from_the_newest_readable_checkpoint(ade, tmp_path, capfd):
    work = tmp_path / "work"
    row = seg(ade, work)
    assert row["extra"]["start_iter"] == 0 and row["iterations"] == 4
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth", "iter_4.pth"]
    assert (work / "last_checkpoint").read_text() == "iter_4.pth"  # relative to the folder
    assert not list(work.glob(".*.tmp"))

    # a truncated newest checkpoint: the one before it
    data = (work / "iter_4.pth").read_bytes()
    (work / "iter_4.pth").write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    row = seg(ade, work)
    assert row["extra"]["start_iter"] == 2 and row["iterations"] == 4
    err = capfd.readouterr()
    assert f"{work / 'iter_4.pth'}: unreadable checkpoint, falling back to the one before" in err.out + err.err
    assert torch.load(work / "iter_4.pth", weights_only=False)["meta"]["iter"] == 4  # written again, whole

    # a checkpoint torch refuses to unpickle (weights_only), named by last_checkpoint: skipped
    torch.save({"meta": {"iter": 6}, "state_dict": {}, "x": argparse.Namespace()}, work / "iter_6.pth")
    (work / "last_checkpoint").write_text("iter_6.pth")
    assert seg(ade, work)["extra"]["start_iter"] == 4


def test_non_finite_loss_stops_segmentation_before_the_checkpoint(ade, tmp_path):
    work = tmp_path / "work"
    # loss_weight 1e39 overflows float32: the decode loss is inf at the first iteration
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 1 \(.*decode.loss_ce=inf") as e:
        seg(ade, work, iters=2, ckpt_interval=1, cfg_options={"model.decode_head.loss_decode.loss_weight": 1e39})
    assert e.value.exit_code == 3 and "\n" not in str(e.value)
    assert not list(work.glob("iter_*.pth"))


def test_cli_run_is_quiet_logs_everything_and_records_cfg_options(ade, tmp_path):
    from tasks.segmentation.run import hashed_config, load_config

    work, store = tmp_path / "work", tmp_path / "results.jsonl"
    opts = ["optim_wrapper.optimizer.lr=0.002", "model.decode_head.dropout_ratio=0.2"]
    p = _cli(
        "seg",
        "--backbone",
        TINY,
        "--data-root",
        ade,
        "--crop-size",
        64,
        "--iters",
        2,
        "--out",
        work,
        "--results",
        store,
        "--cfg-options",
        *opts,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) <= 4, lines  # the start line, where the log goes, the result
    assert lines[0] == "[seg] device cpu, dtype fp32, world 1, backend none"
    assert lines[-1].startswith("ADE20K UperNet random vit_test_patch8 seed 0: mIoU")
    [log] = work.glob("*/*.log")
    text = log.read_text()
    assert str(log) in lines[1]
    assert "System environment:" in text and "Config:" in text
    assert re.search(r"Iter\(train\) \[\d/2\]", text)  # mmengine's training log lines went to the file
    assert "lr=0.002" in text and "dropout_ratio=0.2" in text  # the options reached the config mmengine ran

    [row] = ResultsStore(store).rows()
    applied = {"optim_wrapper.optimizer.lr": 0.002, "model.decode_head.dropout_ratio": 0.2}
    assert row["extra"]["cfg_options"] == applied
    kw = dict(backbone=TINY, data_root=ade, work_dir=work, iters=2, crop_size=64)
    assert row["config_hash"] == config_hash(hashed_config(load_config("smoke", cfg_options=applied, **kw)))
    assert row["config_hash"] != config_hash(hashed_config(load_config("smoke", **kw)))
    assert json.loads((work / RUN_RECORD).read_text())["cfg_options"] == applied
    # continuing the folder without the options is refused, naming them
    p = _cli("seg", "--backbone", TINY, "--data-root", ade, "--crop-size", 64, "--iters", 2, "--out", work)
    assert p.returncode == 2 and "(cfg_options {" in p.stderr and len(p.stderr.strip().splitlines()) == 1
