"""The Vision Transformer encoder that every initialisation loads into.

One class, ``VisionTransformer``, whose parameter names are those of timm's
``timm.models.vision_transformer.VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
``norm``, ``fc_norm``, ``head``), so the official MAE / DeiT / MoCo v3 / BEiT checkpoints load after a
key rename at most (``backbones/converters.py``). On top of timm's block it adds what the transfer
protocols of the MAE paper need:

* BEiT relative position bias (``attn.relative_position_bias_table``, the BEiT layout with 3 extra
  entries for the cls token), resized bicubically for other grids, zero-initialised when a
  checkpoint has none (as the MAE paper does for every initialisation in detection/segmentation);
* or ViTDet's decomposed relative position (``use_rel_pos='decomposed'``: ``attn.rel_pos_h`` /
  ``attn.rel_pos_w`` of shape (2*size-1, head_dim), detectron2's ``Attention(use_rel_pos=True)``,
  linearly interpolated to other sizes as detectron2's ``get_rel_pos`` does, zero-initialised);
* layer scale (timm's ``LayerScale``: ``ls1.gamma`` / ``ls2.gamma``);
* ViTDet windowed attention in chosen blocks, for dense inputs;
* absolute position embeddings interpolated on the fly to any input size (timm's
  ``resample_abs_pos_embed``, bicubic, cls token kept).

Attention is ``F.scaled_dot_product_attention``; the relative position bias is passed as its
additive float mask. ``MaskedAutoencoder`` (backbones/mae.py) subclasses this encoder, so an MAE
checkpoint *is* an encoder checkpoint plus decoder keys.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, resample_abs_pos_embed

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # what MAE / DeiT / BEiT / MoCo v3 ViTs use


# --------------------------------------------------------------------------------------------------
# 2-D sin-cos position embeddings (exactly the values of facebookresearch/mae util/pos_embed.py)
# --------------------------------------------------------------------------------------------------
def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | Sequence[int], cls_token: bool = False) -> torch.Tensor:
    """(gh*gw [+1], D) fixed embedding. As in the official code the first half of the channels encodes
    the *column* coordinate (``np.meshgrid(grid_w, grid_h)``), the second half the row; the cls slot is 0."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    assert embed_dim % 4 == 0, "sin-cos position embedding needs embed_dim divisible by 4"
    cols, rows = torch.meshgrid(
        torch.arange(gw, dtype=torch.float64), torch.arange(gh, dtype=torch.float64), indexing="xy"
    )
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000**omega

    def one_d(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([one_d(cols), one_d(rows)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim), emb], dim=0)
    return emb


# --------------------------------------------------------------------------------------------------
# Relative position bias (BEiT layout)
# --------------------------------------------------------------------------------------------------
def num_relative_distances(grid: Sequence[int]) -> int:
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def relative_position_index(grid: Sequence[int], with_cls: bool) -> torch.Tensor:
    """Index into the BEiT table for an (gh, gw) grid; the last 3 table rows are cls->token,
    token->cls and cls->cls. Shape (N[+1], N[+1])."""
    gh, gw = grid
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    idx = rel.sum(-1)
    if not with_cls:
        return idx
    n = num_relative_distances(grid)
    full = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=idx.dtype)
    full[1:, 1:] = idx
    full[0, 0:] = n - 3
    full[0:, 0] = n - 2
    full[0, 0] = n - 1
    return full


