"""MAE pretraining on the embedded photos or an image folder, on the shared
engine. Writes ``<out>/checkpoint-*.pth`` (resumable; the MAE state dict in the official key
layout under ``'model'``) and ``<out>/pretrain.pth`` (``{'model', 'arch', 'init'}``: what the
registry loads as a backbone, e.g. ``build_backbone('mae_vit_demo_patch8', checkpoint=...)``).

The mask noise is part of the data (``MaskNoise``): every sample carries its own
``torch.rand(num_patches)``, drawn under the engine's per-sample seed (seed, epoch, position), so a
sample's mask is the same whatever the rank, world size, worker count or resume point; N processes
with batch B follow one process with batch N B.

The reconstruction target (``target``, the paper's Table 7): ``pixel_norm`` (per-patch normalised
pixels, the paper's default and the official ``norm_pix_loss=True``), ``pixel`` (raw pixels,
``norm_pix_loss=False``) or ``tokens``: the decoder predicts, for each masked patch, the code id
the suite's BEiT tokenizer gives it (cross-entropy over the vocabulary), the encoder still seeing
only the visible patches. The paper used DALL-E's dVAE for the tokens; it cannot be downloaded
(``backbones.pretrainers.beit``), so the tokenizer is the small VQ-VAE BEiT pretraining trains here
(``stage_one_tokenizer``: trained first on the same images into ``<out>/tokenizer.pth``, or a file
given as ``tokenizer``). The run record says so (``tokenizer: TOKENIZER_NOTE``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import Dataset

from backbones.mae import MaskedAutoencoder
from backbones.provenance import TARGETS, TOKENIZER_NOTE
from backbones.vit import Block, arch_config
from bench.core.data import pretrain_dataset
from bench.core.determinism import seed_everything
from bench.core.engine import TrainConfig, fit, pick_device
from bench.core.errors import BenchError

from .beit import VQTokenizer, stage_one_tokenizer, token_ids
from .common import EXPORT, export_backbone


def check_mask_ratio(r: float):
    if not 0.0 < r < 1.0:
        raise BenchError(f"--mask-ratio must be in (0, 1), got {r}")


def check_target(target: str | None, norm_pix_loss: bool | None = None) -> str:
    """The reconstruction target: ``target`` when given, else from the older ``norm_pix_loss``
    (False: ``pixel``; True or None: ``pixel_norm``); both given must agree (one line)."""
    if target is not None and target not in TARGETS:
        raise BenchError(f"--target {target!r}: must be one of {', '.join(TARGETS)}")
    if norm_pix_loss is not None and not isinstance(norm_pix_loss, bool):
        raise BenchError(f"norm_pix_loss must be true or false, got {norm_pix_loss!r}")
    implied = None if norm_pix_loss is None else ("pixel_norm" if norm_pix_loss else "pixel")
    if target is not None and implied is not None and target != implied:
        raise BenchError(
            f"--target {target} contradicts norm_pix_loss={norm_pix_loss} (--no-norm-pix-loss is --target pixel)"
        )
    return target or implied or "pixel_norm"


def build_mae(
    arch: str, img_size: int | None = None, norm_pix_loss: bool = True, vocab_size: int | None = None, **decoder
) -> MaskedAutoencoder:
    kw = dict(norm_pix_loss=norm_pix_loss, **decoder)
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    if img_size:
        p = arch_config(arch)["patch_size"]
        if img_size % p:
            raise BenchError(f"--img-size {img_size} is not divisible by the patch size {p} of {arch}")
        kw["img_size"] = img_size
    return MaskedAutoencoder.from_arch(arch, **kw)


def mae_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The weight-decay groups of facebookresearch/mae main_pretrain.py:
    ``optim_factory.add_weight_decay(model, args.weight_decay)`` (timm 0.3.2) with no skip list, i.e.
    no decay on 1-D parameters and biases only. Unlike the transfer recipes (``model.no_weight_decay()``),
    the learned ``cls_token`` and ``mask_token`` (3-D) are decayed; the fixed sin-cos position
    embeddings are not trained at all."""
    return param_groups_weight_decay(model, weight_decay)


class MaskNoise(Dataset):
    """Items ``(img, noise)`` with ``noise = torch.rand(num_patches)`` drawn right after the image,
    inside the item: under ``fit`` (``SeededDataset``) it depends only on (seed, epoch, position).
    ``MaskedAutoencoder.forward(imgs, mask_ratio, noise)`` keeps the patches with the smallest noise."""

    def __init__(self, dataset: Dataset, num_patches: int):
        self.dataset, self.num_patches = dataset, num_patches

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i], torch.rand(self.num_patches)


