"""Official checkpoint layouts -> our encoder (backbones/registry.py).

Each test builds the *source* model of a format with random weights (timm's VisionTransformer for
DeiT / MoCo v3 / MAE / mmpretrain, timm's Beit for BEiT), writes it in the official key names and
container, loads it through ``build_backbone`` and compares the features with the source model's.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from timm.models.beit import Beit, gen_relative_position_index
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT

from backbones import build_backbone
from backbones.registry import detect_format
from bench.core.errors import CheckpointError

torch.set_num_threads(1)

TEST_ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)  # = vit_test_patch8


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Every parameter random (biases, norms, tables, layer scales too): nothing may load by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def images(n=2, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_vit(**kw) -> TimmViT:
    cfg = dict(TEST_ARCH, num_classes=10, global_pool="token")
    cfg.update(kw)
    return randomize(TimmViT(**cfg))


def assert_same_features(src, ours, size=32):
    x = images(size=size)
    with torch.no_grad():
        a, b = src.forward_features(x), ours.eval().forward_features(x)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# supervised (DeiT / timm)
# ------------------------------------------------------------------------------------------------
def test_supervised_deit_container_matches_timm(tmp_path):
    src = timm_vit()
    path = tmp_path / "deit_test.pth"
    torch.save({"model": src.state_dict()}, path)
    ours = build_backbone("supervised_vit_test_patch8", checkpoint=path)
    assert_same_features(src, ours)
    assert isinstance(ours.head, torch.nn.Identity)  # classifier dropped


def test_supervised_bare_safetensors_matches_timm(tmp_path):
    from safetensors.torch import save_file

    src = timm_vit()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    assert_same_features(src, build_backbone("supervised_vit_test_patch8", checkpoint=path))


def test_supervised_refuses_distilled_deit(tmp_path):
    src = randomize(VisionTransformerDistilled(**TEST_ARCH, num_classes=10))
    path = tmp_path / "deit_distilled.pth"
    torch.save({"model": src.state_dict()}, path)
    with pytest.raises(CheckpointError, match="distilled DeiT.*dist_token"):
        build_backbone("supervised_vit_test_patch8", checkpoint=path)


# ------------------------------------------------------------------------------------------------
# MoCo v3
# ------------------------------------------------------------------------------------------------
def moco_mlp(num_layers, d_in, d_hidden, d_out):
    """moco-v3 builder.py ``_build_mlp``: Linear(no bias) [+BN+ReLU], last BN without affine."""
    layers = []
    for i in range(num_layers):
        a, b = d_in if i == 0 else d_hidden, d_out if i == num_layers - 1 else d_hidden
        layers.append(torch.nn.Linear(a, b, bias=False))
        if i < num_layers - 1:
            layers += [torch.nn.BatchNorm1d(b), torch.nn.ReLU(inplace=True)]
        else:
            layers.append(torch.nn.BatchNorm1d(b, affine=False))
    return torch.nn.Sequential(*layers)


def moco_checkpoint(src: TimmViT, momentum: bool = True) -> dict:
    """``main_moco.py``'s file: {'epoch','arch','state_dict','optimizer','scaler'}, DDP prefixes."""
    base = dict(src.state_dict())
    base = {k: v for k, v in base.items() if not k.startswith("head.")}
    proj = moco_mlp(3, src.embed_dim, 64, 16).state_dict()
    sd = {f"module.base_encoder.{k}": v for k, v in base.items()}
    sd.update({f"module.base_encoder.head.{k}": v for k, v in proj.items()})
    if momentum:
        sd.update({f"module.momentum_encoder.{k}": v + 1.0 for k, v in base.items()})
        sd.update({f"module.momentum_encoder.head.{k}": v for k, v in proj.items()})
    sd.update({f"module.predictor.{k}": v for k, v in moco_mlp(2, 16, 64, 16).state_dict().items()})
    return {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0]}]},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }


def test_mocov3_official_layout_matches_base_encoder(tmp_path):
    src = timm_vit(num_classes=0)
    path = tmp_path / "vit-t-300ep.pth.tar"
    torch.save(moco_checkpoint(src), path)
    assert detect_format(torch.load(path, weights_only=True)["state_dict"]) == "mocov3"
    ours = build_backbone("mocov3_vit_test_patch8", checkpoint=path)
    assert_same_features(src, ours)  # base encoder, not the (+1.0) momentum encoder


