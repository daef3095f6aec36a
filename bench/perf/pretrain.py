"""``bench perf pretrain``: how fast is an MAE training step, and how close to the hardware?
``bench perf cls``: the fine-tuning step, ours vs timm's ViT.

``perf pretrain`` prints, for each decoder depth:
* img/s of a full MAE training step (forward, backward, AdamW) at mask ratio 0.75, bf16 (and fp32);
* img/s of the same model with the encoder on *all* tokens (masked patches replaced by a learned
  mask token inside the encoder, BEiT/SimMIM style);
* their wall-clock ratio next to their FLOP ratio (``torch.utils.flop_counter``, fwd + bwd);
* achieved GFLOP/s next to the fp32 and bf16 matmul peaks measured in the same process.

The MAE speed-up is the paper's point: an encoder that only sees the visible 25 % of patches does
~4x less encoder work; the wall ratio should track the FLOP ratio.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from backbones.mae import MaskedAutoencoder
from backbones.vit import arch_config, create_vit
from bench.core.device import pick_device

from .timing import loss_flops, matmul_peaks, median_step_time, step_flops, time_steps


class MaskTokenEncoderMAE(MaskedAutoencoder):
    """The comparison model: masked patches become a learned ``enc_mask_token`` *in the encoder*, so
    the encoder runs on all N tokens; the decoder and loss are MAE's."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.enc_mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))

    def forward(self, imgs, mask_ratio=0.75, noise=None):
        x = self.patch_embed(imgs)
        B, N, D = x.shape
        _, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        x = x * (1 - mask.unsqueeze(-1)) + self.enc_mask_token * mask.unsqueeze(-1)
        x = x + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x)) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        return self.forward_loss(imgs, pred, mask), pred, mask


def _start(device: str, threads: int | None, what: str) -> tuple[torch.device, dict]:
    """Pick the device, set the thread count and the seed, print the start line, measure the peaks."""
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {dev} ({where}), torch {torch.__version__}; {what}")
    peaks = matmul_peaks(dev)
    print(f"matmul peak (same process): fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    return dev, peaks


def perf_pretrain(
    arch="vit_base_patch16",
    img_size=224,
    batch_size=8,
    decoder_depths=(8, 1),
    iters=3,
    threads=None,
    baseline=False,
    device="auto",
):
    """Time MAE against the mask-token encoder for each decoder depth; print and return the rows."""
    dev, peaks = _start(device, threads, f"{arch} @ {img_size}, batch {batch_size}")
    imgs = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    precisions = ["bf16"] + (["fp32"] if baseline else [])
    rows = []
    for dd in decoder_depths:
        mae = MaskedAutoencoder.from_arch(arch, img_size=img_size, decoder_depth=dd).to(dev)
        mtk = MaskTokenEncoderMAE(**{**mae.arch}).to(dev)
        f_mae, f_mtk = step_flops(mae, imgs), step_flops(mtk, imgs)
        for pname in precisions:
            amp = pname == "bf16"
            t_mae = time_steps(mae, imgs, amp, iters, dev)
            t_mtk = time_steps(mtk, imgs, amp, iters, dev)
            rows.append(
                dict(
                    decoder=dd,
                    prec=pname,
                    mae_ips=batch_size / t_mae,
                    mtk_ips=batch_size / t_mtk,
                    wall_ratio=t_mtk / t_mae,
                    flop_ratio=f_mtk / f_mae,
                    mae_gflops=f_mae / t_mae / 1e9,
                    mae_gflop_img=f_mae / batch_size / 1e9,
                    mtk_gflop_img=f_mtk / batch_size / 1e9,
                    peak=peaks[pname],
                )
            )
        del mae, mtk
    print_pretrain_rows(rows)
    return rows


def print_pretrain_rows(rows: list[dict]) -> None:
    hdr = (
        f"{'decoder':>7} {'prec':>5} {'MAE img/s':>10} {'mask-tok img/s':>15} {'wall ratio':>11} {'FLOP ratio':>11} "
        f"{'wall/FLOP':>10} {'GFLOP/img MAE|mtk':>19} {'MAE GFLOP/s':>12} {'of peak':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['decoder']:>7} {r['prec']:>5} {r['mae_ips']:>10.2f} {r['mtk_ips']:>15.2f} {r['wall_ratio']:>10.2f}x "
            f"{r['flop_ratio']:>10.2f}x {r['wall_ratio'] / r['flop_ratio']:>10.2f} "
            f"{r['mae_gflop_img']:>9.1f}|{r['mtk_gflop_img']:<9.1f} {r['mae_gflops']:>12.0f} {100 * r['mae_gflops'] / r['peak']:>7.0f}%"
        )


def _cls_step_time(model, imgs, labels, amp, iters: int, device) -> float:
    return median_step_time(model, lambda m: F.cross_entropy(m(imgs), labels), amp, iters, device)


def perf_cls(arch="vit_base_patch16", img_size=224, batch_size=8, iters=3, threads=None, baseline=False, device="auto"):
    """Fine-tuning step (global-pool ViT + head, drop path 0.1, AdamW): ours vs timm's ViT, img/s, GFLOP/s."""
    dev, peaks = _start(device, threads, f"fine-tune step {arch} @ {img_size}, batch {batch_size}")
    kw = dict(img_size=img_size, num_classes=1000, global_pool="avg", drop_path_rate=0.1)
    ours = create_vit(arch, **kw).to(dev)
    a = arch_config(arch)
    ref = TimmViT(
        **{k: a[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")},
        **kw,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).to(dev)
    imgs = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    labels = torch.randint(0, 1000, (batch_size,), device=dev)
    flops = loss_flops(ours, lambda m: F.cross_entropy(m(imgs), labels))
    rows = []
    for pname in ["bf16"] + (["fp32"] if baseline else []):
        t_ours = _cls_step_time(ours, imgs, labels, pname == "bf16", iters, dev)
        t_ref = _cls_step_time(ref, imgs, labels, pname == "bf16", iters, dev)
        rows.append(dict(prec=pname, ours_ips=batch_size / t_ours, timm_ips=batch_size / t_ref, ratio=t_ref / t_ours))
        print(
            f"{pname}: ours {batch_size / t_ours:.2f} img/s ({flops / t_ours / 1e9:.0f} GFLOP/s, "
            f"{100 * flops / t_ours / 1e9 / peaks[pname]:.0f}% of peak) | timm ViT {batch_size / t_ref:.2f} img/s | "
            f"ratio {t_ref / t_ours:.2f}x; {flops / batch_size / 1e9:.1f} GFLOP/img (fwd+bwd)"
        )
    return rows
