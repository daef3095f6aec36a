"""Masked Autoencoder (He et al., 2021), following facebookresearch/mae ``models_mae.py``.

* encoder: our ``VisionTransformer`` (timm names) run on the visible patches only — no mask tokens;
* masking: per-sample uniform noise, ``argsort``; the patches with the smallest noise are kept;
  ``ids_restore`` un-shuffles;
* decoder: linear embed to the decoder width, ONE shared learned ``mask_token``, fixed 2-D sin-cos
  position embedding, ``decoder_depth`` blocks, linear to pixels;
* loss: MSE on masked patches only, on per-patch normalised pixels by default (``norm_pix_loss``).

The paper's Table 7 also trains MAE to predict tokens (``vocab_size``): the decoder's last layer then
gives logits over the tokenizer's vocabulary instead of pixels, and the loss is the cross-entropy of
the masked patches' logits against their token ids (``forward(..., tokens=ids)``; the ids come from
a tokenizer outside the model, ``backbones.pretrainers.beit``). The default pixel model is unchanged.

The state dict has exactly the official key names (``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``, ``decoder_pred`` + the encoder's),
so official pretraining / visualisation checkpoints load here unchanged and ours load in the official
code. One deliberate difference: the number of kept patches is ``round(N*(1-r))`` (the official code
truncates with ``int``); the two agree whenever ``N*(1-r)`` is an integer, e.g. 49 of 196 at 75 %.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import ARCHS, Block, LayerNorm, VisionTransformer, _init_module, get_2d_sincos_pos_embed

# Decoder presets of the paper (Table 1: 8 blocks, 512-d), and a CPU-sized one for the demo.
DECODERS = {
    "default": dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "demo": dict(decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4),
    "test": dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
}
ARCH_DECODER = {"vit_demo_patch8": "demo", "vit_test_patch8": "test"}

# Keys of an MAE checkpoint that are not part of the encoder.
DECODER_PREFIXES = ("decoder_", "mask_token")


def num_keep(num_patches: int, mask_ratio: float) -> int:
    return int(round(num_patches * (1 - mask_ratio)))


class MaskedAutoencoder(VisionTransformer):
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
        norm_layer=LayerNorm,
        norm_pix_loss=True,
        vocab_size=None,
    ):
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=0,
            global_pool="token",
            sincos_pos_embed=True,
            norm_layer=norm_layer,
        )
        self.pos_embed.requires_grad_(False)  # fixed sin-cos
        self.arch = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        if vocab_size is not None:  # token target (Table 7); absent from a pixel model's record
            self.arch["vocab_size"] = vocab_size
        self.vocab_size = vocab_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        n = self.pos_grid[0] * self.pos_grid[1]
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            get_2d_sincos_pos_embed(decoder_embed_dim, self.pos_grid, cls_token=True)[None], requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, vocab_size or patch_size**2 * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_module)
        assert n == self.decoder_pos_embed.shape[1] - 1

    # -- patches ---------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), patch pixels in (p, p, C) order as the official code."""
        p = self.patch_size
        B, C, H, W = imgs.shape
        h, w = H // p, W // p
        x = imgs.reshape(B, C, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, p * p * C)

    def unpatchify(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        p, C = self.patch_size, self.in_chans
        h, w = grid or self.pos_grid
        x = x.reshape(x.shape[0], h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, h * p, w * p)

    # -- masking -------------------------------------------------------------------------------------
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep the ``round(N*(1-r))`` patches with the smallest noise. Returns the kept tokens,
        the binary mask (1 = removed) in the original order, and ``ids_restore``."""
        B, N, D = x.shape
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        keep = num_keep(N, mask_ratio)
        if noise is None:
            noise = torch.rand(B, N, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, N, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    # -- the three stages ----------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        B, N = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, N + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target) ** 2).mean(dim=-1)  # per patch
        return (loss * mask).sum() / mask.sum()

    def token_loss(self, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked patches of ``logits`` (B, N, vocab) against ``tokens`` (B, N)."""
        removed = mask.bool()
        return F.cross_entropy(logits[removed].float(), tokens[removed])

    @property
    def target(self) -> str:
        """What the decoder reconstructs: 'tokens', 'pixel_norm' (the default) or 'pixel'."""
        if self.vocab_size is not None:
            return "tokens"
        return "pixel_norm" if self.norm_pix_loss else "pixel"

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float = 0.75,
        noise: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ):
        """(loss, prediction (B, N, p*p*C pixels or vocab logits), mask). A token model needs
        ``tokens``: the (B, N) token ids of every patch, in row-major order."""
        if (tokens is None) != (self.vocab_size is None):
            raise ValueError("token ids are given to a model with the token target, and only to it")
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask) if tokens is None else self.token_loss(pred, tokens, mask)
        return loss, pred, mask

    # -- checkpoints ----------------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: str, **overrides) -> "MaskedAutoencoder":
        """``MaskedAutoencoder.from_arch('vit_base_patch16')``: encoder preset + paper decoder."""
        from .vit import arch_config

        cfg = arch_config(arch)
        cfg.update(DECODERS[ARCH_DECODER.get(arch, "default")])
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def from_checkpoint(cls, path: str | Path, trust: bool = False, **arch) -> "MaskedAutoencoder":
        """Load our checkpoint (architecture stored in it) or an official facebookresearch/mae
        pretraining file (``{'model': sd}`` with ``decoder_*`` and ``mask_token``). Architecture
        keywords named as in the official code override what is stored or inferred from shapes."""
        from bench.core.checkpoint import load_checkpoint_file, load_state_dict_checked, unwrap_state_dict

        obj = load_checkpoint_file(path, trust=trust)
        sd, _ = unwrap_state_dict(obj, path)
        stored = obj.get("arch") if isinstance(obj, dict) else None  # ours: a dict; MoCo v3's: a name
        cfg = dict(stored) if isinstance(stored, dict) and "decoder_embed_dim" in stored else infer_mae_arch(sd, path)
        cfg.update(arch)
        _check_stored_arch(cfg, sd, path)
        try:
            model = cls(**cfg)
        except (
            TypeError,
            ValueError,
            RuntimeError,
            AssertionError,
            ZeroDivisionError,
            OverflowError,
            IndexError,
            KeyError,
        ) as e:
            from bench.core.errors import CheckpointError, first_line

            raise CheckpointError(f"{path}: its MAE architecture {cfg} cannot be built: {first_line(e)}") from None
        load_state_dict_checked(model, sd, path)
        return model