def test_mocov3_vit_small_is_built_with_12_heads(tmp_path):
    # moco-v3 vits.py: vit_small = embed 384, depth 12, num_heads 12. The file cannot tell.
    src = timm_vit(img_size=32, patch_size=16, embed_dim=384, depth=12, num_heads=12, num_classes=0)
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save(moco_checkpoint(src, momentum=False), path)
    ours = build_backbone("mocov3_vit_small_patch16", checkpoint=path, img_size=32)
    assert ours.blocks[0].attn.num_heads == 12
    assert_same_features(src, ours)
    wrong = build_backbone("mocov3_vit_small_patch16", checkpoint=path, img_size=32, num_heads=6)
    with torch.no_grad():
        diff = (wrong.eval().forward_features(images()) - src.forward_features(images())).abs().max()
    assert diff > 1e-2  # DeiT-S's 6 heads load without error but compute something else


def test_mocov3_converted_to_deit_file_loads(tmp_path):
    # moco-v3 convert_to_deit.py writes {'model': base encoder without head} in timm names
    src = timm_vit(num_classes=0)
    path = tmp_path / "converted.pth"
    torch.save({"model": src.state_dict()}, path)
    assert_same_features(src, build_backbone("mocov3_vit_test_patch8", checkpoint=path))


def test_mocov3_file_given_to_supervised_gets_a_hint(tmp_path):
    path = tmp_path / "moco.pth.tar"
    torch.save(moco_checkpoint(timm_vit(num_classes=0)), path)
    with pytest.raises(CheckpointError, match=r"looks like a mocov3 checkpoint: use the mocov3_<arch>"):
        build_backbone("supervised_vit_test_patch8", checkpoint=path)


# ------------------------------------------------------------------------------------------------
# BEiT
# ------------------------------------------------------------------------------------------------
def timm_beit(shared: bool, abs_pos: bool, qkv_bias: bool = True, init_values=0.1) -> Beit:
    return randomize(
        Beit(
            **TEST_ARCH,
            num_classes=0,
            global_pool="token",
            qkv_bias=qkv_bias,
            use_abs_pos_emb=abs_pos,
            use_rel_pos_bias=not shared,
            use_shared_rel_pos_bias=shared,
            init_values=init_values,
        ),
        std=0.2,
    )


def unilm_state_dict(src: Beit, pretrain: bool = True) -> dict:
    """timm's Beit names are unilm's (timm beit.py checkpoint_filter_fn only drops
    ``relative_position_index``); unilm also saves that buffer (persistent) and, in pretraining
    (modeling_pretrain.py), ``mask_token`` and ``lm_head``."""
    sd = dict(src.state_dict())
    grid = src.patch_embed.grid_size
    index = gen_relative_position_index(grid)
    if src.rel_pos_bias is not None:
        sd["rel_pos_bias.relative_position_index"] = index
    for i, blk in enumerate(src.blocks):
        if blk.attn.relative_position_bias_table is not None:
            sd[f"blocks.{i}.attn.relative_position_index"] = index
    if pretrain:
        sd["mask_token"] = torch.randn(1, 1, src.embed_dim)
        sd["lm_head.weight"] = torch.randn(64, src.embed_dim)
        sd["lm_head.bias"] = torch.randn(64)
    assert not any(k.endswith("k_bias") for k in sd)
    return sd


def test_beit_pretraining_layout_shared_table_no_abs_pos(tmp_path):
    # run_beit_pretraining.py defaults: shared rel-pos table, no absolute position embedding
    src = timm_beit(shared=True, abs_pos=False)
    path = tmp_path / "beit_base_patch16_224_pt22k.pth"
    torch.save({"model": unilm_state_dict(src)}, path)
    assert detect_format(torch.load(path, weights_only=True)["model"]) == "beit"
    ours = build_backbone("beit_vit_test_patch8", checkpoint=path)
    assert_same_features(src, ours)
    # the shared table is copied into every block; the zero pos_embed adds nothing
    t0 = ours.blocks[0].attn.relative_position_bias_table
    torch.testing.assert_close(ours.blocks[1].attn.relative_position_bias_table, t0)
    torch.testing.assert_close(t0, src.rel_pos_bias.relative_position_bias_table)
    assert float(ours.pos_embed.detach().abs().max()) == 0.0
    q, v = src.blocks[1].attn.q_bias, src.blocks[1].attn.v_bias
    torch.testing.assert_close(ours.blocks[1].attn.qkv.bias, torch.cat([q, torch.zeros_like(q), v]))
    torch.testing.assert_close(ours.blocks[0].ls2.gamma, src.blocks[0].gamma_2)


