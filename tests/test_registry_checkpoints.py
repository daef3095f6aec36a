"""Registry round-trips and safe checkpoint loading."""

import argparse

import pytest
import torch

from backbones import build_backbone, list_backbones
from backbones.mae import MaskedAutoencoder
from bench.core.checkpoint import load_checkpoint_file, save_atomic
from bench.core.errors import BenchError, CheckpointError


def _mae():
    return MaskedAutoencoder.from_arch("vit_test_patch8").eval()


def test_our_mae_checkpoint_loads_as_encoder(tmp_path):
    mae = _mae()
    save_atomic({"model": mae.state_dict(), "arch": mae.arch}, tmp_path / "m.pth")
    enc = build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "m.pth").eval()
    assert not any(k.startswith(("decoder_", "mask_token")) for k in enc.state_dict())
    x = torch.randn(2, 3, 32, 32)
    latent, _, _ = mae.forward_encoder(x, 0.0, noise=torch.arange(16.0).repeat(2, 1))
    torch.testing.assert_close(enc.forward_features(x), latent, atol=1e-5, rtol=0)


def test_official_mae_format_loads_with_no_missing_encoder_keys(tmp_path):
    """facebookresearch/mae pretraining files: {'model': sd} with decoder + mask_token keys, plus
    (in the real files) no 'arch' — MaskedAutoencoder.from_checkpoint infers it."""
    mae = _mae()
    torch.save({"model": mae.state_dict()}, tmp_path / "mae_visualize.pth")
    m2 = MaskedAutoencoder.from_checkpoint(tmp_path / "mae_visualize.pth", decoder_num_heads=2).eval()
    x = torch.randn(1, 3, 32, 32)
    noise = torch.rand(1, 16)
    torch.testing.assert_close(m2(x, 0.75, noise)[0], mae(x, 0.75, noise)[0])
    enc = build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "mae_visualize.pth")
    assert set(enc.state_dict()) <= set(mae.state_dict())


def test_pos_embed_resampled_for_other_input_size(tmp_path):
    save_atomic({"model": _mae().state_dict()}, tmp_path / "m.pth")
    enc = build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "m.pth", img_size=64)
    assert enc.pos_embed.shape == (1, 1 + 64, 32)
    assert enc.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 65, 32)


def test_list_and_unknown_names():
    names = list_backbones()
    assert "mae_vit_base_patch16" in names and "random_vit_large_patch16" in names
    with pytest.raises(BenchError, match="did you mean mae_vit_base_patch16"):
        build_backbone("mae_vit_bse_patch16")
    with pytest.raises(BenchError, match="needs --checkpoint"):
        build_backbone("mae_vit_test_patch8")
    assert build_backbone("random_vit_test_patch8").depth == 2


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "nope.pth")
    good = tmp_path / "m.pth"
    save_atomic({"model": _mae().state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "trunc.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint_file(tmp_path / "empty.pth")
    # another architecture: names the first mismatched key and both shapes
    big = MaskedAutoencoder(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    save_atomic({"model": big.state_dict()}, tmp_path / "big.pth")
    with pytest.raises(CheckpointError, match=r"key 'cls_token' has shape \(1, 1, 48\) in the file but \(1, 1, 32\)"):
        build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "big.pth")
    torch.save({"weights": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"unknown layout, top-level keys \['weights', 'epoch'\]"):
        build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "odd.pth")


def test_pickle_needing_code_is_refused_unless_trusted(tmp_path):
    # the real MAE / MoCo v3 files carry an argparse.Namespace next to the weights
    torch.save({"model": _mae().state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "ns.pth")
    with pytest.raises(CheckpointError, match="pass --trust-checkpoint"):
        build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "ns.pth")
    enc = build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "ns.pth", trust_checkpoint=True)
    assert enc.depth == 2


def test_save_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_atomic({"x": torch.zeros(3)}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []


def test_disk_space_check(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    du = namedtuple("du", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: du(10, 10, 1000))
    with pytest.raises(CheckpointError, match="not enough disk space"):
        save_atomic({"x": torch.zeros(1_000_000)}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []


def test_safetensors_roundtrip(tmp_path):
    enc = build_backbone("random_vit_test_patch8")
    save_atomic(enc.state_dict(), tmp_path / "enc.safetensors")
    enc2 = build_backbone("mae_vit_test_patch8", checkpoint=tmp_path / "enc.safetensors")
    for k, v in enc.state_dict().items():
        assert torch.equal(v, enc2.state_dict()[k])
