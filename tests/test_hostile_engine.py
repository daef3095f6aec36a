"""Hostile inputs and faults around the training engine, its checkpoints and the classification
readers: each test builds the fault, and checks the run refuses it in one line (``BenchError``,
exit 2 through the CLI, nothing new on disk) or survives it with the right numbers."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backbones.pretrainers.mae import build_mae
from bench.core.checkpoint import (
    CheckpointError,
    check_disk_space,
    file_size_bound,
    load_checkpoint_file,
    load_state_dict_checked,
    save_atomic,
)
from bench.core.data import pretrain_dataset
from bench.core.engine import CHECKSUMS, RUN_RECORD, TrainConfig, checkpoint_paths, fit
from bench.core.errors import BenchError, DataError, NonFiniteLossError
from bench.core.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_test_patch8"


def mae_loss(m, x):
    return m(x, 0.75)[0], {}


def train(out, steps=4, settings=None, model=None, resume=True, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(
        out_dir=str(out),
        steps=steps,
        progress=False,
        **{"batch_size": 4, "blr": 1e-3, "warmup_steps": 1, "ckpt_every": 2, **kw},
    )
    return fit(
        model or build_mae(ARCH), pretrain_dataset("embedded", 32, 16), mae_loss, cfg, resume=resume, settings=settings
    )


def losses(out):
    return [json.loads(line)["loss"] for line in open(Path(out) / "log.jsonl")]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def bench_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def assert_one_error_line(r, fragment):
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: "), r.stderr[-2000:]
    assert fragment in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------
# Checkpoint pruning touches only the engine's own files
# ------------------------------------------------------------------------------------------------
def test_pruning_deletes_only_the_checkpoints_the_engine_wrote(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = {"checkpoint-0-mine.pth": b"user data", "checkpoint-best.pth": b"best", "checkpoint-12.pth.bak": b"b"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    train(out, steps=6, keep_last=2)
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-0000006.pth", "checkpoint-0000004.pth"]
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    # the checksum file lists exactly the kept checkpoints
    listed = sorted(line.split("  ")[1] for line in (out / CHECKSUMS).read_text().splitlines())
    assert listed == ["checkpoint-0000004.pth", "checkpoint-0000006.pth"]


def test_a_best_checkpoint_is_not_a_resume_candidate(tmp_path):
    """A training checkpoint saved by hand as checkpoint-best.pth sorts after the numbered ones by
    name; resuming from it would start the new run at its step."""
    train(tmp_path / "other", steps=2, seed=1)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tmp_path / "other" / "checkpoint-0000002.pth", out / "checkpoint-best.pth")
    train(out, steps=4)
    train(tmp_path / "fresh", steps=4)
    assert losses(out) == losses(tmp_path / "fresh")  # started at step 0, as in an empty folder
    assert losses(out)[:2] != losses(tmp_path / "other")


@pytest.mark.parametrize("keep_last", [0, -1])
def test_keep_last_below_one_is_refused_before_anything_is_written(tmp_path, keep_last):
    with pytest.raises(BenchError, match=f"--keep-last must be >= 1, got {keep_last}"):
        train(tmp_path / "run", keep_last=keep_last)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Resume checks the settings of the run it continues
# ------------------------------------------------------------------------------------------------
def test_resume_refuses_a_run_with_other_settings_naming_the_key(tmp_path):
    out = tmp_path / "run"
    train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.75})
    before = snapshot(out)
    with pytest.raises(
        BenchError,
        match=rf"{RUN_RECORD}: this folder holds a run with other settings "
        r"\(mask_ratio 0.75 -> 0.9\); use the same settings",
    ):
        train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.9})
    with pytest.raises(BenchError, match=r"other settings \(blr 0.001 -> 0.002\)"):
        train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.75}, blr=2e-3)
    # another architecture: the model's signature (parameter names and shapes) differs
    from backbones.mae import MaskedAutoencoder

    wide = MaskedAutoencoder(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    with pytest.raises(BenchError, match=r"other settings \(model 'MaskedAutoencoder: \d+ tensors"):
        train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.75}, model=wide)
    assert snapshot(out) == before
    # the same settings continue; resume=False starts over with the new ones
    train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.75}, num_workers=1, keep_last=3)
    train(out, steps=2, settings={"method": "mae", "mask_ratio": 0.9}, resume=False)
    assert json.loads((out / RUN_RECORD).read_text())["mask_ratio"] == 0.9


def test_cli_pretrain_resume_with_another_method_or_batch_is_one_line(tmp_path):
    common = ["--arch", ARCH, "--steps", "2", "--epoch-size", "16", "--no-progress", "--out", tmp_path / "run"]
    r = bench_cli("pretrain", "--method", "mae", "--batch-size", "8", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    before = snapshot(tmp_path)
    r = bench_cli("pretrain", "--method", "supervised", "--batch-size", "8", *common, cwd=tmp_path)
    assert_one_error_line(r, f"{tmp_path / 'run' / RUN_RECORD}: this folder holds a run with other settings")
    r = bench_cli("pretrain", "--method", "mae", "--batch-size", "4", *common, cwd=tmp_path)
    assert_one_error_line(r, "other settings (batch_size 8 -> 4)")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# Checkpoints: checksums, odd files, odd dtypes, disk space
# ------------------------------------------------------------------------------------------------
def test_flipped_bytes_inside_a_checkpoint_are_detected_and_resume_falls_back(tmp_path):
    ref = tmp_path / "ref"
    train(ref, steps=4)
    out = tmp_path / "run"
    train(out, steps=4)
    newest = out / "checkpoint-0000004.pth"
    weight = torch.load(newest, weights_only=True)["model"]["decoder_pred.weight"]
    data = bytearray(newest.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())
    assert at > 0
    data[at : at + 64] = bytes(64)  # 16 weights zeroed: the zip still opens, torch.load does not notice
    newest.write_bytes(bytes(data))
    assert not torch.equal(torch.load(newest, weights_only=True)["model"]["decoder_pred.weight"], weight)
    with pytest.raises(CheckpointError, match="sha256 differs from the one recorded"):
        load_checkpoint_file(newest, sha256=(out / CHECKSUMS).read_text().split()[2])
    with pytest.warns(UserWarning, match="falling back.*sha256"):
        train(out, steps=4)  # resumes from step 2 and redoes 3-4
    assert losses(out) == losses(ref)


def test_a_text_file_given_as_a_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "notes.pth").write_text("these are my notes\n")
    with pytest.raises(
        CheckpointError, match=r"is not a PyTorch checkpoint \(a text file; it starts with b'these are my'\)"
    ):
        load_checkpoint_file(tmp_path / "notes.pth")
    (tmp_path / "blob.pth").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match=r"not a zip archive or a pickle"):
        load_checkpoint_file(tmp_path / "blob.pth")
    from tasks.classification.datasets import make_image_folder

    make_image_folder(tmp_path / "d", n_train_per_class=2, n_val_per_class=1, num_classes=2, image_size=32)
    before = snapshot(tmp_path)
    r = bench_cli(
        "cls",
        "--protocol",
        "linear",
        "--dataset",
        "folder",
        "--data-root",
        tmp_path / "d",
        "--backbone",
        "mae_vit_test_patch8",
        "--checkpoint",
        tmp_path / "notes.pth",
        "--config",
        "smoke",
        "--batch-size",
        "2",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert_one_error_line(r, f"checkpoint {tmp_path / 'notes.pth'} is not a PyTorch checkpoint (a text file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_non_floating_weights_for_floating_parameters_are_refused(dtype):
    model = torch.nn.Linear(3, 2)
    sd = {"weight": torch.ones(2, 3, dtype=dtype), "bias": torch.zeros(2)}
    # what load_state_dict alone does: casts silently (complex loses its imaginary part)
    plain = torch.nn.Linear(3, 2)
    if dtype is not torch.complex64:
        plain.load_state_dict(sd)
        assert plain.weight.dtype == torch.float32
    with pytest.raises(CheckpointError, match=rf"key 'weight' holds {dtype} values where the model has torch.float32"):
        load_state_dict_checked(model, sd, path="w.pth")


def test_disk_guard_asks_for_the_file_size_not_a_fixed_16_mib(tmp_path, monkeypatch):
    for obj in ({"x": torch.zeros(1 << 18)}, {"model": build_mae(ARCH).state_dict()}):  # 1 MiB; a model
        save_atomic(obj, tmp_path / "c.pth")
        size = (tmp_path / "c.pth").stat().st_size
        assert size <= file_size_bound(obj) <= size + (2 << 20)
    import shutil as sh
    from collections import namedtuple

    du = namedtuple("du", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: du(1 << 30, 0, 14 << 20))
    check_disk_space(tmp_path, file_size_bound({"x": torch.zeros(1 << 18)}))  # 1 MiB with 14 MiB free
    monkeypatch.setattr(sh, "disk_usage", lambda p: du(1 << 30, 0, 1 << 20))
    with pytest.raises(CheckpointError, match="not enough disk space"):
        check_disk_space(tmp_path, file_size_bound({"x": torch.zeros(1 << 18)}))


# ------------------------------------------------------------------------------------------------
# Options the engine refuses
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,fragment",
    [(("--epochs", "inf"), "--epochs a finite number > 0"), (("--workers", "-1"), "--workers must be >= 0, got -1")],
)
def test_cli_pretrain_refuses_infinite_epochs_and_negative_workers(tmp_path, option, fragment):
    r = bench_cli(
        "pretrain",
        "--arch",
        ARCH,
        "--out",
        tmp_path / "run",
        "--batch-size",
        "4",
        "--epoch-size",
        "8",
        "--no-progress",
        *option,
        cwd=tmp_path,
    )
    assert_one_error_line(r, fragment)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Classification: results that would be silently wrong
# ------------------------------------------------------------------------------------------------
def test_nonfinite_trained_model_gives_no_row(tmp_path):
    """A backbone whose final norm is scaled by 1e30 gives features whose variance overflows: the
    linear probe's BatchNorm trains on batch statistics (finite loss) but its running variance is
    inf, so every evaluation logit is the bias (a 50 % 'ok' row without the check)."""
    from backbones import build_backbone
    from tasks.classification.datasets import make_image_folder
    from tasks.classification.run import run_classification

    root = make_image_folder(tmp_path / "d", n_train_per_class=8, n_val_per_class=4, num_classes=2, image_size=32)
    sd = build_backbone("random_vit_test_patch8").state_dict()
    sd["norm.weight"] = sd["norm.weight"] * 1e30
    torch.save({"model": sd}, tmp_path / "big.pth")
    with pytest.raises(NonFiniteLossError, match=r"the trained model has non-finite values in 'head\.0\.running_var'"):
        run_classification(
            "linear",
            "folder",
            root,
            "mae_vit_test_patch8",
            tmp_path / "big.pth",
            out_dir=tmp_path / "out",
            config={"batch_size": 8},
            epochs=2,
            progress=False,
            results=tmp_path / "results",
        )
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "results").exists()


def test_one_class_dataset_is_refused(tmp_path):
    from tasks.classification.datasets import make_image_folder, make_inat_dataset, read_splits

    make_image_folder(tmp_path / "f", n_train_per_class=2, n_val_per_class=1, num_classes=1, image_size=8)
    with pytest.raises(DataError, match=r"folder has 1 class \(\['0_zero'\]\); classification needs at least 2"):
        read_splits("folder", tmp_path / "f")
    make_inat_dataset(tmp_path / "i", 2018, n_train_per_class=2, n_val_per_class=1, num_classes=1, image_size=8)
    with pytest.raises(DataError, match="inat2018 has 1 class"):
        read_splits("inat2018", tmp_path / "i")


def test_a_class_folder_linked_into_the_dataset_is_refused(tmp_path):
    from tasks.classification.datasets import make_image_folder, read_splits

    root = make_image_folder(tmp_path / "d", n_train_per_class=2, n_val_per_class=1, num_classes=2, image_size=8)
    train, val = read_splits("folder", root)
    assert len(train) == 4 and len(val) == 2
    os.symlink(root, root / "train" / "2_two")  # rglob would read root/val/... as training images
    with pytest.raises(DataError, match=r"2_two: is a symlink into the dataset itself"):
        read_splits("folder", root)
    os.unlink(root / "train" / "2_two")
    shutil.move(root / "val" / "1_one", tmp_path / "elsewhere")
    os.symlink(root / "train" / "1_one", root / "val" / "1_one")  # validating on the training images
    with pytest.raises(DataError, match=r"val/1_one: is a symlink into the dataset itself"):
        read_splits("folder", root)
    os.unlink(root / "val" / "1_one")
    # a class folder stored elsewhere (another disk) is fine
    os.symlink(tmp_path / "elsewhere", root / "val" / "1_one")
    assert len(read_splits("folder", root)[1]) == 2


def test_an_image_listed_in_train_and_val_is_refused(tmp_path):
    from tasks.classification.datasets import PLACES205_LISTS, make_places205_dataset, read_splits

    root = make_places205_dataset(tmp_path / "p", n_train_per_class=2, n_val_per_class=1, num_classes=2, image_size=8)
    assert len(read_splits("places205", root)[1]) == 2
    first = (root / PLACES205_LISTS["train"]).read_text().splitlines()[0]  # 'a/abbey/00000001.jpg 0'
    with open(root / PLACES205_LISTS["val"], "a") as f:
        f.write(first + "\n")
    with pytest.raises(DataError, match=r"1 image\(s\) are in both train and val, first: .*a/abbey/00000001.jpg"):
        read_splits("places205", root)


def test_a_bad_image_read_in_a_loader_worker_is_one_line_naming_it(tmp_path):
    from tasks.classification.datasets import ImageDataset, make_image_folder, read_split
    from tasks.classification.run import run_classification

    root = make_image_folder(tmp_path / "d", n_train_per_class=4, n_val_per_class=2, num_classes=2, image_size=32)
    bad = sorted((root / "train").rglob("*.jpg"))[1]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 200] = b"\xff" * 200  # corrupt mid-file
    bad.write_bytes(bytes(data))
    import torchvision.transforms as T

    dataset = ImageDataset(read_split("folder", root, "train"), T.Compose([T.Resize(32), T.ToTensor()]))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=2, batch_size=4, progress=False, num_workers=1)
    with pytest.raises(DataError) as e:
        fit(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)),
            dataset,
            lambda m, b: (torch.nn.functional.cross_entropy(m(b[0]), b[1]), {}),
            cfg,
        )
    assert str(e.value).startswith(f"{bad}: cannot read image") and "\n" not in str(e.value)
    # evaluation (its own loader, 1 worker) on a corrupt validation image
    bad_val = sorted((root / "val").rglob("*.jpg"))[0]
    bad_val.write_bytes(bytes(data))
    bad.unlink()
    with pytest.raises(DataError) as e:
        run_classification(
            "linear",
            "folder",
            root,
            "random_vit_test_patch8",
            out_dir=tmp_path / "cls",
            config={"batch_size": 4, "num_workers": 1, "cache_features": False},
            epochs=1,
            progress=False,
        )
    assert str(e.value).startswith(f"{bad_val}: cannot read image") and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# Output hygiene
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "t.csv", "a,b\n")
        save_atomic({"x": torch.zeros(2)}, tmp_path / "c.pth")
        with open(tmp_path / "plain.txt", "w") as f:  # what open() gives: the reference
            f.write("x")
    finally:
        os.umask(old)
    for name in ("t.csv", "c.pth", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_stale_temp_files_of_a_killed_writer_are_cleaned(tmp_path):
    old_tmp = tmp_path / ".table.csv.k3j2_x9a.tmp"  # left by a writer killed an hour ago
    live_tmp = tmp_path / ".table.csv.zz81ab_q.tmp"  # being written now by another process
    other = tmp_path / ".other.csv.abcdefgh.tmp"  # another target's: not this write's business
    for p in (old_tmp, live_tmp, other):
        p.write_text("partial")
    hour_ago = time.time() - 3600
    os.utime(old_tmp, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    atomic_write_text(tmp_path / "table.csv", "a\n")
    assert not old_tmp.exists() and live_tmp.exists() and other.exists()
    # the engine cleans the temp files of its own files at start, and nobody else's
    out = tmp_path / "run"
    out.mkdir()
    for name in (".checkpoint-0000008.pth.abc_1234.tmp", ".log.jsonl.qwerty12.tmp", ".thesis.draft2.tmp"):
        (out / name).write_bytes(b"half")
        os.utime(out / name, (hour_ago, hour_ago))
    train(out, steps=2)
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == [".thesis.draft2.tmp"]
    assert (out / ".thesis.draft2.tmp").read_bytes() == b"half"


# ------------------------------------------------------------------------------------------------
# --no-resume, foreign checkpoints, FIFOs, a full disk, unbounded sizes
# ------------------------------------------------------------------------------------------------
def test_no_resume_moves_the_previous_run_aside_and_never_resumes_it(tmp_path):
    out = tmp_path / "run"
    train(out, steps=6)  # checkpoints 4 and 6
    old = {p.name: p.read_bytes() for p in checkpoint_paths(out)}
    train(out, steps=3, resume=False)
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1
    assert {n: (aside[0] / n).read_bytes() for n in old} == old  # moved, byte for byte
    assert (aside[0] / RUN_RECORD).is_file() and (aside[0] / CHECKSUMS).is_file()
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-0000003.pth", "checkpoint-0000002.pth"]
    res = train(out, steps=3)  # resumes this run's step 3, not the other run's step 6
    assert res.steps == 3
    train(tmp_path / "fresh", steps=3)
    assert losses(out) == losses(tmp_path / "fresh")
    state = torch.load(out / "checkpoint-0000003.pth", weights_only=False)
    fresh = torch.load(tmp_path / "fresh" / "checkpoint-0000003.pth", weights_only=False)
    assert all(torch.equal(state["model"][k], fresh["model"][k]) for k in fresh["model"])


def test_resume_refuses_a_longer_runs_step_and_a_checkpoint_of_other_settings(tmp_path):
    train(tmp_path / "six", steps=6)
    out = tmp_path / "three"
    train(out, steps=3)
    shutil.copy(tmp_path / "six" / "checkpoint-0000006.pth", out)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-0000006.pth: checkpoint at step 6 of a longer run than this one \(3 steps\)"
    ):
        train(out, steps=3)
    (out / "checkpoint-0000006.pth").unlink()
    # a step-4 checkpoint of a run with another lr, dropped into a folder whose own record fits
    train(tmp_path / "other", steps=4, blr=2e-3)
    out = tmp_path / "four"
    train(out, steps=4)
    shutil.copy(tmp_path / "other" / "checkpoint-0000004.pth", out)
    sums = [line for line in (out / CHECKSUMS).read_text().splitlines() if "checkpoint-0000004" not in line]
    (out / CHECKSUMS).write_text("".join(line + "\n" for line in sums))
    with pytest.raises(CheckpointError, match=r"checkpoint of a run with other settings \(blr 0.002 -> 0.001\)"):
        train(out, steps=4)


@pytest.mark.parametrize("name", [RUN_RECORD, CHECKSUMS])
def test_a_fifo_in_the_run_folder_is_refused_not_waited_on(tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / name)
    t0 = time.monotonic()
    r = bench_cli(
        "pretrain",
        "--arch",
        ARCH,
        "--steps",
        "1",
        "--epoch-size",
        "8",
        "--batch-size",
        "4",
        "--no-progress",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert_one_error_line(r, f"{out / name}: not a regular file")
    assert time.monotonic() - t0 < 120
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_a_full_disk_while_logging_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch):
    import errno

    import bench.core.trainer as trainer_module

    class FullAfter:
        """log.jsonl opened for appending, on a disk that fills after ``n`` lines."""

        def __init__(self, f, n):
            self.f, self.n = f, n

        def write(self, text):
            if self.n == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n -= 1
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "open", lambda p, mode="r": FullAfter(open(p, mode), 2), raising=False)
    with pytest.raises(BenchError) as e:
        train(out, steps=4)  # step 3's line does not fit; step 2's checkpoint is on disk
    assert str(e.value) == (
        f"{out / 'log.jsonl'}: cannot write (No space left on device); the checkpoints in {out} are intact "
        f"and the same command resumes once there is room"
    )
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-0000002.pth"]
    monkeypatch.undo()
    train(out, steps=4)
    train(tmp_path / "fresh", steps=4)
    assert losses(out) == losses(tmp_path / "fresh")


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"img_size": 100_000}, "--img-size 100000: must be an integer in 1..1024"),
        ({"epoch_size": 10**12}, "--epoch-size 1000000000000: must be an integer in 1..10000000"),
        ({"steps": 10**12}, "--steps 1000000000000: at most 10000000"),
        ({"epochs": 1e9}, "--epochs 1e+09: at most 100000"),
    ],
)
def test_unbounded_sizes_are_refused_before_anything_is_built(tmp_path, kw, fragment):
    from backbones.pretrainers import pretrain

    with pytest.raises(BenchError, match=fragment.replace("+", "\\+")):
        pretrain("mae", ARCH, tmp_path / "run", progress=False, **kw)
    assert not (tmp_path / "run").exists()


def test_a_refused_classification_run_writes_nothing(tmp_path):
    from tasks.classification.datasets import make_image_folder

    make_image_folder(tmp_path / "d", n_train_per_class=2, n_val_per_class=1, num_classes=2, image_size=32)
    before = snapshot(tmp_path)
    r = bench_cli(
        "cls",
        "--protocol",
        "linear",
        "--dataset",
        "folder",
        "--data-root",
        tmp_path / "d",
        "--backbone",
        "random_vit_test_patch8",
        "--config",
        "smoke",
        "--batch-size",
        "64",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert_one_error_line(
        r, "the training split has 4 images, fewer than one global batch of 64; pass --batch-size N (N <= 4)"
    )
    assert snapshot(tmp_path) == before


def test_pretrain_no_resume_moves_the_earlier_export_aside_too(tmp_path):
    from backbones.pretrainers.mae import pretrain_mae

    out = tmp_path / "run"
    kw = dict(epoch_size=16, batch_size=4, progress=False, warmup_steps=0)
    first = pretrain_mae(ARCH, out, steps=2, **kw).read_bytes()
    pretrain_mae(ARCH, out, steps=1, resume=False, seed=1, **kw)
    (aside,) = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert (aside / "pretrain.pth").read_bytes() == first
    assert sorted(p.name for p in aside.glob("checkpoint-*.pth")) == ["checkpoint-0000002.pth"]
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-0000001.pth"]
    assert (out / "pretrain.pth").read_bytes() != first