def resize_rel_pos_table(table: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of a BEiT table ((2h-1)(2w-1)+3, heads) to another grid; cls rows kept."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return table
    nh = table.shape[1]
    oh, ow = 2 * old_grid[0] - 1, 2 * old_grid[1] - 1
    th, tw = 2 * new_grid[0] - 1, 2 * new_grid[1] - 1
    body, extra = table[: oh * ow], table[oh * ow :]
    body = body.float().T.reshape(1, nh, oh, ow)
    body = F.interpolate(body, size=(th, tw), mode="bicubic", align_corners=False)
    body = body.reshape(nh, th * tw).T.to(table.dtype)
    return torch.cat([body, extra], dim=0)


def infer_rel_pos_grid(table_len: int) -> tuple[int, int]:
    """Square grid whose BEiT table has ``table_len`` rows."""
    side = int(round(math.sqrt(table_len - 3)))
    if side * side != table_len - 3 or side % 2 == 0:
        raise ValueError(f"relative_position_bias_table with {table_len} rows is not a square BEiT table")
    return ((side + 1) // 2, (side + 1) // 2)


# --------------------------------------------------------------------------------------------------
# Decomposed relative position (ViTDet / MViTv2; detectron2 modeling/backbone/utils.py)
# --------------------------------------------------------------------------------------------------
REL_POS_TYPES = ("beit", "decomposed")


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) embeddings of the relative positions, the (L, C) table linearly
    interpolated to 2*max(q, k)-1 rows if needed: detectron2's ``get_rel_pos``."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = (
            F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
            .reshape(-1, max_rel_dist)
            .permute(1, 0)
        )
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid: Sequence[int]
) -> torch.Tensor:
    """(B, heads, N, N) additive attention bias of detectron2's ``add_decomposed_rel_pos`` for the
    (unscaled) queries ``q`` (B, heads, N, head_dim) on an (h, w) grid, keys on the same grid."""
    h, w = grid
    Rh, Rw = get_rel_pos(h, h, rel_pos_h), get_rel_pos(w, w, rel_pos_w)
    B, nh, N, d = q.shape
    r_q = q.reshape(B, nh, h, w, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh.to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw.to(q.dtype))
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, N, N)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``. On CPU under bf16 autocast it runs in fp32: torch's CPU
    flash-attention kernel is slower in bf16 than in fp32 at ViT shapes (fwd+bwd, one thread:
    1.6x at ViT-B's 197 tokens x 32-dim heads of the MAE decoder, 2.9x at the 50 visible tokens of
    its encoder; `bench perf pretrain`: MAE ViT-B step 10-15 % faster), and fp32 is the more
    accurate of the two. On GPU the bf16 kernels are the fast ones and are kept."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), dropout_p=dropout_p, attn_mask=None if bias is None else bias.float()
            ).to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, attn_mask=None if bias is None else bias.to(q.dtype)
    )


