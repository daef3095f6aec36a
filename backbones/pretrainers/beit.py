"""BEiT pretraining of our ViT (Bao, Dong & Wei 2021, "BEiT: BERT Pre-Training of Image
Transformers"), following microsoft/unilm ``beit/`` at small scale.

Two stages, each one ``fit`` call:

1. **Tokenizer.** BEiT's visual tokens come from the discrete VAE of DALL-E (Ramesh et al. 2021;
   OpenAI's ``encoder.pkl``, 8192 codes, 112 px input for 14x14 tokens). That file cannot be
   downloaded here, and it is a pickled ``dall_e.Encoder`` object that only loads with OpenAI's
   ``dall_e`` package and arbitrary unpickling, so it is **not supported**. Instead a small VQ-VAE
   (van den Oord et al. 2017) is trained first on the same images: a conv encoder downsampling by
   the patch size (one code per ViT patch), a codebook of ``vocab_size`` codes looked up by cosine
   similarity (l2-normalised, low-dimensional codes as in ViT-VQGAN, which keeps most codes in use),
   straight-through gradients, codebook + 0.25 x commitment loss, and a conv decoder trained with
   MSE on the normalised pixels. A tokenizer trained before can be passed as ``tokenizer=PATH``:
   a file ``{'format': 'maebench-vq-tokenizer', 'config': VQTokenizer kwargs, 'model': state_dict}``
   as written to ``<out>/tokenizer.pth`` (``save_tokenizer`` / ``load_tokenizer``).
2. **Masked image modelling** (unilm ``modeling_pretrain.py`` ``VisionTransformerForMaskedImageModeling``
   and ``engine_for_pretraining.py``): blockwise masking of ~40 % of the patches
   (``masking_generator.py``: blocks of at least ``min_num_patches`` patches with aspect ratio in
   [0.3, 1/0.3], added until the budget is reached); the patch embeddings of masked patches are
   replaced by a learned ``mask_token``; the encoder (relative position bias shared by all blocks,
   no absolute position embedding, layer scale 0.1: the defaults of ``run_beit_pretraining.py``)
   runs on all tokens; ``lm_head`` predicts the tokenizer's code of every masked patch
   (cross-entropy). BEiT's init: truncated normal (std 0.02), ``attn.proj`` / ``mlp.fc2`` of block
   ``l`` divided by ``sqrt(2 l)``; AdamW without weight decay on ``pos_embed`` / ``cls_token`` and
   1-D parameters.

Paper / official recipe (unilm beit/README.md, ImageNet-1k ViT-B): 800 epochs, batch 2048, lr
1.5e-3 (= blr 1.875e-4 x 2048/256), 10 warmup epochs, AdamW betas (0.9, 0.98) (the script's
default; the paper states 0.999), wd 0.05, clip grad 3.0, drop path 0.1, 75 of 196 patches masked
(38 %), min 16 patches per block, layer scale 0.1. Scaled down here: model, data, epochs, the
vocabulary (8192 -> ``vocab_size``) and the minimum block size (16 of 196 -> the same fraction of
the grid).

Output: ``<out>/pretrain.pth`` with the encoder in our names (the shared table expanded to every
block, no ``pos_embed``), loadable by ``build_backbone('beit_<arch>', checkpoint=...)``; the
tokenizer in ``<out>/tokenizer.pth``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.vit import Block, VisionTransformer
from bench.core.checkpoint import load_checkpoint_file, load_state_dict_checked, save_atomic
from bench.core.data import IMAGENET_MEAN, IMAGENET_STD, as_tensor_transform
from bench.core.determinism import seed_everything
from bench.core.engine import TrainConfig, fit, pick_device
from bench.core.errors import BenchError, CheckpointError

from .common import EXPORT, encoder_config, export_backbone, image_dataset, input_size

# unilm beit/README.md (ImageNet-1k pretraining of BEiT-base) and run_beit_pretraining.py defaults
PAPER = dict(
    epochs=800,
    batch_size=2048,
    blr=1.5e-3 * 256 / 2048,
    warmup_epochs=10,
    betas=(0.9, 0.98),
    weight_decay=0.05,
    clip_grad=3.0,
    drop_path_rate=0.1,
    num_mask_patches=75,
    grid=14,
    min_mask_patches_per_block=16,
    layer_scale=0.1,
    vocab_size=8192,
)
TOKENIZER_FORMAT = "maebench-vq-tokenizer"


# --------------------------------------------------------------------------------------------------
# Blockwise masking (unilm beit/masking_generator.py)
# --------------------------------------------------------------------------------------------------
class BlockMaskingGenerator:
    """A (h, w) 0/1 mask with ``num_masking_patches`` ones (or fewer if no block fits), made of
    rectangles: each try draws a target area in ``[min_num_patches, remaining budget]`` and an aspect
    ratio log-uniform in ``[min_aspect, 1/min_aspect]``, places the rectangle uniformly and keeps it
    if it adds between 1 and the remaining budget new patches (10 tries per block). Uses Python's
    ``random`` as the official code does (seeded per sample by the engine)."""

    def __init__(
        self,
        grid,
        num_masking_patches: int,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ):
        self.height, self.width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, max_mask_patches: int) -> int:
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                already = int(mask[top : top + h, left : left + w].sum())
                if 0 < h * w - already <= max_mask_patches:
                    region = mask[top : top + h, left : left + w]
                    delta += int((region == 0).sum())
                    region[:] = 1
                if delta > 0:
                    break
        return delta

    def __call__(self) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=np.int64)
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            delta = self._add_block(mask, budget)
            if delta == 0:
                break
            count += delta
        return mask


def masking_for(grid, mask_ratio: float = 0.4, min_block: int | None = None) -> BlockMaskingGenerator:
    """BEiT's generator for a grid: ``round(ratio * N)`` patches (BEiT: 75 of 196 = 38 %), minimum block
    size scaled from BEiT's 16 of 196 patches (at least 1)."""
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    n = gh * gw
    if not 0.0 < mask_ratio < 1.0:
        raise BenchError(f"--mask-ratio must be in (0, 1), got {mask_ratio}")
    if min_block is None:
        min_block = max(1, int(round(PAPER["min_mask_patches_per_block"] * n / PAPER["grid"] ** 2)))
    return BlockMaskingGenerator((gh, gw), num_masking_patches=int(round(mask_ratio * n)), min_num_patches=min_block)


