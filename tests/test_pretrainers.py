"""The small-scale pretrainers (backbones/pretrainers): each one trains (its loss goes down), exports a
``pretrain.pth`` that the registry loads as an encoder, and the method-specific pieces (MoCo's
momentum encoder, BEiT's blockwise masking and tokenizer) do what the official code does."""

from __future__ import annotations

import inspect
import json
import math
import random
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from backbones import build_backbone
from backbones.pretrainers import DEMO_DEFAULTS, PRETRAINERS, pretrain
from backbones.pretrainers.beit import (
    BeitPretrainModel,
    BeitTransform,
    BlockMaskingGenerator,
    VQTokenizer,
    load_tokenizer,
    masking_for,
    pretrain_beit,
    save_tokenizer,
)
from backbones.pretrainers.common import encoder_config, image_dataset
from backbones.pretrainers.mocov3 import (
    MoCoV3,
    mocov3_loss,
    mocov3_sincos_pos_embed,
    mocov3_transform,
    momentum_at,
    momentum_hook,
    pretrain_mocov3,
)
from backbones.pretrainers.supervised import EmbeddedLabelled, pretrain_supervised
from backbones.vit import get_2d_sincos_pos_embed
from bench.core.engine import SeededDataset, TrainConfig, fit
from bench.core.errors import BenchError, CheckpointError, DataError

torch.set_num_threads(1)  # the sandbox's cores are shared: more threads only spin

ARCH = "vit_test_patch8"
QUIET = dict(progress=False, resume=False)


def losses(out_dir, key="loss"):
    return [json.loads(line)[key] for line in open(out_dir / "log.jsonl")]


def assert_decreases(values, k=5, margin=0.05):
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    print(f"loss: first {k} steps mean {first:.4f}, last {k} steps mean {last:.4f} (required margin {margin})")
    assert last < first - margin, f"loss did not go down: first {k} mean {first:.4f}, last {k} mean {last:.4f}"
    return first, last


def assert_loads_as_encoder(init, path, img=32):
    enc = build_backbone(f"{init}_{ARCH}", checkpoint=path).eval()
    with torch.no_grad():
        out = enc.forward_features(torch.randn(2, 3, img, img))
    assert out.shape == (2, 1 + (img // 8) ** 2, 32) and torch.isfinite(out).all()
    return enc


# ------------------------------------------------------------------------------------------------
# the uniform interface
# ------------------------------------------------------------------------------------------------
def test_pretrainers_share_one_signature_and_demo_defaults_are_accepted():
    assert set(PRETRAINERS) == set(DEMO_DEFAULTS) == {"mae", "mocov3", "beit", "supervised"}
    train_fields = set(inspect.signature(TrainConfig).parameters)
    for name, fn in PRETRAINERS.items():
        params = inspect.signature(fn).parameters
        assert list(params)[:2] == ["arch", "out_dir"], name
        for p, default in (("data", "embedded"), ("img_size", None), ("epoch_size", 1024), ("resume", True)):
            assert params[p].kind is inspect.Parameter.KEYWORD_ONLY and params[p].default == default, (name, p)
        own = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown = set(DEMO_DEFAULTS[name]) - own - train_fields
        assert not unknown, f"DEMO_DEFAULTS[{name!r}] has options {unknown} that {fn.__name__} does not take"
    with pytest.raises(BenchError, match="unknown pretraining method 'simclr'"):
        pretrain("simclr", ARCH, "/nonexistent")


# ------------------------------------------------------------------------------------------------
# MoCo v3
# ------------------------------------------------------------------------------------------------
def test_momentum_schedule_values():
    assert momentum_at(0.0) == pytest.approx(0.99)
    assert momentum_at(1.0) == pytest.approx(1.0)
    assert momentum_at(0.5) == pytest.approx(0.995)
    assert momentum_at(0.25, m0=0.9) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi / 4)) * 0.1)  # 0.914645


def small_moco(**kw):
    torch.manual_seed(0)
    return MoCoV3(encoder_config("mocov3", ARCH), dim=8, mlp_dim=16, **kw)


def test_momentum_update_is_an_ema_of_every_base_parameter():
    model = small_moco()
    base, mom = list(model.base_encoder.parameters()), list(model.momentum_encoder.parameters())
    assert len(base) == len(mom) and all(not p.requires_grad for p in mom)
    with torch.no_grad():
        for pb, pm in zip(base, mom):
            pb.fill_(1.0)
            pm.fill_(0.0)
    model.update_momentum_encoder(0.9)
    assert all(torch.allclose(pm, torch.full_like(pm, 0.1)) for pm in mom)
    with torch.no_grad():
        for pb in base:
            pb.fill_(2.0)
    model.update_momentum_encoder(0.5)  # 0.5 * 0.1 + 0.5 * 2
    assert all(torch.allclose(pm, torch.full_like(pm, 1.05)) for pm in mom)
    # the projector is part of the EMA, the predictor is not in the momentum branch
    names = [n for n, _ in model.momentum_encoder.named_parameters()]
    assert any(n.startswith("head.") for n in names)