class Attention(nn.Module):
    """timm-named multi-head self-attention (``qkv``, ``proj``) with optional relative position for
    a ``rel_pos_grid``: BEiT's bias table (``relative_position_bias_table``) or, with
    ``rel_pos_type='decomposed'``, ViTDet's ``rel_pos_h`` / ``rel_pos_w`` (zero-initialised, as
    detectron2's ``rel_pos_zero_init=True``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_grid: Sequence[int] | None = None,
        rel_pos_type: str = "beit",
    ):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        assert rel_pos_type in REL_POS_TYPES, rel_pos_type
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_grid = tuple(rel_pos_grid) if rel_pos_grid else None
        self.rel_pos_type = rel_pos_type
        if self.rel_pos_grid and rel_pos_type == "beit":
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(num_relative_distances(self.rel_pos_grid), num_heads)
            )
        elif self.rel_pos_grid:
            head_dim = dim // num_heads
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * self.rel_pos_grid[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * self.rel_pos_grid[1] - 1, head_dim))
        self._index_cache: dict = {}

    def rel_pos_bias(self, grid: Sequence[int], with_cls: bool) -> torch.Tensor:
        """(heads, N, N) additive bias for a token grid, the table resized if the grid differs."""
        grid = tuple(grid)
        table = resize_rel_pos_table(self.relative_position_bias_table, self.rel_pos_grid, grid)
        key = (grid, with_cls)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(grid, with_cls).to(table.device)
        idx = self._index_cache[key]
        if idx.device != table.device:
            idx = self._index_cache[key] = idx.to(table.device)
        n = idx.shape[0]
        return table[idx.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None, with_cls: bool = True) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rel_pos_grid is not None and grid is not None and self.rel_pos_type == "beit":
            bias = self.rel_pos_bias(grid, with_cls).unsqueeze(0)
        elif self.rel_pos_grid is not None and grid is not None:
            p = 1 if with_cls else 0  # the cls token gets no relative position (zero bias)
            bias = decomposed_rel_pos_bias(q[:, :, p:], self.rel_pos_h, self.rel_pos_w, grid)
            if p:
                bias = F.pad(bias, (p, 0, p, 0))
        x = attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


def window_partition(x: torch.Tensor, grid: Sequence[int], ws: int):
    """(B, gh*gw, C) tokens -> (B*nW, ws*ws, C) windows, zero-padding the grid to a multiple of ws."""
    B, _, C = x.shape
    gh, gw = grid
    x = x.reshape(B, gh, gw, C)
    ph, pw = (ws - gh % ws) % ws, (ws - gw % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = gh + ph, gw + pw
    x = x.reshape(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
    return x, (Hp, Wp)


def window_unpartition(x: torch.Tensor, ws: int, padded: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    Hp, Wp = padded
    gh, gw = grid
    C = x.shape[-1]
    B = x.shape[0] // ((Hp // ws) * (Wp // ws))
    x = x.reshape(B, Hp // ws, Wp // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    return x[:, :gh, :gw].reshape(B, gh * gw, C)


class Block(nn.Module):
    """Pre-norm transformer block, parameter names as timm's ``Block``. With ``window_size > 0``
    and a token grid, attention runs inside non-overlapping windows (ViTDet); the MLP runs on all
    tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_path: float = 0.0,
        norm_layer=LayerNorm,
        rel_pos_grid: Sequence[int] | None = None,
        window_size: int = 0,
        rel_pos_type: str = "beit",
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        attn_grid = (window_size, window_size) if (window_size and rel_pos_grid) else rel_pos_grid
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_grid=attn_grid, rel_pos_type=rel_pos_type)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None, with_cls: bool = True) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size and grid is not None and not with_cls:
            ws = self.window_size
            y, padded = window_partition(y, grid, ws)
            y = self.attn(y, (ws, ws), with_cls=False)
            y = window_unpartition(y, ws, padded, grid)
        else:
            y = self.attn(y, grid, with_cls)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# --------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------
