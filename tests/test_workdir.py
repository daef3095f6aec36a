"""The work-folder service (bench.core.workdir) on real files: newest readable checkpoint, the
settings guard, temp clean-up that spares other files, --no-resume moving files aside, refusals of
foreign checkpoints and of FIFOs, and the schedule-scaling rule."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch

from bench.core.checkpoint import load_checkpoint_file, save_atomic
from bench.core.errors import BenchError, CheckpointError
from bench.core.workdir import (
    WorkDir,
    check_checkpoint_settings,
    scale_milestones,
    scale_step,
)


def engine_dir(path):
    return WorkDir(path, pattern="checkpoint-*.pth", manifest="checkpoints.sha256", writes=("log.jsonl",))


def save(wd: WorkDir, step: int, **extra):
    return save_atomic({"step": step, **extra}, wd.path / f"checkpoint-{step:07d}.pth", checksums=wd.manifest_path)


def test_newest_readable_skips_corrupt_and_checks_manifest(tmp_path):
    wd = engine_dir(tmp_path)
    for s in (1, 2, 3):
        save(wd, s)
    assert [wd.step_of(p) for p in wd.checkpoints()] == [3, 2, 1]
    # step 3: bytes changed after saving (its manifest digest no longer fits); step 2: truncated
    p3 = tmp_path / "checkpoint-0000003.pth"
    data = bytearray(p3.read_bytes())
    data[-30] ^= 0xFF
    p3.write_bytes(bytes(data))
    p2 = tmp_path / "checkpoint-0000002.pth"
    p2.write_bytes(p2.read_bytes()[:50])
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint") as rec:
        path, state = wd.newest_readable(load_checkpoint_file)
    assert path.name == "checkpoint-0000001.pth" and state["step"] == 1
    assert len(rec) == 2 and "sha256 differs" in str(rec[0].message)


def test_finals_rank_newest(tmp_path):
    wd = WorkDir(tmp_path, pattern="model_*.pth", finals=("model_final.pth",))
    for name in ("model_0000009.pth", "model_final.pth", "model_0000019.pth", "model_x.pth"):
        torch.save({"iteration": 1}, tmp_path / name)
    assert [p.name for p in wd.checkpoints()] == ["model_final.pth", "model_0000019.pth", "model_0000009.pth"]


def test_foreign_step_refused(tmp_path):
    # step 6 of an earlier 6-step run must not continue a 3-step run
    wd = engine_dir(tmp_path)
    save(wd, 6)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-0000006.pth: checkpoint at step 6 of a longer run .*3 steps"
    ):
        wd.newest_readable(load_checkpoint_file, max_step=3)
    assert wd.newest_readable(load_checkpoint_file, max_step=6)[1]["step"] == 6
    # the step the state records, when the engine says so
    with pytest.raises(CheckpointError, match="step 7"):
        wd.newest_readable(lambda p: {"iteration": 7}, max_step=3, step_of_state=lambda s: s["iteration"])


def test_checkpoint_settings_refused():
    check_checkpoint_settings("c.pth", None, {"steps": 3})  # nothing recorded: nothing to compare
    check_checkpoint_settings("c.pth", {"steps": 3, "b": (1, 2)}, {"steps": 3, "b": [1, 2]})
    with pytest.raises(CheckpointError, match=r"c.pth: checkpoint of a run with other settings \(steps 6 -> 3\)"):
        check_checkpoint_settings("c.pth", {"steps": 6}, {"steps": 3})


def test_guard_names_first_differing_key(tmp_path):
    wd = engine_dir(tmp_path)
    first = {"checkpoint_sha256": "1a2b", "steps": 3, "blr": 0.1}
    wd.write_settings(first)
    wd.guard({**first, "steps": 4}, resume=True)  # no checkpoints yet: nothing to continue, no refusal
    save(wd, 1)
    wd.guard(first, resume=True)
    with pytest.raises(BenchError) as e:
        wd.guard({**first, "checkpoint_sha256": "3c4d", "steps": 5}, resume=True)
    msg = str(e.value)
    assert msg == (
        f"{tmp_path / 'train_settings.json'}: this folder holds a run with other settings "
        f"(checkpoint_sha256 '1a2b' -> '3c4d' and 1 more); use the same settings, another --out, or --no-resume"
    )
    assert "\n" not in msg
    wd.guard({**first, "steps": 5}, resume=False)  # --no-resume: not compared
    (tmp_path / "train_settings.json").unlink()
    with pytest.raises(BenchError, match="holds checkpoints but no run record"):
        wd.guard(first, resume=True)


@pytest.mark.parametrize("name", ["train_settings.json", "checkpoints.sha256", "checkpoint-0000002.pth"])
def test_fifo_refused_not_hung(tmp_path, name):
    wd = engine_dir(tmp_path)
    wd.write_settings({"a": 1})
    save(wd, 1)
    (tmp_path / name).unlink(missing_ok=True)
    os.mkfifo(tmp_path / name)
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=rf"{name}: not a regular file"):
        wd.guard({"a": 1}, resume=True)
    assert time.monotonic() - t0 < 5


def test_clean_temps_spares_user_files(tmp_path):
    wd = engine_dir(tmp_path)
    ours = [
        ".checkpoint-0000004.pth.k2j4h1x0.tmp",
        ".log.jsonl.ab12cd34.tmp",
        ".checkpoints.sha256.zz9y8x7w.tmp",
        ".train_settings.json.q1w2e3r4.tmp",
    ]
    theirs = [".thesis.draft2.tmp", ".notes.txt.ab12cd34.tmp", ".pretrain.pth.ab12cd34.tmp", "x.tmp"]
    for n in ours + theirs:
        (tmp_path / n).write_text("x")
        os.utime(tmp_path / n, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".log.jsonl.newnewnw.tmp"  # written after this process started: a live writer's
    fresh.write_text("x")
    removed = wd.clean_temps()
    assert sorted(p.name for p in removed) == sorted(ours)
    assert all((tmp_path / n).exists() for n in theirs) and fresh.exists()


def test_start_fresh_moves_aside(tmp_path):
    wd = engine_dir(tmp_path)
    wd.write_settings({"steps": 6})
    for s in (4, 6):
        save(wd, s)
    (tmp_path / "log.jsonl").write_text('{"step": 6}\n')
    (tmp_path / "mine.txt").write_text("user file")
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wd.checkpoints()}
    aside = wd.start_fresh()
    assert aside.name.startswith("previous-") and aside.parent == tmp_path
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        ["checkpoint-0000004.pth", "checkpoint-0000006.pth", "checkpoints.sha256", "log.jsonl", "train_settings.json"]
    )
    for n, d in digests.items():  # moved, not rewritten
        assert hashlib.sha256((aside / n).read_bytes()).hexdigest() == d
    assert wd.checkpoints() == [] and wd.newest_readable(load_checkpoint_file) is None
    assert (tmp_path / "mine.txt").read_text() == "user file"
    assert wd.start_fresh() is None  # nothing left to move
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [aside]


def test_prune_only_listed(tmp_path):
    wd = engine_dir(tmp_path)
    for s in (1, 2, 3, 4):
        save(wd, s)
    torch.save({"step": 0}, tmp_path / "checkpoint-0000000.pth")  # a user's copy, not in the manifest
    removed = wd.prune(2)
    assert sorted(p.name for p in removed) == ["checkpoint-0000001.pth", "checkpoint-0000002.pth"]
    assert [p.name for p in wd.checkpoints()] == [
        "checkpoint-0000004.pth",
        "checkpoint-0000003.pth",
        "checkpoint-0000000.pth",
    ]
    lines = (tmp_path / "checkpoints.sha256").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == ["checkpoint-0000003.pth", "checkpoint-0000004.pth"]


def test_scale_schedule_rule():
    # a 160k schedule with warm-up 1500 squeezed to 100 iterations
    assert [scale_step(v, 160_000, 100) for v in (0, 1500, 80_000, 160_000, 200_000)] == [0, 1, 50, 100, 100]
    assert scale_step(1, 1000, 10) == 1  # never squeezed to 0
    assert scale_milestones([120_000, 140_000], 160_000, 100) == [75, 88]
    # fvcore: strictly increasing, below the total
    assert scale_milestones([88, 96], 100, 3, distinct=True) == [1, 2]
    assert scale_milestones([99, 100], 100, 10, distinct=True) == [8, 9]
    with pytest.raises(BenchError, match=r"--iters 2: the step schedule has 2 milestones and needs at least 3"):
        scale_milestones([88, 96], 100, 2, distinct=True)