def test_momentum_hook_in_fit_follows_the_cosine_schedule(tmp_path):
    """With lr 0 the base encoder is fixed; starting the momentum encoder at 0, after steps
    1..S it is base * (1 - prod_s m(s/S))."""
    model = small_moco()
    with torch.no_grad():
        for pm in model.momentum_encoder.parameters():
            pm.zero_()
    base = [p.detach().clone() for p in model.base_encoder.parameters()]
    ds = [(torch.randn(3, 32, 32), torch.randn(3, 32, 32)) for _ in range(8)]
    S = 3
    fit(
        model,
        ds,
        mocov3_loss,
        TrainConfig(out_dir=str(tmp_path), batch_size=4, steps=S, lr=0.0, progress=False),
        after_step=momentum_hook(model, m0=0.9),
        resume=False,
    )
    keep = float(np.prod([momentum_at(s / S, 0.9) for s in range(1, S + 1)]))
    assert keep == pytest.approx(0.925 * 0.975 * 1.0)  # m(1/3) m(2/3) m(1): far from a constant 0.9 ** 3
    for pb, b0, pm in zip(model.base_encoder.parameters(), base, model.momentum_encoder.parameters()):
        torch.testing.assert_close(pb.detach(), b0)  # lr 0: unchanged
        torch.testing.assert_close(pm.detach(), b0 * (1 - keep), atol=1e-6, rtol=1e-5)


def test_mocov3_contrastive_loss_matches_the_formula():
    model = small_moco(T=0.2)
    q, k = torch.randn(6, 8), torch.randn(6, 8)
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    logits = qn @ kn.T / 0.2
    expected = -(logits.diag() - logits.logsumexp(dim=1)).mean() * 0.4
    torch.testing.assert_close(model.contrastive_loss(q, k), expected)


