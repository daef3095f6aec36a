"""Crash safety and determinism of the training engine, through the real CLI."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--arch",
    "vit_test_patch8",
    "--steps",
    "40",
    "--batch-size",
    "8",
    "--ckpt-every",
    "4",
    "--epoch-size",
    "64",
    "--blr",
    "1e-3",
    "--no-progress",
]


def _cmd(out):
    return [sys.executable, "-m", "bench.cli", "pretrain", "--out", str(out), *ARGS]


def _log(out):
    return [json.loads(l) for l in open(out / "log.jsonl")]


def test_sigkill_mid_training_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref), check=True, capture_output=True, cwd=ROOT, timeout=600)

    out = tmp_path / "killed"
    p = subprocess.Popen(_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-0000008.pth").exists():
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "pretrain.pth").exists()
    leftovers = [f.name for f in out.iterdir() if f.name.endswith(".tmp")]  # a kill mid-save leaves only a temp file
    assert all(n.startswith(".") for n in leftovers)

    r = subprocess.run(_cmd(out), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resumed at step" in r.stdout
    assert [h["loss"] for h in _log(out)] == [h["loss"] for h in _log(ref)]
    a = torch.load(ref / "pretrain.pth", weights_only=True)["model"]
    b = torch.load(out / "pretrain.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_different_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        cmd = _cmd(out) + ["--seed", str(seed)]
        cmd[cmd.index("40")] = "6"  # --steps 6
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=600)
        runs[name] = torch.load(out / "pretrain.pth", weights_only=True)["model"]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


import pytest


@pytest.mark.parametrize("method", ["mae", "mocov3", "beit", "supervised"])
def test_every_pretrainer_is_deterministic_in_its_seed(tmp_path, method):
    from backbones.pretrainers import pretrain

    kw = dict(steps=2, batch_size=8, epoch_size=32, progress=False, warmup_epochs=0)
    if method == "beit":
        kw["tokenizer_train"] = dict(steps=2, warmup_epochs=0)
    a = torch.load(pretrain(method, "vit_test_patch8", tmp_path / "a", **kw), weights_only=True)["model"]
    b = torch.load(pretrain(method, "vit_test_patch8", tmp_path / "b", **kw), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