def _check_stored_arch(cfg: dict, sd: dict, path) -> None:
    """The architecture stored next to the weights must be positive integers whose grid is the
    file's ``pos_embed`` (a junk ``img_size`` would otherwise build a model of any size)."""
    from bench.core.errors import CheckpointError

    for k in (
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "decoder_embed_dim",
        "decoder_depth",
        "decoder_num_heads",
        "in_chans",
        "vocab_size",
    ):
        v = cfg.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if "depth" in k else 1)):
            raise CheckpointError(f"checkpoint {path}: stored 'arch' key {k!r} must be a positive integer, got {v!r}")
    pe = sd.get("pos_embed")
    img, p = cfg.get("img_size"), cfg.get("patch_size")
    if isinstance(pe, torch.Tensor) and pe.ndim == 3 and img and p and (img // p) ** 2 + 1 != pe.shape[1]:
        raise CheckpointError(
            f"checkpoint {path}: stored 'arch' img_size {img} / patch_size {p} does not match "
            f"'pos_embed' with {pe.shape[1] - 1} patch positions"
        )


def infer_mae_arch(sd: dict, path="checkpoint") -> dict:
    """Architecture of an official MAE pretraining state dict, from tensor shapes. Head counts are
    not stored in the file: they follow the official presets (decoder: 16 heads)."""
    from bench.core.errors import CheckpointError

    missing = [
        k
        for k in ("patch_embed.proj.weight", "pos_embed", "decoder_embed.weight", "decoder_pred.weight")
        if k not in sd
    ]
    if missing:
        raise CheckpointError(f"{path}: not an MAE pretraining checkpoint (missing key {missing[0]!r})")
    for k in ("patch_embed.proj.weight", "pos_embed", "decoder_embed.weight"):
        if not isinstance(sd[k], torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: key {k!r} holds a {type(sd[k]).__name__}, not a tensor")
    w, pe = sd["patch_embed.proj.weight"], sd["pos_embed"]
    if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] < 1:
        raise CheckpointError(
            f"checkpoint {path}: key 'patch_embed.proj.weight' has shape {tuple(w.shape)}, "
            f"expected (embed_dim, channels, patch, patch)"
        )
    D, C, p, _ = w.shape
    n = pe.shape[1] - 1 if pe.ndim == 3 and pe.shape[0] == 1 and pe.shape[2] == D else -1
    side = int(round(n**0.5)) if n > 0 else 0
    if side < 1 or side * side != n:
        raise CheckpointError(
            f"checkpoint {path}: key 'pos_embed' has shape {tuple(pe.shape)}, expected "
            f"(1, 1 + h*w, {D}) with a square h x w grid"
        )
    if sd["decoder_embed.weight"].ndim != 2:
        raise CheckpointError(
            f"checkpoint {path}: key 'decoder_embed.weight' has shape "
            f"{tuple(sd['decoder_embed.weight'].shape)}, expected (decoder_dim, {D})"
        )
    depth = 1 + max(
        (int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()), default=-1
    )
    ddepth = 1 + max(
        (int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.") and k.split(".")[1].isdigit()), default=-1
    )
    if depth < 1:
        raise CheckpointError(f"{path}: not an MAE pretraining checkpoint (no encoder block 'blocks.0.*')")
    Dd = sd["decoder_embed.weight"].shape[0]
    heads = {a["embed_dim"]: a["num_heads"] for a in ARCHS.values() if a["patch_size"] == p}
    return dict(
        img_size=side * p,
        patch_size=p,
        in_chans=C,
        embed_dim=D,
        depth=depth,
        num_heads=heads.get(D, max(1, D // 64)),
        decoder_embed_dim=Dd,
        decoder_depth=ddepth,
        decoder_num_heads=16 if Dd % 16 == 0 else max(1, Dd // 32),
    )