def mae_tokenizer(
    arch: str, out: Path, tokenizer, *, trust_checkpoint: bool, resume: bool, train: dict, **kw
) -> VQTokenizer:
    """The token target's tokenizer: BEiT's stage one (the file ``tokenizer``, the one this folder
    trained before, or a new one trained now on the same data), frozen, for ``arch``'s patches."""
    tok = stage_one_tokenizer(arch, out, tokenizer, trust_checkpoint=trust_checkpoint, resume=resume, train=train, **kw)
    patch = arch_config(arch)["patch_size"]
    if tok.patch_size != patch:
        raise BenchError(
            f"tokenizer {tokenizer} makes one code per {tok.patch_size} px, but {arch} has {patch} px patches"
        )
    return tok.requires_grad_(False).eval()


def mae_loss(mask_ratio: float, tok: VQTokenizer | None):
    """``loss_fn(model, (imgs, noise))``: the model's own loss for the pixel targets; for tokens, the
    tokenizer's ids of every patch go in and the masked patches' token accuracy is logged."""

    def loss_fn(m, batch):
        imgs, noise = batch
        if tok is None:
            loss, _, _ = m(imgs, mask_ratio=mask_ratio, noise=noise)
            return loss, {}
        ids = token_ids(tok, imgs)
        loss, logits, mask = m(imgs, mask_ratio=mask_ratio, noise=noise, tokens=ids)
        removed = mask.bool()
        return loss, {"token_acc": (logits[removed].argmax(-1) == ids[removed]).float().mean().detach()}

    return loss_fn


def pretrain_mae(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    mask_ratio: float = 0.75,
    target: str | None = None,
    norm_pix_loss: bool | None = None,
    vocab_size: int = 256,
    tokenizer: str | None = None,
    tokenizer_train: dict | None = None,
    trust_checkpoint: bool = False,
    epoch_size: int = 1024,
    resume: bool = True,
    **train,
) -> Path:
    """Pretrain and return the path of the exported backbone checkpoint. ``target``: pixel_norm
    (default), pixel or tokens (``norm_pix_loss``: the older switch between the two pixel targets).
    Tokens only: ``vocab_size``, ``tokenizer`` (a tokenizer file) and ``tokenizer_train`` (stage-one
    ``TrainConfig`` fields), as in ``pretrain_beit``."""
    check_mask_ratio(mask_ratio)
    target = check_target(target, norm_pix_loss)
    tok = None
    if target == "tokens":
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise BenchError(f"vocab_size must be an integer >= 2 (the tokenizer's codes), got {vocab_size!r}")
        data_kw = dict(data=data, img_size=img_size, epoch_size=epoch_size, vocab_size=vocab_size)
        trust = dict(trust_checkpoint=trust_checkpoint, tokenizer_train=tokenizer_train)
        tok = mae_tokenizer(arch, Path(out_dir), tokenizer, resume=resume, train=train, **trust, **data_kw)
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    model = build_mae(arch, img_size, target == "pixel_norm", None if tok is None else tok.vocab_size)
    size = model.pos_grid[0] * model.patch_size
    dataset = MaskNoise(pretrain_dataset(data, size, epoch_size), model.pos_grid[0] * model.pos_grid[1])
    cfg = TrainConfig(out_dir=str(out_dir), desc=f"mae {arch}", **train)
    settings = {"method": "mae", "arch": arch, "data": data, "img_size": size, "mask_ratio": mask_ratio}
    settings.update(norm_pix_loss=target == "pixel_norm", target=target)
    if tok is not None:
        tok.to(pick_device(cfg.device))
        settings.update(
            vocab_size=tok.vocab_size,
            tokenizer=TOKENIZER_NOTE,
            tokenizer_file=None if tokenizer is None else str(tokenizer),
        )
    fit(
        model,
        dataset,
        mae_loss(mask_ratio, tok),
        cfg,
        groups=mae_param_groups(model, cfg.weight_decay),
        resume=resume,
        writes=(EXPORT,),  # --no-resume moves an earlier run's export aside too
        block_type=Block,
        settings=settings,
    )
    return export_backbone(model, out_dir, "mae", extra={"mask_ratio": mask_ratio, "target": target})
