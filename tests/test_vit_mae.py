"""The encoder equals timm's ViT; MAE masking, loss and position embeddings are the official ones."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer as TimmViT

from backbones.mae import MaskedAutoencoder, num_keep
from backbones.vit import VisionTransformer, get_2d_sincos_pos_embed

CFG = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4)
LN = partial(nn.LayerNorm, eps=1e-6)


@pytest.mark.parametrize("extra", [dict(), dict(global_pool="avg"), dict(init_values=0.1), dict(num_classes=7)])
def test_encoder_equals_timm(extra):
    ours = VisionTransformer(**CFG, **extra).eval()
    ref = TimmViT(**CFG, **({"num_classes": 0} | extra), qkv_bias=True, norm_layer=LN).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_mae_encoder_at_mask_ratio_zero_equals_timm():
    mae = MaskedAutoencoder(**CFG, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2).eval()
    ref = TimmViT(**CFG, num_classes=0, norm_layer=LN).eval()
    ref.load_state_dict({k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))})
    x = torch.randn(2, 3, 32, 32)
    noise = torch.arange(16.0).repeat(2, 1)  # increasing noise keeps the original order
    latent, mask, _ = mae.forward_encoder(x, 0.0, noise=noise)
    assert mask.sum() == 0
    torch.testing.assert_close(latent, ref.forward_features(x), atol=1e-5, rtol=0)


def _official_sincos(embed_dim, grid_size, cls_token=False):
    """facebookresearch/mae util/pos_embed.py, verbatim in numpy."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def test_sincos_matches_official():
    ours = get_2d_sincos_pos_embed(64, 7, cls_token=True).numpy()
    np.testing.assert_allclose(ours, _official_sincos(64, 7, cls_token=True), atol=1e-6)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_keeps_round_n_and_restores(ratio):
    B, N, D = 4, 64, 8
    x = torch.randn(B, N, D)
    kept, mask, ids_restore = MaskedAutoencoder.random_masking(x, ratio)
    k = num_keep(N, ratio)
    assert k == round(N * (1 - ratio)) and kept.shape == (B, k, D)
    assert (mask.sum(1) == N - k).all()
    # ids_restore inverts the shuffle: un-shuffling [kept, zeros] puts every kept token back in place
    full = torch.cat([kept, torch.zeros(B, N - k, D)], 1)
    unshuffled = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    vis = mask == 0
    torch.testing.assert_close(unshuffled[vis], x[vis])


def test_noise_decides_mask_like_official():
    """The patches with the smallest noise are kept."""
    x = torch.randn(1, 16, 4)
    noise = torch.rand(1, 16)
    _, mask, _ = MaskedAutoencoder.random_masking(x, 0.75, noise)
    kept = set(torch.argsort(noise[0])[:4].tolist())
    assert set(torch.nonzero(mask[0] == 0).flatten().tolist()) == kept


def test_loss_only_on_masked_patches():
    mae = MaskedAutoencoder(**CFG, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    loss, pred, mask = mae(imgs, 0.75, noise)
    # changing the *target* pixels of a visible patch must not change the loss
    vis = torch.nonzero(mask[0] == 0)[0].item()
    target = mae.patchify(imgs)
    target[0, vis] += 5.0
    imgs2 = mae.unpatchify(target)
    assert torch.allclose(mae.forward_loss(imgs2, pred, mask), loss)
    masked = torch.nonzero(mask[0] == 1)[0].item()
    target[0, masked] += 5.0 * torch.randn_like(target[0, masked])
    assert not torch.allclose(mae.forward_loss(mae.unpatchify(target), pred, mask), loss)


def test_norm_pix_target_is_per_patch_normalised():
    mae = MaskedAutoencoder(**CFG, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    imgs = torch.randn(1, 3, 32, 32)
    mask = torch.ones(1, 16)
    t = mae.patchify(imgs)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert mae.forward_loss(imgs, t, mask).item() < 1e-10


def test_patchify_roundtrip_and_pos_embed_fixed():
    mae = MaskedAutoencoder(**CFG, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(mae.unpatchify(mae.patchify(x)), x)
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    torch.testing.assert_close(mae.pos_embed[0], get_2d_sincos_pos_embed(64, 4, cls_token=True))


def test_pos_embed_interpolates_to_other_sizes():
    vit = VisionTransformer(**CFG).eval()
    out = vit.forward_features(torch.randn(1, 3, 48, 64))
    assert out.shape == (1, 1 + 6 * 8, 64)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vit.forward_features(torch.randn(1, 3, 30, 32))


def test_zero_rel_pos_table_changes_nothing():
    x = torch.randn(2, 3, 32, 32)
    plain = VisionTransformer(**CFG).eval()
    rel = VisionTransformer(**CFG, use_rel_pos=True).eval()
    rel.load_state_dict(plain.state_dict(), strict=False)  # tables stay zero-initialised
    torch.testing.assert_close(rel.forward_features(x), plain.forward_features(x), atol=1e-5, rtol=0)


def test_window_attention_equals_global_when_one_window_covers_the_grid():
    from backbones.vit import Block

    tokens = torch.randn(2, 16, 64)  # a 4x4 grid, no cls token
    windowed = Block(64, 4, window_size=4).eval()
    glob = Block(64, 4).eval()
    glob.load_state_dict(windowed.state_dict())
    torch.testing.assert_close(windowed(tokens, (4, 4), with_cls=False), glob(tokens, (4, 4), with_cls=False))
    small = Block(64, 4, window_size=2).eval()
    small.load_state_dict(windowed.state_dict())
    assert not torch.allclose(small(tokens, (4, 4), with_cls=False), glob(tokens, (4, 4), with_cls=False))


def test_rel_pos_table_resize_keeps_values_on_same_grid_and_cls_rows():
    from backbones.vit import num_relative_distances, resize_rel_pos_table

    t = torch.randn(num_relative_distances((4, 4)), 3)
    assert resize_rel_pos_table(t, (4, 4), (4, 4)) is t
    r = resize_rel_pos_table(t, (4, 4), (6, 6))
    assert r.shape == (num_relative_distances((6, 6)), 3)
    torch.testing.assert_close(r[-3:], t[-3:])


def test_cpu_bf16_attention_runs_in_fp32_and_keeps_bias_and_gradients():
    import torch.nn.functional as F

    from backbones.vit import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8).bfloat16().requires_grad_() for _ in range(3))
    bias = torch.randn(1, 3, 17, 17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, bias)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias).bfloat16()
    assert torch.equal(out, ref)  # the fp32 kernel, rounded once at the end
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    # fp32 inputs are untouched by the rule: the plain kernel
    qf, kf, vf = (t.detach().float() for t in (q, k, v))
    assert torch.equal(attention(qf, kf, vf, bias), F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bias))