def test_beit_per_block_tables_with_abs_pos(tmp_path):
    src = timm_beit(shared=False, abs_pos=True)
    path = tmp_path / "beit_ft.pth"
    torch.save({"model": unilm_state_dict(src, pretrain=False)}, path)
    assert_same_features(src, build_backbone("beit_vit_test_patch8", checkpoint=path))


def test_beit_without_qkv_bias_or_layer_scale(tmp_path):
    src = timm_beit(shared=True, abs_pos=False, qkv_bias=False, init_values=None)
    path = tmp_path / "beit_plain.pth"
    torch.save({"model": unilm_state_dict(src)}, path)
    ours = build_backbone("beit_vit_test_patch8", checkpoint=path)
    assert_same_features(src, ours)
    assert torch.equal(ours.blocks[0].ls1.gamma.detach(), torch.ones(32))


def test_beit_tables_resized_for_a_larger_input(tmp_path):
    src = timm_beit(shared=True, abs_pos=False)
    path = tmp_path / "beit.pth"
    torch.save({"model": unilm_state_dict(src)}, path)
    ours = build_backbone("beit_vit_test_patch8", checkpoint=path, img_size=48)  # 4x4 -> 6x6 grid
    assert ours.blocks[0].attn.relative_position_bias_table.shape == (11 * 11 + 3, 2)
    # the 3 cls rows are carried over unchanged
    torch.testing.assert_close(
        ours.blocks[0].attn.relative_position_bias_table[-3:], src.rel_pos_bias.relative_position_bias_table[-3:]
    )
    out = ours.eval().forward_features(images(size=48))
    assert out.shape == (2, 37, 32) and torch.isfinite(out).all()


def test_beit_refuses_a_plain_vit(tmp_path):
    path = tmp_path / "mae.pth"
    torch.save({"model": timm_vit(num_classes=0).state_dict()}, path)
    with pytest.raises(CheckpointError, match="no layer scale.*not a BEiT checkpoint"):
        build_backbone("beit_vit_test_patch8", checkpoint=path)