class BeitTransform:
    """unilm ``DataAugmentationForBEiT`` (one resolution for both the ViT and our tokenizer): flip,
    RandomResizedCrop(0.08-1, bicubic), normalise; plus the blockwise mask (bool, N). Takes uint8
    tensors (``transforms.v2`` twins of the same steps) or PIL images (the v1 pipeline)."""

    tensor_input = True

    def __init__(self, img_size: int, masking: BlockMaskingGenerator | None, crop_min: float = 0.08):
        from torchvision import transforms as T

        self.image = as_tensor_transform(
            T.Compose(
                [
                    T.RandomHorizontalFlip(),
                    T.RandomResizedCrop(img_size, scale=(crop_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                ]
            )
        )
        self.masking = masking

    def __call__(self, img):
        x = self.image(img)
        if self.masking is None:
            return x
        return x, torch.from_numpy(self.masking().reshape(-1).astype(bool))


# --------------------------------------------------------------------------------------------------
# The tokenizer: a small VQ-VAE
# --------------------------------------------------------------------------------------------------
class VQTokenizer(nn.Module):
    """Image (B, C, H, W) -> one discrete code per ``patch_size`` x ``patch_size`` patch."""

    def __init__(
        self,
        patch_size: int = 16,
        vocab_size: int = 512,
        hidden: int = 32,
        code_dim: int = 32,
        beta: float = 0.25,
        in_chans: int = 3,
        usage_decay: float = 0.9,
        dead_usage: float = 0.03,
    ):
        super().__init__()
        levels = int(round(math.log2(patch_size)))
        if 2**levels != patch_size or levels < 1:
            raise BenchError(f"the VQ tokenizer needs a power-of-two patch size >= 2, got {patch_size}")
        self.config = dict(
            patch_size=patch_size,
            vocab_size=vocab_size,
            hidden=hidden,
            code_dim=code_dim,
            beta=beta,
            in_chans=in_chans,
            usage_decay=usage_decay,
            dead_usage=dead_usage,
        )
        self.usage_decay, self.dead_usage = usage_decay, dead_usage
        self.patch_size, self.vocab_size, self.beta = patch_size, vocab_size, beta
        # stride-2 4x4 convs from the pixels down to the patch grid (no full-resolution hidden layer:
        # cheap on CPU), a 3x3 layer at the grid, a 1x1 projection to the code space; the decoder mirrors it.
        enc = []
        for i in range(levels):
            enc += [nn.Conv2d(in_chans if i == 0 else hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
        enc += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.codebook = nn.Embedding(vocab_size, code_dim)
        nn.init.normal_(self.codebook.weight)
        # EMA of how many patches each code takes per batch. Starting at 0, every code is "dead" at the
        # first step and restarted from the data: a data-dependent codebook init.
        self.register_buffer("usage", torch.zeros(vocab_size))
        dec = [nn.Conv2d(code_dim, hidden, 3, padding=1), nn.ReLU()]
        for i in range(levels):
            last = i == levels - 1
            dec += [nn.ConvTranspose2d(hidden, in_chans if last else hidden, 4, stride=2, padding=1)]
            if not last:
                dec += [nn.ReLU()]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, code_dim, gh, gw) l2-normalised encoder outputs."""
        return F.normalize(self.encoder(x), dim=1)

    def quantize(self, z: torch.Tensor):
        """Nearest code by cosine similarity: (codes (B, code_dim, gh, gw), ids (B, gh, gw))."""
        book = F.normalize(self.codebook.weight, dim=1)
        ids = torch.einsum("bchw,kc->bkhw", z, book).argmax(dim=1)
        return book[ids].permute(0, 3, 1, 2), ids

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh*gw) code ids, patches in row-major order (the ViT's token order)."""
        _, ids = self.quantize(self.encode(x))
        return ids.flatten(1)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor) -> int:
        """Codes whose usage fell below ``dead_usage`` are moved onto random encoder outputs of the batch
        (the random-restart remedy for codebook collapse, e.g. Dhariwal et al. 2020, Jukebox)."""
        dead = self.usage < self.dead_usage
        n = int(dead.sum())
        if n:
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
            self.codebook.weight.data[dead] = flat[pick].to(self.codebook.weight.dtype)
            self.usage[dead] = 1.0
        return n

    def forward(self, x: torch.Tensor):
        z = self.encode(x)
        restarted = self.restart_dead_codes(z) if self.training else 0
        q, ids = self.quantize(z)
        codebook_loss = F.mse_loss(q, z.detach())
        commit_loss = F.mse_loss(z, q.detach())
        recon = self.decoder(z + (q - z).detach())  # straight-through
        recon_loss = F.mse_loss(recon, x)
        counts = torch.bincount(ids.flatten(), minlength=self.vocab_size).float()
        if self.training:
            self.usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
        p = counts / counts.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        loss = recon_loss + codebook_loss + self.beta * commit_loss
        return loss, {
            "recon": recon_loss.detach(),
            "perplexity": perplexity,
            "codes_used": (counts > 0).sum(),
            "restarted": restarted,
        }


def save_tokenizer(tok: VQTokenizer, path: str | Path) -> Path:
    return save_atomic(
        {
            "format": TOKENIZER_FORMAT,
            "config": dict(tok.config),
            "model": {k: v.detach().cpu() for k, v in tok.state_dict().items()},
        },
        path,
    )


def load_tokenizer(path: str | Path, trust: bool = False) -> VQTokenizer:
    path = Path(path)
    obj = load_checkpoint_file(path, trust=trust)
    if not isinstance(obj, dict) or obj.get("format") != TOKENIZER_FORMAT or "config" not in obj or "model" not in obj:
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"tokenizer {path} is not a {TOKENIZER_FORMAT} file ({{'format', 'config', 'model'}}; "
            f"found {keys}); DALL-E's encoder.pkl is not supported"
        )
    try:
        tok = VQTokenizer(**obj["config"])
    except TypeError as e:
        raise CheckpointError(f"tokenizer {path}: bad 'config': {e}") from None
    load_state_dict_checked(tok, obj["model"], path)
    return tok.eval()


# --------------------------------------------------------------------------------------------------
# The masked-image-modelling model
# --------------------------------------------------------------------------------------------------
def beit_init_(enc: VisionTransformer, std: float = 0.02):
    """unilm ``_init_weights`` + ``fix_init_weight``: trunc-normal Linear/Conv weights, zero biases,
    LayerNorm (1, 0), then ``attn.proj`` and ``mlp.fc2`` of block l (1-based) / sqrt(2 l)."""
    for m in enc.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-std, b=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(enc.cls_token, std=std, a=-std, b=std)
    if enc.pos_embed is not None:
        nn.init.trunc_normal_(enc.pos_embed, std=std, a=-std, b=std)
    with torch.no_grad():
        for i, blk in enumerate(enc.blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


class BeitPretrainModel(nn.Module):
    """Encoder + ``mask_token`` + ``lm_head``. ``shared_rel_pos``: one relative position table used by
    every block (the same ``Parameter`` registered in each block: the state dict then holds the
    expanded per-block layout that fine-tuning uses)."""

    def __init__(self, encoder_cfg: dict, vocab_size: int, shared_rel_pos: bool = True, abs_pos: bool = False):
        super().__init__()
        cfg = {**encoder_cfg, "num_classes": 0, "global_pool": "token", "use_abs_pos": abs_pos}
        if not cfg.get("use_rel_pos"):
            raise BenchError("BEiT pretraining needs an encoder with use_rel_pos=True")
        self.encoder = VisionTransformer(**cfg)
        self.encoder.arch = dict(cfg)
        beit_init_(self.encoder)
        if shared_rel_pos:
            table = self.encoder.blocks[0].attn.relative_position_bias_table
            for blk in self.encoder.blocks[1:]:
                blk.attn.relative_position_bias_table = table
        D = self.encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.lm_head = nn.Linear(D, vocab_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02, a=-0.02, b=0.02)
        nn.init.zeros_(self.lm_head.bias)
        self.arch = dict(encoder=dict(cfg), vocab_size=vocab_size, shared_rel_pos=shared_rel_pos)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:  # unilm: {'pos_embed', 'cls_token'} (+ 1-D params, biases)
        return {"encoder.pos_embed", "encoder.cls_token"}

    def forward_features(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(imgs)
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        grid = enc.grid_for(imgs.shape[-2:])
        x = torch.cat([enc.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = enc.pos_embed_for(grid)
        if pos is not None:
            x = x + pos
        for blk in enc.blocks:
            x = blk(x, grid, with_cls=True)
        return enc.norm(x)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (num masked, vocab) for the masked patches, in row-major batch order."""
        x = self.forward_features(imgs, mask)[:, 1:]
        return self.lm_head(x[mask])


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
TOKENIZER_TRAIN = dict(blr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), epochs=4, warmup_epochs=0.5)


def train_tokenizer(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    epoch_size: int = 1024,
    resume: bool = True,
    vocab_size: int = 512,
    hidden: int = 32,
    code_dim: int = 32,
    **train,
) -> Path:
    """Stage 1: train a VQ tokenizer for ``arch``'s patch size on ``fit``; write ``<out>/tokenizer.pth``."""
    cfg_enc = encoder_config("beit", arch, img_size)
    tok = VQTokenizer(patch_size=cfg_enc["patch_size"], vocab_size=vocab_size, hidden=hidden, code_dim=code_dim)
    dataset = image_dataset(data, BeitTransform(input_size(cfg_enc), None), epoch_size)
    cfg = TrainConfig(
        out_dir=str(Path(out_dir) / "tokenizer"), desc=f"beit tokenizer {arch}", **{**TOKENIZER_TRAIN, **train}
    )

    def loss_fn(m, imgs):
        return m(imgs)

    fit(
        tok,
        dataset,
        loss_fn,
        cfg,
        resume=resume,
        settings={
            "method": "beit-tokenizer",
            "arch": arch,
            "data": data,
            "vocab_size": vocab_size,
            "hidden": hidden,
            "code_dim": code_dim,
        },
    )
    return save_tokenizer(tok.cpu(), Path(out_dir) / "tokenizer.pth")


def token_ids(tok: VQTokenizer, imgs: torch.Tensor) -> torch.Tensor:
    """(B, N) code ids of every patch, row-major; in fp32 and without gradient (also under autocast),
    so the targets do not depend on the training's precision. BEiT and MAE's token target share it."""
    with torch.no_grad(), torch.autocast(imgs.device.type, enabled=False):
        return tok.tokenize(imgs.float())


def mim_loss(tok: VQTokenizer):
    """``loss_fn(model, (imgs, mask))``: cross-entropy of the masked patches' predicted codes
    against the tokenizer's (computed in fp32, without gradient), and the accuracy."""

    def loss_fn(m, batch):
        imgs, mask = batch
        labels = token_ids(tok, imgs)[mask]
        logits = m(imgs, mask)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"mlm_acc": acc.detach()}

    return loss_fn


def stage_one_tokenizer(
    arch, out: Path, tokenizer, *, trust_checkpoint: bool, resume: bool, train: dict, tokenizer_train, **data_kw
) -> VQTokenizer:
    """The tokenizer: the given file, the one this folder trained earlier (with ``resume``), or a new
    one trained now (stage 1; batch size, device, seed and progress follow ``train``)."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer, trust=trust_checkpoint)
    if resume and (out / "tokenizer.pth").is_file():
        return load_tokenizer(out / "tokenizer.pth")
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    keys = ("batch_size", "device", "seed", "progress", "num_workers", "bf16", "amp", "amp_dtype")
    shared = {k: train[k] for k in keys if k in train}
    path = train_tokenizer(arch, out, resume=resume, **data_kw, **{**shared, **(tokenizer_train or {})})
    return load_tokenizer(path)


def pretrain_beit(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    epoch_size: int = 1024,
    resume: bool = True,
    tokenizer: str | Path | None = None,
    trust_checkpoint: bool = False,
    vocab_size: int = 512,
    tokenizer_train: dict | None = None,
    mask_ratio: float = 0.4,
    min_block: int | None = None,
    shared_rel_pos: bool = True,
    **train,
) -> Path:
    """BEiT pretraining (tokenizer first unless ``tokenizer`` is given); returns ``<out>/pretrain.pth``.
    ``tokenizer_train``: ``TrainConfig`` fields for stage 1 (default ``TOKENIZER_TRAIN``; batch size,
    device, seed and progress follow ``train``). ``train``: ``TrainConfig`` fields for stage 2."""
    out = Path(out_dir)
    cfg_enc = encoder_config("beit", arch, img_size)
    grid = (input_size(cfg_enc) // cfg_enc["patch_size"],) * 2
    masking = masking_for(grid, mask_ratio, min_block)
    tok = stage_one_tokenizer(
        arch,
        out,
        tokenizer,
        trust_checkpoint=trust_checkpoint,
        resume=resume,
        train=train,
        tokenizer_train=tokenizer_train,
        data=data,
        img_size=img_size,
        epoch_size=epoch_size,
        vocab_size=vocab_size,
    )
    if tok.patch_size != cfg_enc["patch_size"]:
        raise BenchError(
            f"tokenizer {tokenizer} makes one code per {tok.patch_size} px, but {arch} has "
            f"{cfg_enc['patch_size']} px patches"
        )
    tok.requires_grad_(False).eval()

    seed_everything(train.get("seed", 0))
    model = BeitPretrainModel(cfg_enc, tok.vocab_size, shared_rel_pos=shared_rel_pos)
    dataset = image_dataset(data, BeitTransform(input_size(cfg_enc), masking), epoch_size)
    for k in ("betas", "weight_decay"):
        train.setdefault(k, PAPER[k])
    cfg = TrainConfig(out_dir=str(out), desc=f"beit {arch}", **train)
    tok.to(pick_device(cfg.device))

    loss_fn = mim_loss(tok)
    fit(
        model,
        dataset,
        loss_fn,
        cfg,
        resume=resume,
        writes=(EXPORT,),  # --no-resume moves an earlier run's export aside too
        block_type=Block,
        settings={
            "method": "beit",
            "arch": arch,
            "data": data,
            "mask_ratio": mask_ratio,
            "min_block": min_block,
            "shared_rel_pos": shared_rel_pos,
            "vocab_size": tok.vocab_size,
            "tokenizer": None if tokenizer is None else str(tokenizer),
        },
    )
    return export_backbone(
        model.encoder,
        out,
        "beit",
        extra={"method": dict(vocab_size=tok.vocab_size, mask_ratio=mask_ratio, shared_rel_pos=shared_rel_pos)},
    )
