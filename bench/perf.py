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


def median_step_time(model, loss_of, bf16: bool, iters: int, device) -> float:
    """Median seconds of a training step (forward under optional bf16 autocast, backward, fused
    AdamW), after one warm-up step. ``loss_of(model) -> loss``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    times = []
    for i in range(iters + 1):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_steps(model, imgs, bf16: bool, iters: int, device) -> float:
    """Seconds per MAE training step at mask ratio 0.75."""
    return median_step_time(model, lambda m: m(imgs, mask_ratio=0.75)[0], bf16, iters, device)


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


# ---------------------------------------------------------------------------------------------------
# Fine-tuning step (classification) and data loading
# ---------------------------------------------------------------------------------------------------
def _cls_step_time(model, imgs, labels, bf16: bool, iters: int, device) -> float:
    return median_step_time(model, lambda m: torch.nn.functional.cross_entropy(m(imgs), labels), bf16, iters, device)


def perf_cls(arch="vit_base_patch16", img_size=224, batch_size=8, iters=3, threads=None, baseline=False, device="auto"):
    """Fine-tuning step (global-pool ViT + head, drop path 0.1, AdamW): ours vs timm's ViT, img/s, GFLOP/s."""
    from functools import partial
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torch.utils.flop_counter import FlopCounterMode
    from backbones.vit import arch_config, create_vit
    from bench.engine import pick_device
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"device {dev} ({torch.get_num_threads()} threads); fine-tune step {arch} @ {img_size}, batch {batch_size}")
    peak32, peak16 = matmul_peak(torch.float32, dev), matmul_peak(torch.bfloat16, dev)
    print(f"matmul peak (2048^3, same process): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    kw = dict(img_size=img_size, num_classes=1000, global_pool="avg", drop_path_rate=0.1)
    ours = create_vit(arch, **kw).to(dev)
    a = arch_config(arch)
    ref = TimmViT(**{k: a[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")}, **kw,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)).to(dev)
    imgs = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    labels = torch.randint(0, 1000, (batch_size,), device=dev)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(ours(imgs), labels).backward()
    ours.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    for pname, bf16 in [("bf16", True)] + ([("fp32", False)] if baseline else []):
        t_ours = _cls_step_time(ours, imgs, labels, bf16, iters, dev)
        t_ref = _cls_step_time(ref, imgs, labels, bf16, iters, dev)
        peak = peak16 if bf16 else peak32
        print(f"{pname}: ours {batch_size / t_ours:.2f} img/s ({flops / t_ours / 1e9:.0f} GFLOP/s, "
              f"{100 * flops / t_ours / 1e9 / peak:.0f}% of peak) | timm ViT {batch_size / t_ref:.2f} img/s | "
              f"ratio {t_ref / t_ours:.2f}x; {flops / batch_size / 1e9:.1f} GFLOP/img (fwd+bwd)")


def perf_data(img_size=224, batch_size=64, workers=(0, 2), n_images=256, decoder="both"):
    """Loader img/s (JPEG decode + RandomResizedCrop + flip + normalise) for PIL and torchvision's
    decoder, with 0..N workers, on JPEGs cut from the embedded photos (ImageNet-like 500x375)."""
    import tempfile
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader
    from bench.data import ImageFolderImages, embedded_photos, pretrain_transform
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-data-"))
    rng = np.random.default_rng(0)
    photos = [p for p in embedded_photos() if min(p.shape[:2]) >= 375]
    for i in range(n_images):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 374), rng.integers(0, max(1, p.shape[1] - 499))
        Image.fromarray(np.ascontiguousarray(p[y:y + 375, x:x + 500])).save(tmp / f"{i:05d}.jpg", quality=90)
    try:
        ds = ImageFolderImages(tmp, pretrain_transform(img_size))
        print(f"{n_images} JPEGs 500x375 -> RandomResizedCrop {img_size} + flip + normalise, batch {batch_size}; "
              f"main process uses {torch.get_num_threads()} torch thread(s)")
        for w in workers:
            loader = DataLoader(ds, batch_size=batch_size, num_workers=w, persistent_workers=w > 0, shuffle=True)
            for _ in loader:  # warm-up (worker start)
                break
            t = time.perf_counter()
            n = sum(b.shape[0] for b in loader)
            print(f"  {w} worker(s): {n / (time.perf_counter() - t):.0f} img/s")
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def perf_seg(config="paper_vit_base", backbone="random_vit_base_patch16", crop=512, batch_size=2, iters=2,
             threads=None, baseline=False):
    """UperNet training step (mmseg model built from our config, SyncBN -> BN for one process):
    img/s, GFLOP/s and the fraction of the matmul peak, on random images and labels."""
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    from torch.utils.flop_counter import FlopCounterMode
    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT)
    import tempfile
    from tasks.segmentation.run import load_config
    if threads:
        torch.set_num_threads(threads)
    register_all_modules(init_default_scope=True)
    # the task's own config loading: backbone, head widths and crop follow the arguments
    m = load_config(config, backbone=backbone, data_root=".", work_dir=tempfile.gettempdir(), crop_size=crop).model
    m.pop("data_preprocessor", None)

    def no_sync_bn(d):
        if isinstance(d, dict):
            if d.get("type") == "SyncBN":
                d["type"] = "BN"
            for v in d.values():
                no_sync_bn(v)
        elif isinstance(d, list):
            for v in d:
                no_sync_bn(v)
    no_sync_bn(m)
    torch.manual_seed(0)
    model = MODELS.build(m).train()
    dev = torch.device("cpu")
    x = torch.randn(batch_size, 3, crop, crop)
    samples = []
    for _ in range(batch_size):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, crop, crop))))
        s.set_metainfo(dict(img_shape=(crop, crop), pad_shape=(crop, crop), ori_shape=(crop, crop)))
        samples.append(s)

    def loss_of(mm):
        return sum(v for k, v in mm.loss(x, samples).items() if "loss" in k)
    with FlopCounterMode(display=False) as fc:
        loss_of(model).backward()
    model.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    peak32, peak16 = matmul_peak(torch.float32, dev), matmul_peak(torch.bfloat16, dev)
    print(f"UperNet ({config}) on {backbone} @ {crop}, batch {batch_size}, {torch.get_num_threads()} threads; "
          f"{flops / batch_size / 1e9:.0f} GFLOP/img (fwd+bwd); matmul peak fp32 {peak32:.0f}, bf16 {peak16:.0f} GFLOP/s")
    for pname, bf16 in [("bf16", True)] + ([("fp32", False)] if baseline else []):
        t = median_step_time(model, loss_of, bf16, iters, dev)
        peak = peak16 if bf16 else peak32
        print(f"  {pname}: {batch_size / t:.3f} img/s, {flops / t / 1e9:.0f} GFLOP/s ({100 * flops / t / 1e9 / peak:.0f}% of peak)")
