"""``bench perf pretrain``: how fast is an MAE training step, and how close to the hardware?

Prints in one run, for each decoder depth:
* img/s of a full MAE training step (forward, backward, AdamW) at mask ratio 0.75, fp32 and bf16;
* img/s of the same model with the encoder on *all* tokens (masked patches replaced by a learned
  mask token inside the encoder, BEiT/SimMIM style);
* their wall-clock ratio next to their FLOP ratio (``torch.utils.flop_counter``, fwd + bwd);
* achieved GFLOP/s next to the fp32 and bf16 matmul peaks measured in the same process.

The MAE speed-up is the paper's point: an encoder that only sees the visible 25 % of patches does
~4x less encoder work; the wall ratio should track the FLOP ratio.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from backbones.mae import MaskedAutoencoder


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


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Best-of GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, imgs) -> float:
    """FLOPs of one forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        loss, _, _ = model(imgs, mask_ratio=0.75)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def time_steps(model, imgs, bf16: bool, iters: int, device, fused: bool = True) -> float:
    """Seconds per training step (after one warm-up step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused)
    times = []
    for i in range(iters + 1):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(imgs, mask_ratio=0.75)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]  # median


def perf_pretrain(arch="vit_base_patch16", img_size=224, batch_size=8, decoder_depths=(8, 1), iters=3, threads=None,
                  baseline=False, device="auto"):
    from bench.engine import pick_device
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"device {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}; {arch} @ {img_size}, batch {batch_size}")
    peak32 = matmul_peak(torch.float32, dev)
    peak16 = matmul_peak(torch.bfloat16, dev)
    print(f"matmul peak (2048^3, same process): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    imgs = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    precisions = [("bf16", True)] + ([("fp32", False)] if baseline else [])
    rows = []
    for dd in decoder_depths:
        kw = dict(img_size=img_size, decoder_depth=dd)
        mae = MaskedAutoencoder.from_arch(arch, **kw).to(dev)
        mtk = MaskTokenEncoderMAE(**{**mae.arch}).to(dev)
        f_mae, f_mtk = step_flops(mae, imgs), step_flops(mtk, imgs)
        for pname, bf16 in precisions:
            t_mae = time_steps(mae, imgs, bf16, iters, dev)
            t_mtk = time_steps(mtk, imgs, bf16, iters, dev)
            peak = peak16 if bf16 else peak32
            rows.append(dict(decoder=dd, prec=pname, mae_ips=batch_size / t_mae, mtk_ips=batch_size / t_mtk,
                             wall_ratio=t_mtk / t_mae, flop_ratio=f_mtk / f_mae,
                             mae_gflops=f_mae / t_mae / 1e9, mae_gflop_img=f_mae / batch_size / 1e9,
                             mtk_gflop_img=f_mtk / batch_size / 1e9, peak=peak))
        del mae, mtk
    hdr = (f"{'decoder':>7} {'prec':>5} {'MAE img/s':>10} {'mask-tok img/s':>15} {'wall ratio':>11} {'FLOP ratio':>11} "
           f"{'wall/FLOP':>10} {'GFLOP/img MAE|mtk':>19} {'MAE GFLOP/s':>12} {'of peak':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['decoder']:>7} {r['prec']:>5} {r['mae_ips']:>10.2f} {r['mtk_ips']:>15.2f} {r['wall_ratio']:>10.2f}x "
              f"{r['flop_ratio']:>10.2f}x {r['wall_ratio'] / r['flop_ratio']:>10.2f} "
              f"{r['mae_gflop_img']:>9.1f}|{r['mtk_gflop_img']:<9.1f} {r['mae_gflops']:>12.0f} {100 * r['mae_gflops'] / r['peak']:>7.0f}%")
    return rows
