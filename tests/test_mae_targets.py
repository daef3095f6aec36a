"""MAE's reconstruction targets (the paper's Table 7): the token loss and the pixel (w/o norm) loss
against independent computations, the default target unchanged, a tiny token run that learns, and
the Table 7 layout beside the paper's numbers with the tokenizer mark."""

import json

import pytest
import torch

from backbones.mae import MaskedAutoencoder
from backbones.pretrainers.beit import VQTokenizer, train_tokenizer
from backbones.pretrainers.mae import build_mae, check_target, mae_loss, pretrain_mae
from backbones.provenance import TOKEN_MARK, paper_difference, provenance_of, reconstruction_target
from bench.cli import main
from bench.core.errors import BenchError
from bench.core.results import ResultsStore, make_row
from bench.tables import load_reference, to_markdown
from bench.tables.reference import reference_protocol
from bench.tables.targets import DELTA_ROW, TARGET_ROWS, target_tables

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps on shared cores
ARCH = "vit_test_patch8"  # 32 px, 8 px patches: a 4 x 4 grid


def _inputs(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.rand(batch, 16, generator=g)


def _masked(noise, ratio=0.75):
    """1 where a patch is removed: all but the round(N (1 - r)) smallest noises (official rule)."""
    keep = round(noise.shape[1] * (1 - ratio))
    mask = torch.ones_like(noise)
    for b in range(noise.shape[0]):
        mask[b, noise[b].argsort()[:keep]] = 0
    return mask


def _official_patchify(imgs, p=8):
    n, c, h, w = imgs.shape[0], 3, imgs.shape[2] // p, imgs.shape[3] // p
    x = imgs.reshape(n, c, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * c)


def test_token_loss_is_cross_entropy_of_masked_patches_against_the_tokenizer():
    torch.manual_seed(0)
    tok = VQTokenizer(patch_size=8, vocab_size=16, hidden=8, code_dim=8).eval()
    model = build_mae(ARCH, vocab_size=16)
    assert model.target == "tokens" and model.decoder_pred.out_features == 16 and model.arch["vocab_size"] == 16
    imgs, noise = _inputs()
    # the tokenizer's ids, computed separately: nearest code by cosine similarity per 8 x 8 patch
    z = torch.nn.functional.normalize(tok.encoder(imgs), dim=1).flatten(2).transpose(1, 2)  # (B, 16, code_dim)
    book = torch.nn.functional.normalize(tok.codebook.weight, dim=1)
    ids = (z @ book.T).argmax(-1)
    loss, logits, mask = model(imgs, mask_ratio=0.75, noise=noise, tokens=ids)
    assert torch.equal(mask, _masked(noise))
    log_p = logits - logits.logsumexp(-1, keepdim=True)
    per_patch = -log_p.gather(-1, ids[..., None])[..., 0]
    expected = (per_patch * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the pretrainer's loss function tokenizes the images itself and gives the same number
    via_fn, logged = mae_loss(0.75, tok)(model, (imgs, noise))
    assert via_fn.item() == pytest.approx(expected.item(), rel=1e-5)
    hits = (logits.argmax(-1) == ids).float()
    assert logged["token_acc"].item() == pytest.approx(((hits * mask).sum() / mask.sum()).item())
    with pytest.raises(ValueError, match="token ids"):
        model(imgs, noise=noise)  # a token model without ids


def test_pixel_target_without_norm_is_the_official_formula():
    torch.manual_seed(1)
    model = build_mae(ARCH, norm_pix_loss=False)
    assert model.target == "pixel" and check_target("pixel") == "pixel" == check_target(None, False)
    imgs, noise = _inputs(1)
    loss, _ = mae_loss(0.75, None)(model, (imgs, noise))
    pred = model(imgs, mask_ratio=0.75, noise=noise)[1]
    mask = _masked(noise)
    target = _official_patchify(imgs)  # models_mae.py forward_loss with norm_pix_loss=False
    expected = ((((pred - target) ** 2).mean(dim=-1)) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="token ids"):
        model(imgs, noise=noise, tokens=torch.zeros(3, 16, dtype=torch.long))  # ids for a pixel model


def test_default_target_is_normalised_pixels_bit_for_bit():
    torch.manual_seed(2)
    ours = build_mae(ARCH)
    torch.manual_seed(2)
    plain = MaskedAutoencoder.from_arch(ARCH, norm_pix_loss=True)
    assert ours.target == "pixel_norm" and "vocab_size" not in ours.arch and ours.arch == plain.arch
    a, b = ours.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    imgs, noise = _inputs(2)
    loss, _ = mae_loss(0.75, None)(ours, (imgs, noise))
    pred = plain(imgs, mask_ratio=0.75, noise=noise)[1]
    target = _official_patchify(imgs)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    mask = _masked(noise)
    expected = (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
    assert torch.equal(loss, plain(imgs, mask_ratio=0.75, noise=noise)[0])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert check_target(None) == "pixel_norm" == check_target(None, True)
    for bad in (("tokens", True), ("pixel", True), ("pixel_norm", False)):
        with pytest.raises(BenchError, match="contradicts"):
            check_target(*bad)
    with pytest.raises(BenchError, match="must be one of"):
        check_target("dvae")


def test_bench_pretrain_target_tokens_learns_on_digits_and_records_its_tokenizer(tmp_path, capsys):
    # the suite's BEiT tokenizer (stage one of BEiT pretraining), short here to keep the test quick
    tokenizer = train_tokenizer(
        ARCH, tmp_path / "vq", data="digits", vocab_size=32, steps=8, batch_size=64, progress=False
    )
    out = tmp_path / "tok"
    argv = ["pretrain", "--method", "mae", "--target", "tokens", "--arch", ARCH, "--data", "digits", "--out", str(out)]
    argv += ["--steps", "30", "--batch-size", "64", "--blr", "5e-3", "--no-progress"]
    assert main([*argv, "--cfg-options", f"tokenizer={tokenizer}"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # measured: ~3.6 -> ~2.4 (cross-entropy over 32 codes; log 32 = 3.47); require a clear drop
    assert last < first - 0.5, (first, last)
    run = json.loads((out / "train_settings.json").read_text())
    assert run["target"] == "tokens" and run["vocab_size"] == 32 and run["tokenizer_file"] == str(tokenizer)
    prov = provenance_of(out / "pretrain.pth")
    assert prov["target"] == "tokens" and prov["tokenizer"] == "suite VQ (not DALL-E dVAE)"
    assert reconstruction_target(prov) == "tokens"
    assert paper_difference(prov, "mae").endswith(TOKEN_MARK)
    # --target is MAE's; --no-norm-pix-loss with another target is a contradiction
    bad = ["pretrain", "--method", "beit", "--target", "tokens", "--arch", ARCH, "--out", str(tmp_path / "b")]
    assert main(bad) == 2 and "MAE options" in capsys.readouterr().err
    bad = ["pretrain", "--target", "tokens", "--no-norm-pix-loss", "--arch", ARCH, "--out", str(tmp_path / "c")]
    assert main(bad) == 2 and "contradicts" in capsys.readouterr().err
    with pytest.raises(BenchError, match="vocab_size must be an integer >= 2"):
        pretrain_mae(ARCH, tmp_path / "d", target="tokens", vocab_size=1)
    assert not (tmp_path / "d").exists()  # refused before anything is written


def _prov(target):
    return {"source": "self-pretrained", "verified": "its own run record", "method": "mae", "data": "digits"} | {
        "steps": 40,
        "target": target,
    }


def test_table7_puts_a_tokens_row_beside_the_paper_dvae_numbers_with_the_mark(tmp_path):
    store = ResultsStore(tmp_path / "results")
    values = {  # (target, task, backbone) -> per-seed values
        ("tokens", "imagenet", "finetune", "top1", "vit_base_patch16"): [80.0, 81.0],
        ("pixel_norm", "imagenet", "finetune", "top1", "vit_base_patch16"): [79.0, 79.5],
        ("tokens", "ade20k", "upernet", "mIoU", "vit_large_patch16"): [40.0],
        ("pixel_norm", "ade20k", "upernet", "mIoU", "vit_large_patch16"): [41.0],
        ("pixel", "ade20k", "upernet", "mIoU", "vit_large_patch16"): [39.0],
    }
    for (target, task, protocol, metric, backbone), seeds in values.items():
        for seed, v in enumerate(seeds):
            store.append(
                make_row(
                    task=task,
                    protocol=protocol,
                    init="mae",
                    backbone=backbone,
                    seed=seed,
                    metrics={metric: v},
                    label=f"mae_{target}",
                    provenance=_prov(target),
                )  # fmt: skip
            )
    tables = target_tables(store.dataframe(), load_reference())
    table = tables["table7_targets"]
    tok, norm, pix = TARGET_ROWS["tokens"], TARGET_ROWS["pixel_norm"], TARGET_ROWS["pixel"]
    assert list(table.index) == [pix, norm, tok, DELTA_ROW]  # the paper's order, Δ last
    groups = list(dict.fromkeys(g for g, _, _ in table.columns))
    in1k, ade = groups  # IN1K before ADE20K, as in the paper
    # the paper's Table 7: dVAE token 83.6 / pixel w/ norm 83.6 (IN1K ViT-B); 53.4 / 53.6 / 51.8 (ADE20K ViT-L)
    assert table.loc[tok, (in1k, "ViT-B", "published")] == 83.6
    assert table.loc[norm, (in1k, "ViT-B", "published")] == 83.6
    assert table.loc[tok, (ade, "ViT-L", "published")] == 53.4
    assert table.loc[norm, (ade, "ViT-L", "published")] == 53.6
    assert table.loc[pix, (ade, "ViT-L", "published")] == 51.8
    assert table.loc[tok, (in1k, "ViT-B", "mean")] == 80.5 and table.loc[tok, (in1k, "ViT-B", "n")] == 2
    assert table.loc[DELTA_ROW, (in1k, "ViT-B", "mean")] == pytest.approx(80.5 - 79.25)
    assert table.loc[DELTA_ROW, (in1k, "ViT-B", "published")] == pytest.approx(0.0)
    assert table.loc[DELTA_ROW, (ade, "ViT-L", "mean")] == pytest.approx(-1.0)
    assert table.loc[DELTA_ROW, (ade, "ViT-L", "published")] == pytest.approx(-0.2)
    md = to_markdown(table)
    assert TOKEN_MARK in md and "tokens (suite VQ)" in md and "Table 7" in md
    mark = table.attrs["footnotes"][next(t for t in table.attrs["footnotes"] if TOKEN_MARK in t)]
    assert mark in table.attrs["info"][(tok, in1k, "ViT-B")]["marks"]
    assert mark not in table.attrs["info"][(norm, in1k, "ViT-B")]["marks"]
    # the main tables' lookup: a tokens / raw-pixel MAE sits beside Table 7's row, pixel_norm beside the main one
    assert reference_protocol("finetune", "mae", _prov("tokens")) == "finetune@dvae_token"
    assert reference_protocol("upernet", "mae", _prov("pixel")) == "upernet@pixel_nonorm"
    assert reference_protocol("finetune", "mae", _prov("pixel_norm")) == "finetune"
    assert reference_protocol("finetune", "beit", _prov("tokens")) == "finetune"
    # only normalised-pixel MAE rows: no Table 7
    only = ResultsStore(tmp_path / "only")
    only.append(make_row(task="imagenet", protocol="finetune", init="mae", backbone="vit_base_patch16", seed=0,
                         metrics={"top1": 80.0}, provenance=_prov("pixel_norm")))  # fmt: skip
    assert target_tables(only.dataframe(), load_reference()) == {}
