"""Checkpoint provenance is derived from the file, and only the paper's own kind of checkpoint
matches the paper."""

import hashlib
import json

import torch

from backbones.provenance import paper_difference, provenance_of


def _save(path, obj):
    torch.save(obj, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hub_named_release_must_match_its_sha256_prefix(tmp_path):
    blob = {"model": {"cls_token": torch.zeros(1, 1, 4)}}
    probe = tmp_path / "probe.pth"
    sha = _save(probe, blob)
    good = tmp_path / f"deit_base_patch16_224-{sha[:8]}.pth"
    probe.rename(good)
    prov = provenance_of(good, sha, blob)
    assert prov["source"] == "facebookresearch/deit" and prov["official"] and prov["data"] == "ImageNet-1K"
    assert prov["verified"] == f"sha256 prefix {sha[:8]} in its name"
    # the same name on another file is not the release
    bad = tmp_path / "deit_base_patch16_224-00000000.pth"
    other = _save(bad, {"model": {"cls_token": torch.ones(1, 1, 4)}})
    assert provenance_of(bad, other, torch.load(bad))["source"] == "unknown"
    # DeiT is not the paper's supervised recipe
    assert (
        paper_difference(prov, "supervised") == "facebookresearch/deit weights, paper: its own supervised recipe (A.2)"
    )


def test_releases_without_checksums_need_their_key_layout(tmp_path):
    path = tmp_path / "beit_large_patch16_224_pt22k.pth"
    blob = {"model": {"cls_token": torch.zeros(1)}}
    sha = _save(path, blob)
    prov = provenance_of(path, sha, blob)
    assert prov["data"] == "ImageNet-22K" and prov["verified"].startswith("file name and key layout")
    assert paper_difference(prov, "beit") == "data ImageNet-22K (paper: ImageNet-1K); epochs 150 (paper: 800)"
    assert provenance_of(path, sha, {"state_dict": {}})["source"] == "unknown"  # right name, wrong contents
    mae = tmp_path / "mae_pretrain_vit_base.pth"
    blob = {"model": {"cls_token": 0, "blocks.0.attn.qkv.weight": 0}}
    prov = provenance_of(mae, _save(mae, blob), blob)
    assert prov["source"] == "facebookresearch/mae" and paper_difference(prov, "mae") is None


def test_self_pretrained_and_unknown_never_match_the_paper(tmp_path):
    run = tmp_path / "pt"
    run.mkdir()
    (run / "train_settings.json").write_text(
        json.dumps(
            {"method": "mae", "data": "digits", "steps": 100, "batch_size": 32, "img_size": 32, "norm_pix_loss": True}
        )
    )
    blob = {"model": {}, "arch": "vit_demo_patch8", "init": "mae"}
    path = run / "pretrain.pth"
    prov = provenance_of(path, _save(path, blob), blob)
    assert prov == {
        "source": "self-pretrained",
        "verified": "its own run record",
        "method": "mae",
        "data": "digits",
        "steps": 100,
        "images_seen": 3200,
        "img_size": 32,
        "target": "pixel_norm",
    }
    assert paper_difference(prov, "mae") == "self-pretrained (100 steps on digits), not the paper's checkpoint"
    stray = tmp_path / "my.pth"
    prov = provenance_of(stray, _save(stray, {"model": {}}), {"model": {}})
    assert prov["source"] == "unknown" and paper_difference(prov, "mae") == "checkpoint of unknown provenance"
    assert paper_difference(None, "mae") == "checkpoint of unknown provenance"
    assert provenance_of(None) == {"source": "random", "verified": "no checkpoint"}
    assert paper_difference(provenance_of(None), "random") is None