# --- ViTDet's decomposed relative position (use_rel_pos='decomposed') ---------------------------------
def _decomposed_reference(attn_mod, x, grid):
    """Attention with decomposed relative position written out per query/key pair from the MViTv2 /
    ViTDet definition: logit(i, j) = q_i.k_j * scale + q_i.Rh[hi - hj] + q_i.Rw[wi - wj], with
    R[d] the table row (size - 1) + d (same grid for queries and keys)."""
    B, N, C = x.shape
    nh = attn_mod.num_heads
    q, k, v = attn_mod.qkv(x).reshape(B, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
    h, w = grid
    logits = (q @ k.transpose(-2, -1)) * (C // nh) ** -0.5
    extra = torch.zeros_like(logits)
    for i in range(N):
        for j in range(N):
            hi, wi, hj, wj = i // w, i % w, j // w, j % w
            rh = attn_mod.rel_pos_h[(h - 1) + hi - hj]
            rw = attn_mod.rel_pos_w[(w - 1) + wi - wj]
            extra[:, :, i, j] = (q[:, :, i] * rh).sum(-1) + (q[:, :, i] * rw).sum(-1)
    out = (logits + extra).softmax(-1) @ v
    return attn_mod.proj(out.transpose(1, 2).reshape(B, N, C))


def test_decomposed_rel_pos_equals_its_definition_and_learns():
    from backbones.vit import Attention

    torch.manual_seed(0)
    attn = Attention(16, 2, rel_pos_grid=(3, 4), rel_pos_type="decomposed")
    assert attn.rel_pos_h.shape == (5, 8) and attn.rel_pos_w.shape == (7, 8)  # (2*size-1, head_dim)
    assert not attn.rel_pos_h.any() and not attn.rel_pos_w.any()  # zero-initialised, as detectron2
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 12, 16)
    out = attn(x, (3, 4), with_cls=False)
    torch.testing.assert_close(out, _decomposed_reference(attn, x, (3, 4)), atol=1e-5, rtol=0)
    out.square().sum().backward()
    assert attn.rel_pos_h.grad.abs().sum() > 0 and attn.rel_pos_w.grad.abs().sum() > 0


def test_decomposed_rel_pos_keys_zero_init_and_other_options_unchanged():
    plain = VisionTransformer(**CFG).eval()
    dec = VisionTransformer(**CFG, use_rel_pos="decomposed").eval()
    beit = VisionTransformer(**CFG, use_rel_pos=True)
    extra = set(dec.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.attn.rel_pos_{a}" for i in range(3) for a in "hw"}
    assert dec.blocks[0].attn.rel_pos_h.shape == (2 * 4 - 1, 64 // 4)
    assert set(beit.state_dict()) - set(plain.state_dict()) == {
        f"blocks.{i}.attn.relative_position_bias_table" for i in range(3)
    }
    dec.load_state_dict(plain.state_dict(), strict=False)  # zero tables: the plain ViT's function
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dec.forward_features(x), plain.forward_features(x), atol=1e-5, rtol=0)
    windowed = VisionTransformer(**CFG, use_rel_pos="decomposed", window_size=2, global_blocks=(2,))
    assert windowed.blocks[0].attn.rel_pos_h.shape == (3, 16) and windowed.blocks[2].attn.rel_pos_h.shape == (7, 16)
    with pytest.raises(ValueError, match="use_rel_pos 'shaw'"):
        VisionTransformer(**CFG, use_rel_pos="shaw")
