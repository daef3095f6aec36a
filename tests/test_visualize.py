"""bench visualize: Fig. 2 triplets by default, Fig. 4's sweep on request, a caption that says how the
pixels were un-normalised and where the images come from, and the CLI's file and input rules."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.data import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]


def bench(*args):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-step MAE (vit_test_patch8: 32 px, 4 x 4 patches of 8 px) pretrained on the embedded photos."""
    from backbones.pretrainers import pretrain

    out = tmp_path_factory.mktemp("mae")
    torch.set_num_threads(1)
    return pretrain("mae", "vit_test_patch8", out, steps=1, batch_size=2, data="embedded", progress=False)


def _patches(img: np.ndarray, p: int = 8) -> np.ndarray:
    """(H, W, 3) -> (H/p * W/p, p*p*3), row-major like MAE's patchify."""
    h, w, _ = img.shape
    return img.reshape(h // p, p, w // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p * p * 3)


def test_fig2_triplets_masked_reconstruction_original(checkpoint):
    from backbones.mae import MaskedAutoencoder
    from bench.visualize import _images, panels

    model = MaskedAutoencoder.from_checkpoint(checkpoint).eval()
    imgs, phrase = _images("embedded", 32, 3, seed=0)
    rows, cols = panels(model, imgs, [0.75])
    assert cols == ["masked (75%)", "reconstruction", "original"]
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    for row, x in zip(rows, imgs):
        masked, rec, original = row
        # the original, un-normalised by hand: x * std + mean
        want = (x.permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + mean).clip(0, 1)
        np.testing.assert_allclose(original, want, atol=1e-6)
        # 25 % of the 16 patches are visible (= the original), 75 % are drawn in the mean colour
        same = np.all(np.abs(_patches(masked) - _patches(original)) < 1e-6, axis=1)
        grey = np.all(np.abs(_patches(masked) - np.tile(mean, 64)) < 1e-6, axis=1)
        assert same.sum() == 4 and grey.sum() == 12 and not np.any(same & grey)


def test_fig4_sweep_pastes_the_visible_patches_back(checkpoint):
    from backbones.mae import MaskedAutoencoder
    from bench.visualize import _images, panels

    model = MaskedAutoencoder.from_checkpoint(checkpoint).eval()
    imgs, _ = _images("embedded", 32, 2, seed=1)
    rows, cols = panels(model, imgs, [0.5, 0.75], sweep=True)
    assert cols == [
        "original",
        "masked (50%)",
        "reconstruction (50%)",
        "+ visible (50%)",
        "masked (75%)",
        "reconstruction (75%)",
        "+ visible (75%)",
    ]
    for row in rows:
        original = _patches(row[0])
        for k, visible in ((1, 8), (4, 4)):
            masked, rec, pasted = map(_patches, row[k : k + 3])
            kept = np.all(np.abs(masked - original) < 1e-6, axis=1)
            assert kept.sum() == visible
            np.testing.assert_allclose(pasted[kept], original[kept], atol=1e-6)
            np.testing.assert_allclose(pasted[~kept], rec[~kept], atol=1e-6)


def test_caption_states_unnormalisation_and_image_source(checkpoint):
    from backbones.mae import MaskedAutoencoder
    from bench.visualize import _trained_on, caption, title_note

    model = MaskedAutoencoder.from_checkpoint(checkpoint)
    assert model.norm_pix_loss
    assert _trained_on(checkpoint, "embedded") is True  # train_settings.json beside it says data: embedded
    assert _trained_on(checkpoint, "digits") is False  # the eval digits: read by no pretraining
    text = caption(model, "3 of the 19 embedded photos", True)
    for fragment in (
        "training images of this checkpoint",
        "0.229, 0.224, 0.225",
        "0.485, 0.456, 0.406",
        "each visible patch's own mean and std",
        "never the masked patch's own",
    ):
        assert fragment in text
    assert "not this checkpoint's training images" in caption(model, "x", False)
    assert "visible patches' statistics" in title_note(model)


def _masked_patch_ids(model, imgs, ratio, seed=0):
    """(B, N) bool, True where ``reconstruct`` removes the patch (same noise as it draws)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(imgs.shape[0], model.pos_grid[0] * model.pos_grid[1], generator=g)
    _, mask, _ = model.random_masking(model.patch_embed(imgs), ratio, noise)
    return mask.bool()


def test_masked_reconstruction_does_not_read_the_masked_pixels(checkpoint):
    """The leak of the old figure: masked patches were un-normalised with their own (original)
    mean and std. Rescale and shift only the masked patches' pixels: the encoder never sees them,
    so every panel of the reconstruction at the masked patches must stay the same."""
    from backbones.mae import MaskedAutoencoder
    from bench.visualize import reconstruct

    model = MaskedAutoencoder.from_checkpoint(checkpoint).eval()
    assert model.norm_pix_loss
    imgs, _ = _images_for(model)
    removed = _masked_patch_ids(model, imgs, 0.75)
    assert removed.sum(1).tolist() == [12, 12, 12]
    m = model.unpatchify(removed.float().unsqueeze(-1).expand(-1, -1, 64 * 3)).bool()
    changed = torch.where(m, imgs * 3.0 + 1.0, imgs)
    _, rec, pasted = reconstruct(model, imgs, 0.75)
    _, rec2, pasted2 = reconstruct(model, changed, 0.75)
    torch.testing.assert_close(rec2[m], rec[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pasted2[m], pasted[m], rtol=1e-5, atol=1e-5)
    # the leaking version would fail here: every masked patch's own mean or std really moved
    before, after = model.patchify(imgs)[removed], model.patchify(changed)[removed]
    moved = torch.maximum((after.mean(-1) - before.mean(-1)).abs(), (after.std(-1) - before.std(-1)).abs())
    assert moved.min() > 0.1


def _images_for(model):
    from bench.visualize import _images

    return _images("embedded", model.pos_grid[0] * model.patch_size, 3, seed=0)


def test_visible_patch_stats_match_a_hand_computed_weighting(checkpoint):
    from backbones.mae import MaskedAutoencoder
    from bench.visualize import visible_patch_stats

    model = MaskedAutoencoder.from_checkpoint(checkpoint).eval()
    imgs, _ = _images_for(model)
    removed = _masked_patch_ids(model, imgs, 0.75)
    mean, var = visible_patch_stats(model, imgs, removed.float())
    for b in range(len(imgs)):
        patches = _patches(imgs[b].permute(1, 2, 0).numpy().astype(np.float64))  # (16, 192) in (p, p, C) order
        own_mean, own_var = patches.mean(1), patches.var(1, ddof=1)
        grid = [(i // 4, i % 4) for i in range(16)]
        visible = [j for j in range(16) if not removed[b, j]]
        for i in range(16):
            if not removed[b, i]:
                want_m, want_v = own_mean[i], own_var[i]
            else:
                w = np.array(
                    [1 / max(1, (grid[i][0] - grid[j][0]) ** 2 + (grid[i][1] - grid[j][1]) ** 2) for j in visible]
                )
                want_m = (w * own_mean[visible]).sum() / w.sum()
                want_v = (w * own_var[visible]).sum() / w.sum()
            assert mean[b, i, 0].item() == pytest.approx(want_m, rel=1e-4, abs=1e-5)
            assert var[b, i, 0].item() == pytest.approx(want_v, rel=1e-4, abs=1e-5)


def test_column_order_matches_the_help():
    """``bench visualize --help`` states Fig. 2's columns; the figure draws them in that order."""
    import re

    from bench.visualize import panels

    r = bench("visualize", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    stated = re.search(r"\(([a-z +]+(?: \| [a-z +]+)+),", text)[1].split(" | ")
    assert stated == ["masked", "reconstruction", "original"]
    torch.manual_seed(0)
    from backbones.mae import MaskedAutoencoder

    model = MaskedAutoencoder.from_arch("vit_test_patch8", img_size=32).eval()
    _, cols = panels(model, torch.randn(1, 3, 32, 32), [0.75])
    assert [c.split(" (")[0] for c in cols] == stated


def test_visualize_cli_adds_png_and_writes_the_caption(checkpoint, tmp_path):
    r = bench("visualize", "--checkpoint", checkpoint, "--out", tmp_path / "vis", "--n", "2", "--images", "digits")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "vis").exists()
    from PIL import Image

    with Image.open(tmp_path / "vis.png") as im:
        assert im.format == "PNG" and im.width > 400
    assert r.stdout.strip() == f"wrote {tmp_path / 'vis.png'}"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--mask-ratio", "1.0"], "--mask-ratio must be in (0, 1), got 1.0"),
        (["--mask-ratios", "0.5", "0"], "--mask-ratios must be in (0, 1), got 0.0"),
        (["--images", "/no/such/folder"], "--images '/no/such/folder': not"),
    ],
)
def test_visualize_refuses_bad_input_in_one_line(checkpoint, tmp_path, args, fragment):
    r = bench("visualize", "--checkpoint", checkpoint, "--out", tmp_path / "f.png", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert not (tmp_path / "f.png").exists()


def test_visualize_refuses_a_token_target_mae_in_one_line(tmp_path):
    """An MAE trained with the token target (Table 7) predicts code ids: nothing to draw as pixels."""
    from backbones.mae import MaskedAutoencoder
    from backbones.pretrainers.common import export_backbone
    from backbones.pretrainers.mae import build_mae

    torch.manual_seed(0)
    path = export_backbone(build_mae("vit_test_patch8", vocab_size=16), tmp_path, "mae", extra={"target": "tokens"})
    assert MaskedAutoencoder.from_checkpoint(path).target == "tokens"
    r = bench("visualize", "--checkpoint", path, "--out", tmp_path / "f.png")
    assert r.returncode == 2, r.stderr
    want = f"error: {path}: an MAE trained with the token target predicts token ids, not pixels; nothing to reconstruct"
    assert r.stderr.strip().splitlines() == [want]
    assert not (tmp_path / "f.png").exists()