def test_mocov3_frozen_patch_projection_and_sincos_layout():
    model = small_moco(stop_grad_conv1=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_encoder.patch_embed.proj.weight" not in trainable and "base_encoder.pos_embed" not in trainable
    assert not any(n.startswith("momentum_encoder.") for n in trainable)
    assert "base_encoder.blocks.0.attn.qkv.weight" in trainable and "predictor.0.weight" in trainable
    # moco-v3 vits.py layout: the first quarter of channels encodes the ROW (meshgrid(grid_w, grid_h)),
    # MAE's the column: the two differ, which is why converters never regenerate pos_embed.
    pe = mocov3_sincos_pos_embed(32, (4, 4))[0]
    row1_col0, row0_col1 = pe[1 + 4], pe[1 + 1]
    assert row1_col0[0] == pytest.approx(math.sin(1.0)) and row0_col1[0] == pytest.approx(0.0)
    mae = get_2d_sincos_pos_embed(32, (4, 4), cls_token=True)
    assert mae[1 + 1][0] == pytest.approx(math.sin(1.0)) and not torch.allclose(pe, mae)
    torch.testing.assert_close(model.base_encoder.pos_embed.detach()[0], pe)


def test_mocov3_views_differ_and_pretraining_reduces_the_loss(tmp_path):
    v1, v2 = mocov3_transform(32)(EmbeddedLabelled(lambda x: x, 19).images[0])
    assert v1.shape == v2.shape == (3, 32, 32) and not torch.allclose(v1, v2)
    torch.manual_seed(0)
    path = pretrain_mocov3(
        ARCH, tmp_path, epoch_size=256, dim=16, mlp_dim=64, batch_size=32, steps=25, lr=1e-3, warmup_steps=3, **QUIET
    )
    first, last = assert_decreases(losses(tmp_path), margin=0.3)
    assert path == tmp_path / "pretrain.pth"
    enc = assert_loads_as_encoder("mocov3", path)
    sd = torch.load(path, weights_only=True)
    assert sd["init"] == "mocov3" and any(k.startswith("head.") for k in sd["model"])  # projector kept, dropped on load
    torch.testing.assert_close(enc.patch_embed.proj.weight, sd["model"]["patch_embed.proj.weight"])


def test_mocov3_resume_is_exact_with_the_momentum_encoder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(
        epoch_size=64, dim=8, mlp_dim=16, batch_size=8, steps=4, lr=1e-3, ckpt_every=2, keep_last=5, progress=False
    )
    torch.manual_seed(0)
    pretrain_mocov3(ARCH, a, resume=False, **kw)
    shutil.copytree(a, b)
    (b / "checkpoint-0000004.pth").unlink()
    torch.manual_seed(123)  # model init differs: resume must restore everything from step 2
    pretrain_mocov3(ARCH, b, resume=True, **kw)
    sa = torch.load(a / "checkpoint-0000004.pth", weights_only=True)["model"]
    sb = torch.load(b / "checkpoint-0000004.pth", weights_only=True)["model"]
    assert any(k.startswith("momentum_encoder.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert losses(a) == losses(b)


# ------------------------------------------------------------------------------------------------
# BEiT
# ------------------------------------------------------------------------------------------------
def test_blockwise_masking_ratio_and_contiguity():
    gen = BlockMaskingGenerator((14, 14), 75, min_num_patches=16)  # BEiT's ViT-B/16 setting
    random.seed(0)
    rng = np.random.default_rng(0)
    counts, comps, random_comps = [], [], []
    for _ in range(200):
        m = gen()
        assert m.shape == (14, 14) and set(np.unique(m)) <= {0, 1}
        counts.append(int(m.sum()))
        comps.append(ndimage.label(m)[1])
        r = np.zeros(196, int)
        r[rng.permutation(196)[:75]] = 1
        random_comps.append(ndimage.label(r.reshape(14, 14))[1])
    assert max(counts) <= 75 and 0.36 <= np.mean(counts) / 196 <= 75 / 196
    assert np.mean(comps) < 3 < 10 < np.mean(random_comps)  # a few blocks, not scattered patches
    # scaled-down grids keep the ratio and the block size fraction
    g = masking_for((8, 8), 0.4)
    assert (g.num_masking_patches, g.min_num_patches) == (26, 5)
    random.seed(1)
    a = g()
    random.seed(1)
    assert np.array_equal(a, g())  # seeded by the engine per sample: reproducible


def test_beit_model_replaces_masked_patches_by_the_mask_token():
    torch.manual_seed(0)
    model = BeitPretrainModel(encoder_config("beit", ARCH), vocab_size=16).eval()
    tables = [b.attn.relative_position_bias_table for b in model.encoder.blocks]
    assert all(t is tables[0] for t in tables)  # shared relative position bias
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    y = x.clone()
    y[:, :, :8, :8] += 5.0  # patch 0 (masked) changes: features must not
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x, mask), model.forward_features(y, mask))
        assert model(x, mask).shape == (10, 16)
        assert not torch.allclose(model.forward_features(x, mask), model.forward_features(x, torch.zeros_like(mask)))


def test_beit_pretraining_tokenizer_then_masked_image_modelling(tmp_path):
    torch.manual_seed(0)
    path = pretrain_beit(
        ARCH,
        tmp_path,
        epoch_size=256,
        vocab_size=32,
        batch_size=32,
        steps=25,
        lr=1e-3,
        warmup_steps=2,
        tokenizer_train=dict(steps=60, lr=3e-3, warmup_steps=2),
        **QUIET,
    )
    # stage 1: the tokenizer reconstructs held-out crops better than an untrained one, with many codes
    tok = load_tokenizer(tmp_path / "tokenizer.pth")
    torch.manual_seed(0)
    untrained = VQTokenizer(**tok.config).eval()
    crops = SeededDataset(image_dataset("embedded", BeitTransform(32, None), 64))
    x = torch.stack([crops[(i, 10_000 + i)] for i in range(64)])
    with torch.no_grad():
        mse = {
            name: float(((t.decoder(t.quantize(t.encode(x))[0]) - x) ** 2).mean())
            for name, t in (("trained", tok), ("untrained", untrained))
        }
        codes = tok.tokenize(x).unique().numel()
    print(f"tokenizer held-out MSE {mse}, {codes} codes used")
    assert mse["trained"] < 0.95 * mse["untrained"], mse
    assert codes >= 8  # no codebook collapse
    first, last = assert_decreases(losses(tmp_path), margin=0.2)
    assert first == pytest.approx(math.log(32), abs=0.3)  # starts at chance over the vocabulary
    # the export is the trained encoder: same features as the training checkpoint's encoder
    enc = assert_loads_as_encoder("beit", path)
    ckpt = torch.load(tmp_path / "checkpoint-0000025.pth", weights_only=True)["model"]
    model = BeitPretrainModel(encoder_config("beit", ARCH), vocab_size=32)
    model.load_state_dict(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), model.encoder.eval().forward_features(x))
    # the tokenizer file is reusable; anything else is refused with a one-line error
    assert tok.vocab_size == 32 and tok.tokenize(x).shape == (2, 16)
    bad = tmp_path / "encoder.pkl"
    torch.save({"model": {"w": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="not a maebench-vq-tokenizer file.*DALL-E"):
        pretrain_beit(ARCH, tmp_path / "again", tokenizer=bad, steps=1, **QUIET)


def test_beit_given_tokenizer_skips_stage_one_and_checks_patch_size(tmp_path):
    torch.manual_seed(0)
    tok_path = save_tokenizer(VQTokenizer(patch_size=8, vocab_size=16, hidden=8, code_dim=4), tmp_path / "tok.pth")
    out = tmp_path / "run"
    path = pretrain_beit(ARCH, out, tokenizer=tok_path, epoch_size=32, batch_size=8, steps=2, **QUIET)
    assert not (out / "tokenizer").exists() and path.is_file()
    assert torch.load(path, weights_only=True)["method"]["vocab_size"] == 16
    wrong = save_tokenizer(VQTokenizer(patch_size=4, vocab_size=16, hidden=8, code_dim=4), tmp_path / "tok4.pth")
    with pytest.raises(BenchError, match="one code per 4 px.*8 px patches"):
        pretrain_beit(ARCH, tmp_path / "run2", tokenizer=wrong, steps=1, **QUIET)


# ------------------------------------------------------------------------------------------------
# supervised
# ------------------------------------------------------------------------------------------------
def test_embedded_labelled_is_19_balanced_classes():
    ds = EmbeddedLabelled(lambda im: im.size, length=38)
    assert len(ds.classes) == 19 and len(set(ds.classes)) == 19
    labels = [ds[i][1] for i in range(38)]
    assert labels == list(range(19)) * 2
    assert ds[3][0] == ds.images[3].size


def test_supervised_pretraining_reduces_the_loss_and_exports(tmp_path):
    torch.manual_seed(0)
    path = pretrain_supervised(
        ARCH, tmp_path, epoch_size=19 * 16, batch_size=38, steps=30, lr=2e-3, warmup_steps=3, **QUIET
    )
    assert_decreases(losses(tmp_path), margin=0.2)
    accs = losses(tmp_path, "acc")
    assert np.mean(accs[-5:]) > 2.0 / 19  # above chance (1/19)
    assert_loads_as_encoder("supervised", path)
    assert torch.load(path, weights_only=True)["classes"][:2] == ["astronaut", "coffee"]


def test_supervised_image_folder_and_mixup(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for c, colour in (("cats", 40), ("dogs", 200)):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            arr = np.clip(rng.normal(colour, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "train" / c / f"{i}.png")
    path = pretrain_supervised(
        ARCH, tmp_path / "run", data=str(root), batch_size=4, steps=2, mixup=0.8, cutmix=1.0, **QUIET
    )
    assert torch.load(path, weights_only=True)["classes"] == ["cats", "dogs"]
    assert all(math.isfinite(v) for v in losses(tmp_path / "run"))
    with pytest.raises(BenchError, match="--num-classes 5 but the dataset"):
        pretrain_supervised(ARCH, tmp_path / "run2", data=str(root), num_classes=5, steps=1, **QUIET)
    with pytest.raises(DataError, match="does not exist"):
        pretrain_supervised(ARCH, tmp_path / "run3", data=str(tmp_path / "nope"), steps=1, **QUIET)


# ------------------------------------------------------------------------------------------------
# MAE through the same table
# ------------------------------------------------------------------------------------------------
def test_mae_through_the_pretrainer_table(tmp_path):
    torch.manual_seed(0)
    path = PRETRAINERS["mae"](ARCH, tmp_path, epoch_size=256, batch_size=32, steps=25, lr=2e-3, warmup_steps=2, **QUIET)
    assert_decreases(losses(tmp_path), margin=0.05)
    assert_loads_as_encoder("mae", path)


@pytest.mark.parametrize(
    "method,first,second",
    [
        ("mae", dict(mask_ratio=0.75), dict(mask_ratio=0.5)),
        ("mocov3", dict(temperature=0.2), dict(temperature=0.5)),
    ],
)
def test_resume_with_another_method_option_is_refused(tmp_path, method, first, second):
    # The method's own options are part of the run's recorded settings: continuing a run with
    # another mask ratio (or MoCo temperature) would mix two runs in one set of checkpoints.
    small = (
        dict(steps=2, batch_size=4, epoch_size=8, ckpt_every=1, progress=False, dim=16, mlp_dim=32)
        if method == "mocov3"
        else dict(steps=2, batch_size=4, epoch_size=8, ckpt_every=1, progress=False)
    )
    pretrain(method, ARCH, tmp_path, demo_defaults=False, img_size=32, **small, **first)
    with pytest.raises(BenchError, match=next(iter(second))):
        pretrain(method, ARCH, tmp_path, demo_defaults=False, img_size=32, **small, **second)
    pretrain(method, ARCH, tmp_path, demo_defaults=False, img_size=32, **small, **first)  # same: resumes
