"""The CLI: bad input gives one line on stderr, exit status 2, and leaves nothing half-written."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def bench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def assert_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = [l for l in r.stderr.strip().splitlines() if l.startswith("error: ")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in err[0], (f, err[0])


def test_help_lists_commands():
    r = bench("--help")
    assert r.returncode == 0
    for cmd in ("run", "pretrain", "visualize", "backbones", "det", "seg", "cls", "table", "perf"):
        assert cmd in r.stdout


def test_backbones_lists_names():
    r = bench("backbones", "--init", "mae")
    assert r.returncode == 0 and "mae_vit_base_patch16" in r.stdout and "random_" not in r.stdout


@pytest.mark.parametrize("setup,args,fragments", [
    ("empty", ["--data", "{d}"], ["contains no images", "{d}"]),
    ("missing", ["--data", "{d}/nope"], ["does not exist", "nope"]),
    ("unreadable", ["--data", "{d}"], ["none of its 2 image files can be read"]),
    (None, ["--mask-ratio", "1.5"], ["--mask-ratio must be in (0, 1), got 1.5"]),
    (None, ["--mask-ratio", "0"], ["--mask-ratio must be in (0, 1)"]),
    (None, ["--img-size", "36"], ["--img-size 36 is not divisible by the patch size 8"]),
    (None, ["--arch", "vit_gigantic"], ["unknown architecture 'vit_gigantic'"]),
])
def test_pretrain_bad_input(tmp_path, setup, args, fragments):
    d = tmp_path / "imgs"
    d.mkdir()
    if setup == "unreadable":
        (d / "a.jpg").write_bytes(b"not a jpeg")
        (d / "b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    args = [a.format(d=d) for a in args]
    r = bench("pretrain", "--arch", "vit_test_patch8", "--out", out, "--steps", "1", "--batch-size", "2", "--no-progress", *args)
    assert_error(r, *[f.format(d=d) for f in fragments])
    assert not out.exists() or not any(out.iterdir())


def test_pretrain_skips_unreadable_images_with_a_warning(tmp_path):
    from PIL import Image
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (i * 60, 20, 200)).save(d / f"{i}.png")
    (d / "bad.jpg").write_bytes(b"garbage")
    r = bench("pretrain", "--arch", "vit_test_patch8", "--data", d, "--out", tmp_path / "run", "--steps", "2",
              "--batch-size", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "skipping 1 unreadable image" in r.stderr
    assert (tmp_path / "run" / "pretrain.pth").exists()


def test_visualize_bad_checkpoints(tmp_path):
    assert_error(bench("visualize", "--checkpoint", tmp_path / "none.pth", "--out", tmp_path / "f.png"),
                 "checkpoint not found", "none.pth")
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04" + b"\0" * 50)
    assert_error(bench("visualize", "--checkpoint", tmp_path / "trunc.pth", "--out", tmp_path / "f.png"),
                 "corrupt or truncated", "trunc.pth")
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 1)}}, tmp_path / "enc.pth")
    assert_error(bench("visualize", "--checkpoint", tmp_path / "enc.pth", "--out", tmp_path / "f.png"),
                 "not an MAE pretraining checkpoint", "patch_embed.proj.weight")
    assert not (tmp_path / "f.png").exists()


def test_pretrain_then_visualize_end_to_end(tmp_path):
    r = bench("pretrain", "--arch", "vit_test_patch8", "--out", tmp_path / "run", "--steps", "3", "--batch-size", "4",
              "--no-progress")
    assert r.returncode == 0, r.stderr
    r = bench("visualize", "--checkpoint", tmp_path / "run" / "pretrain.pth", "--out", tmp_path / "fig.png", "--n", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_perf_pretrain_prints_ratios_for_a_tiny_model():
    r = bench("perf", "pretrain", "--arch", "vit_test_patch8", "--img-size", "32", "--batch-size", "2", "--iters", "1",
              "--decoder-depths", "1", "--baseline")
    assert r.returncode == 0, r.stderr
    assert "matmul peak" in r.stdout and "wall ratio" in r.stdout
    rows = [l.split() for l in r.stdout.splitlines() if l.strip().startswith("1 ")]
    assert [row[1] for row in rows] == ["bf16", "fp32"]
    flop_ratio = float(rows[0][5].rstrip("x"))
    assert flop_ratio > 1.5  # the encoder sees 25 % of the tokens: the mask-token model does more work


def test_perf_seg_times_a_tiny_upernet():
    r = bench("perf", "seg", "--config", "smoke", "--backbone", "random_vit_test_patch8", "--crop", "64",
              "--batch-size", "2", "--iters", "1")
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.strip().startswith("bf16:")]
    assert line and float(line[0].split()[1]) > 0  # img/s