# ------------------------------------------------------------------------------------------------
# MAE: official (timm names) and mmpretrain / mmselfsup
# ------------------------------------------------------------------------------------------------
def to_mmpretrain(sd: dict) -> dict:
    """timm -> mmpretrain names, as mmpretrain tools/model_converters/deit3_to_mmpretrain.py."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        n = k.replace("patch_embed.proj.", "patch_embed.projection.")
        if k.startswith("blocks."):
            n = "layers." + k[len("blocks.") :]
            for a, b in (
                (".norm1.", ".ln1."),
                (".norm2.", ".ln2."),
                (".mlp.fc1.", ".ffn.layers.0.0."),
                (".mlp.fc2.", ".ffn.layers.1."),
                (".ls1.gamma", ".attn.gamma1.weight"),
                (".ls2.gamma", ".ffn.gamma2.weight"),
            ):
                n = n.replace(a, b)
        elif k.startswith("norm."):
            n = "ln1." + k[len("norm.") :]
        out["backbone." + n] = v
    return out


def test_mae_official_pretrain_file_matches(tmp_path):
    src = timm_vit(num_classes=0)
    sd = dict(src.state_dict())
    sd.update(
        {
            "mask_token": torch.randn(1, 1, 16),
            "decoder_embed.weight": torch.randn(16, 32),
            "decoder_pred.weight": torch.randn(192, 16),
        }
    )
    path = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": sd}, path)
    assert_same_features(src, build_backbone("mae_vit_test_patch8", checkpoint=path))


def test_mmpretrain_mae_checkpoint_matches(tmp_path):
    src = timm_vit(num_classes=0)
    sd = to_mmpretrain(src.state_dict())
    assert "backbone.layers.1.ffn.layers.0.0.weight" in sd and "backbone.ln1.weight" in sd
    sd.update(
        {
            "neck.mask_token": torch.randn(1, 1, 16),
            "neck.decoder_embed.weight": torch.randn(16, 32),
            "neck.decoder_blocks.0.ln1.weight": torch.randn(16),
            "neck.decoder_pred.weight": torch.randn(192, 16),
        }
    )
    path = tmp_path / "mae_vit-test_mmpretrain.pth"
    torch.save({"meta": {"epoch": 400, "mmpretrain_version": "1.0.0"}, "state_dict": sd}, path)
    assert detect_format(sd) == "mmpretrain"
    assert_same_features(src, build_backbone("mae_vit_test_patch8", checkpoint=path))


def test_mmpretrain_layer_scale_names(tmp_path):
    src = timm_vit(num_classes=0, init_values=0.1)
    path = tmp_path / "deit3_mmpretrain.pth"
    torch.save({"state_dict": to_mmpretrain(src.state_dict())}, path)
    ours = build_backbone("supervised_vit_test_patch8", checkpoint=path, init_values=0.1)
    assert_same_features(src, ours)


def test_mmpretrain_unknown_backbone_key_is_named(tmp_path):
    sd = to_mmpretrain(timm_vit(num_classes=0).state_dict())
    sd["backbone.pre_norm.weight"] = torch.ones(32)  # CLIP-style pre-norm: no counterpart
    path = tmp_path / "clip_mm.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"'backbone\.pre_norm\.weight' has no counterpart"):
        build_backbone("mae_vit_test_patch8", checkpoint=path)


# ------------------------------------------------------------------------------------------------
# Bad inputs: one-line CheckpointErrors naming the file and the key
# ------------------------------------------------------------------------------------------------
def test_unknown_format_lists_first_keys_and_known_formats(tmp_path):
    path = tmp_path / "weird.pth"
    torch.save({f"encoder.layer{i}.w": torch.zeros(2) for i in range(12)}, path)
    with pytest.raises(CheckpointError) as e:
        build_backbone("supervised_vit_test_patch8", checkpoint=path)
    msg = str(e.value)
    assert str(path) in msg and "encoder.layer0.w" in msg and "encoder.layer9.w" in msg
    assert "encoder.layer10.w" not in msg  # first 10 only
    assert "known formats" in msg and "module.base_encoder" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "payload, pattern",
    [
        ([torch.zeros(3)], "holds a list, not a dict"),
        ({"weights": {"a": 1}, "step": 3}, r"unknown layout, top-level keys \['weights', 'step'\]"),
    ],
)
def test_wrong_container(tmp_path, payload, pattern):
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    for init in ("supervised", "mocov3", "beit", "mae"):
        with pytest.raises(CheckpointError, match=pattern):
            build_backbone(f"{init}_vit_test_patch8", checkpoint=path)


def test_missing_encoder_keys_are_named(tmp_path):
    sd = {k: v for k, v in timm_vit().state_dict().items() if not k.startswith("blocks.1.mlp")}
    path = tmp_path / "partial.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing 4 key\(s\) e\.g\. \['blocks\.1\.mlp\.fc1\.weight'"):
        build_backbone("supervised_vit_test_patch8", checkpoint=path)
    sd.pop("patch_embed.proj.weight")
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="patch_embed"):
        build_backbone("supervised_vit_test_patch8", checkpoint=path)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "vit32.pth"
    torch.save({"model": timm_vit().state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"key 'cls_token' has shape \(1, 1, 32\) in the file but \(1, 1, 48\) in the model"
    ):
        build_backbone("supervised_vit_test_patch8", checkpoint=path, embed_dim=48)


def test_pickled_objects_need_trust(tmp_path):
    # the official training scripts store their argparse.Namespace next to the weights
    src = timm_vit()
    path = tmp_path / "with_args.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(model="vit_test", epochs=800)}, path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*--trust-checkpoint"):
        build_backbone("supervised_vit_test_patch8", checkpoint=path)
    assert_same_features(src, build_backbone("supervised_vit_test_patch8", checkpoint=path, trust_checkpoint=True))


# --- detectron2 ViTDet trained layout (vitdet_ init) --------------------------------------------------
def _vitdet_detector_state(seed=0, cls_slot=True):
    """A detectron2 ViTDet Mask R-CNN state dict: our decomposed-rel-pos ViT's weights under
    ``backbone.net.`` (no cls token, no final norm: detectron2's ViT has neither), plus pyramid /
    head keys that must be dropped. Returns (state dict, the encoder it came from)."""
    from backbones.vit import VisionTransformer

    enc = randomize(VisionTransformer(**TEST_ARCH, use_rel_pos="decomposed", window_size=2, global_blocks=(1,)), seed)
    sd = {
        f"backbone.net.{k}": v.clone() for k, v in enc.state_dict().items() if not k.startswith(("cls_token", "norm."))
    }
    if not cls_slot:
        sd["backbone.net.pos_embed"] = sd["backbone.net.pos_embed"][:, 1:]
    sd["backbone.simfp_2.0.weight"] = torch.randn(32, 16, 2, 2)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(81, 1024)
    sd["pixel_mean"] = torch.zeros(3, 1, 1)
    return sd, enc


@pytest.mark.parametrize("cls_slot", [True, False])
def test_vitdet_detector_checkpoint_loads_through_the_registry(tmp_path, cls_slot):
    sd, enc = _vitdet_detector_state(cls_slot=cls_slot)
    torch.save({"model": sd, "iteration": 184374}, tmp_path / "model_final.pth")  # DetectionCheckpointer layout
    assert detect_format(sd) == "detectron2"
    ours = build_backbone(
        "vitdet_vit_test_patch8", tmp_path / "model_final.pth", window_size=2, global_blocks=(1,)
    ).eval()
    for k, v in enc.state_dict().items():
        if k.startswith(("blocks.", "patch_embed.")) or (k == "pos_embed" and cls_slot):
            torch.testing.assert_close(ours.state_dict()[k], v, msg=k)
    x = torch.randn(2, 3, 32, 32)
    enc.eval()
    if cls_slot:  # ViTDet drops the cls token after embedding: the cls slot and token do not matter
        torch.testing.assert_close(ours.forward_intermediates(x, [0, 1]), enc.forward_intermediates(x, [0, 1]))
    with pytest.raises(CheckpointError, match="use the vitdet_<arch> backbone"):
        build_backbone("mae_vit_test_patch8", tmp_path / "model_final.pth")


@pytest.mark.parametrize("shape", [(544,), (1, 1, 17, 32), (1, 17, 16)])
def test_vitdet_pos_embed_of_another_shape_is_one_line(tmp_path, shape):
    sd, _ = _vitdet_detector_state()
    sd["backbone.net.pos_embed"] = torch.zeros(shape)
    torch.save({"model": sd}, tmp_path / "model_final.pth")
    want = f"key 'backbone.net.pos_embed' has shape {tuple(shape)}, a ViTDet backbone needs (1, h*w, 32)"
    with pytest.raises(CheckpointError, match=re.escape(want)):
        build_backbone("vitdet_vit_test_patch8", tmp_path / "model_final.pth", window_size=2, global_blocks=(1,))


def test_vitdet_pkl_needs_trust_and_rel_pos_tables_are_resized(tmp_path):
    import pickle

    sd, enc = _vitdet_detector_state()
    f = tmp_path / "model_final_61ccd1.pkl"  # detectron2 model zoo: pickled numpy arrays
    with open(f, "wb") as fh:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo"}, fh)
    with pytest.raises(CheckpointError, match="pickle.*--trust-checkpoint"):
        build_backbone("vitdet_vit_test_patch8", f, window_size=2, global_blocks=(1,))
    ours = build_backbone("vitdet_vit_test_patch8", f, trust_checkpoint=True, window_size=2, global_blocks=(1,))
    torch.testing.assert_close(ours.blocks[1].attn.rel_pos_h, enc.blocks[1].attn.rel_pos_h)
    # at 64 px the global block's tables need 2*8-1 rows: linear interpolation, as detectron2's get_rel_pos
    big = build_backbone(
        "vitdet_vit_test_patch8", f, trust_checkpoint=True, img_size=64, window_size=2, global_blocks=(1,)
    )
    ref = torch.nn.functional.interpolate(enc.blocks[1].attn.rel_pos_h.T[None], size=15, mode="linear")[0].T
    torch.testing.assert_close(big.blocks[1].attn.rel_pos_h, ref)
    torch.testing.assert_close(big.blocks[0].attn.rel_pos_h, enc.blocks[0].attn.rel_pos_h)  # window tables keep size
    with pytest.raises(CheckpointError, match="built without them"):
        build_backbone("vitdet_vit_test_patch8", f, trust_checkpoint=True, use_rel_pos=True)


def test_beit_without_abs_pos_embed_stays_without_one_when_fine_tuned(tmp_path):
    # BEiT's own segmentation recipe has no absolute position embedding; the zero one we supply for
    # such a file must not be learned (it is frozen), while a file that has one keeps it trainable.
    path = tmp_path / "beit_no_abs.pth"
    torch.save({"model": timm_beit(shared=True, abs_pos=False).state_dict()}, path)
    no_abs = build_backbone("beit_vit_test_patch8", checkpoint=path, img_size=64)
    assert not no_abs.pos_embed.any() and not no_abs.pos_embed.requires_grad
    assert "pos_embed" not in {n for n, p in no_abs.named_parameters() if p.requires_grad}
    path = tmp_path / "beit_abs.pth"
    torch.save({"model": timm_beit(shared=False, abs_pos=True).state_dict()}, path)
    with_abs = build_backbone("beit_vit_test_patch8", checkpoint=path, img_size=64)
    assert with_abs.pos_embed.any() and with_abs.pos_embed.requires_grad