class VisionTransformer(nn.Module):
    """ViT encoder, weight-compatible with timm's ``VisionTransformer`` (class token, absolute
    position embedding with a cls slot, LayerNorm eps 1e-6).

    ``global_pool='token'`` classifies from the cls token after ``norm``; ``'avg'`` averages the
    patch tokens and applies ``fc_norm`` (MAE fine-tuning). ``use_rel_pos`` adds a relative position
    per block: ``True`` or ``'beit'`` BEiT's bias table, ``'decomposed'`` ViTDet's ``rel_pos_h`` /
    ``rel_pos_w``; ``init_values`` adds layer scale; ``window_size`` + ``global_blocks``
    make every block not listed in ``global_blocks`` attend within windows on dense inputs.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        use_abs_pos: bool = True,
        use_rel_pos: bool | str = False,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        fc_norm: bool | None = None,
        sincos_pos_embed: bool = False,
        norm_layer=LayerNorm,
    ):
        super().__init__()
        assert global_pool in ("token", "avg", ""), global_pool
        if use_rel_pos is True:
            use_rel_pos = "beit"
        if use_rel_pos and use_rel_pos not in REL_POS_TYPES:
            raise ValueError(
                f"use_rel_pos {use_rel_pos!r}: choose from False, True (= 'beit'), {', '.join(REL_POS_TYPES)}"
            )
        self.rel_pos_type = use_rel_pos or None
        rel_pos_type = use_rel_pos or "beit"
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.patch_size = patch_size
        self.pos_grid = tuple(self.patch_embed.grid_size)  # grid the stored pos_embed / tables are for
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        n = self.pos_grid[0] * self.pos_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim)) if use_abs_pos else None
        self.sincos_pos_embed = sincos_pos_embed
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    init_values,
                    dpr[i],
                    norm_layer,
                    rel_pos_grid=self.pos_grid if use_rel_pos else None,
                    window_size=0 if i in global_blocks else window_size,
                    rel_pos_type=rel_pos_type,
                )
                for i in range(depth)
            ]
        )
        use_fc_norm = (global_pool == "avg") if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- initialisation (facebookresearch/mae) ---------------------------------------------------
    def init_weights(self):
        if self.pos_embed is not None:
            if self.sincos_pos_embed:
                self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.embed_dim, self.pos_grid, cls_token=True)[None])
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_module)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def grid_for(self, img_hw: Sequence[int]) -> tuple[int, int]:
        return img_hw[0] // self.patch_size, img_hw[1] // self.patch_size

    # -- timm conventions used by timm.optim (weight decay / layer decay) -------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token", "relative_position_bias_table", "rel_pos_h", "rel_pos_w"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # -- embedding ----------------------------------------------------------------------------------
    def pos_embed_for(self, grid: Sequence[int]) -> torch.Tensor | None:
        """Absolute position embedding (1, 1+gh*gw, D) for a grid, bicubic-resampled if needed."""
        if self.pos_embed is None:
            return None
        if tuple(grid) == self.pos_grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(grid), old_size=list(self.pos_grid), num_prefix_tokens=1)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> tokens (B, 1+N, D) with cls token and position embedding."""
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input size {H}x{W} is not divisible by the patch size {self.patch_size}")
        x = self.patch_embed(x)
        grid = self.grid_for((H, W))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        pos = self.pos_embed_for(grid)
        if pos is not None:
            x = x + pos[:, 1:]
            cls = cls + pos[:, :1]
        return torch.cat([cls, x], dim=1), grid

    # -- forward passes -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.embed(x)
        for blk in self.blocks:
            x = blk(x, grid, with_cls=True)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int], with_cls: bool | None = None
    ) -> list[torch.Tensor]:
        """Feature maps (B, D, gh, gw) after the given blocks (0-based), for dense heads.

        If any block uses windowed attention the cls token is dropped after embedding (ViTDet);
        otherwise it goes through the blocks and is dropped from the outputs (BEiT/MAE UperNet).
        ``with_cls=False`` drops it in every case (detectron2's ViT never has one in its blocks).
        """
        x, grid = self.embed(x)
        if with_cls is None:
            with_cls = not any(b.window_size for b in self.blocks)
        elif with_cls and any(b.window_size for b in self.blocks):
            raise ValueError("windowed attention runs without the cls token (with_cls=False)")
        if not with_cls:
            x = x[:, 1:]
        wanted = {i % self.depth for i in indices}
        outs = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x, grid, with_cls)
            if i in wanted:
                t = x[:, 1:] if with_cls else x
                outs[i] = t.transpose(1, 2).reshape(t.shape[0], -1, *grid)
            if len(outs) == len(wanted):
                break
        return [outs[i % self.depth] for i in indices]


def _init_module(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Architectures (names as timm's; the CPU sizes are ours, for tests and the demo)
# --------------------------------------------------------------------------------------------------
ARCHS: dict[str, dict] = {
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # CPU sizes: the digits demo's ViT and a test-sized one. The demo's 8x8 scans are upsampled to
    # 32 px, so each 8-px patch covers 2x2 source pixels (at 64 px a patch was one source pixel and
    # the normalised-pixel target of a nearly constant patch mostly interpolation noise): 16 tokens.
    "vit_demo_patch8": dict(img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4),
    "vit_test_patch8": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
}


def arch_config(arch: str) -> dict:
    if arch not in ARCHS:
        from bench.core.errors import BenchError

        raise BenchError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return dict(ARCHS[arch])


def create_vit(arch: str, **overrides) -> VisionTransformer:
    cfg = arch_config(arch)
    cfg.update(overrides)
    return VisionTransformer(**cfg)
