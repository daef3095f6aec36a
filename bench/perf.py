"""``bench perf pretrain``: how fast is an MAE training step, and how close to the hardware?

Prints in one run, for each decoder depth:
* img/s of a full MAE training step (forward, backward, AdamW) at mask ratio 0.75, fp32 and bf16;
* img/s of the same model with the encoder on *all* tokens (masked patches replaced by a learned
  mask token inside the encoder, BEiT/SimMIM style);
* their wall-clock ratio next to their FLOP ratio (``torch.utils.flop_counter``, fwd + bwd);
* achieved GFLOP/s next to the fp32 and bf16 matmul peaks measured in the same process.

The MAE speed-up is the paper's point: an encoder that only sees the visible 25 % of patches does
~4x less encoder work; the wall ratio should track the FLOP ratio.

``bench perf cls`` times the fine-tuning step (ours vs timm's ViT); ``bench perf seg`` / ``det`` the
UperNet / Mask R-CNN training step built from the dense tasks' own configs (random images and
targets), in NCHW and / or channels-last conv layout.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from backbones.mae import MaskedAutoencoder
from bench.core.errors import BenchError


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


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5, budget_s: float = 1.0) -> float:
    """Best-of GFLOP/s of an n x n x n matmul. The size grows from 256 by doubling up to ``n`` while
    one product stays under ``budget_s``: a CPU without bf16 matmul units runs bf16 at ~1 GFLOP/s
    (measured on one machine of this kind), where a 2048^3 product alone would take 15 s."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        if size >= n or (time.perf_counter() - t) * 8 > budget_s:
            break
        size *= 2
    n = size
    best = 0.0
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
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
    times = step_times(model, loss_of, bf16, iters, device)
    return sorted(times)[len(times) // 2]


def step_times(model, loss_of, bf16: bool, iters: int, device) -> list[float]:
    """Seconds of each of ``iters`` training steps (as ``median_step_time``) after one warm-up step."""
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
    return times


def time_steps(model, imgs, bf16: bool, iters: int, device) -> float:
    """Seconds per MAE training step at mask ratio 0.75."""
    return median_step_time(model, lambda m: m(imgs, mask_ratio=0.75)[0], bf16, iters, device)


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
    from bench.core.engine import pick_device

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(
        f"device {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}; {arch} @ {img_size}, batch {batch_size}"
    )
    peak32 = matmul_peak(torch.float32, dev)
    peak16 = matmul_peak(torch.bfloat16, dev)
    print(f"matmul peak (same process): fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
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
                    peak=peak,
                )
            )
        del mae, mtk
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
    from bench.core.engine import pick_device

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"device {dev} ({torch.get_num_threads()} threads); fine-tune step {arch} @ {img_size}, batch {batch_size}")
    peak32, peak16 = matmul_peak(torch.float32, dev), matmul_peak(torch.bfloat16, dev)
    print(f"matmul peak (same process): fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
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
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(ours(imgs), labels).backward()
    ours.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    for pname, bf16 in [("bf16", True)] + ([("fp32", False)] if baseline else []):
        t_ours = _cls_step_time(ours, imgs, labels, bf16, iters, dev)
        t_ref = _cls_step_time(ref, imgs, labels, bf16, iters, dev)
        peak = peak16 if bf16 else peak32
        print(
            f"{pname}: ours {batch_size / t_ours:.2f} img/s ({flops / t_ours / 1e9:.0f} GFLOP/s, "
            f"{100 * flops / t_ours / 1e9 / peak:.0f}% of peak) | timm ViT {batch_size / t_ref:.2f} img/s | "
            f"ratio {t_ref / t_ours:.2f}x; {flops / batch_size / 1e9:.1f} GFLOP/img (fwd+bwd)"
        )


# ``bench perf pretrain``'s MAE ViT-B/16 step (224 px, batch 8, bf16) on the 2-core CPU this suite was
# built on: the rate the loader must at least keep up with there (README, "Speed").
MODEL_IMG_S_CPU = 7.5


def perf_data(
    img_size=224, batch_size=64, workers=(0, 2), n_images=256, decoder="both", model_img_s=MODEL_IMG_S_CPU, repeats=3
):
    """Loader img/s of MAE's pretraining input pipeline (JPEG decode + RandomResizedCrop bicubic +
    flip + normalise) on JPEGs cut from the embedded photos (ImageNet-like 500x375), for each decoder
    and worker count, next to the model's img/s it has to feed.

    ``pil``: PIL decode + torchvision's v1 transforms on PIL images (the previous path);
    ``torchvision``: ``torchvision.io`` decode + ``transforms.v2`` on uint8 tensors (the default now).
    One persistent DataLoader per (decoder, workers) as the engine builds it (prefetch 4); a warm-up
    pass, then ``repeats`` timed passes over the images, the configurations taking turns pass by pass
    so machine load hits them alike; prints the median and best pass."""
    import shutil
    import statistics
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    from bench.core.data import ImageFolderImages, embedded_photos, pretrain_transform
    from bench.core.errors import BenchError

    decoders = {"both": ("pil", "torchvision"), "pil": ("pil",), "torchvision": ("torchvision",)}.get(decoder)
    if decoders is None:
        raise BenchError(f"unknown decoder {decoder!r}; expected pil, torchvision or both")
    if n_images < batch_size or repeats < 1 or model_img_s <= 0 or any(w < 0 for w in workers):
        raise BenchError("need n_images >= batch size, repeats >= 1, model img/s > 0 and workers >= 0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-data-"))
    rng = np.random.default_rng(0)
    photos = [p for p in embedded_photos() if min(p.shape[:2]) >= 375]
    for i in range(n_images):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 374), rng.integers(0, max(1, p.shape[1] - 499))
        Image.fromarray(np.ascontiguousarray(p[y : y + 375, x : x + 500])).save(tmp / f"{i:05d}.jpg", quality=90)
    try:
        loaders = {}
        for w in workers:
            for d in decoders:
                ds = ImageFolderImages(tmp, pretrain_transform(img_size, tensor=d == "torchvision"))
                loaders[d, w] = DataLoader(
                    ds,
                    batch_size=batch_size,
                    num_workers=w,
                    persistent_workers=w > 0,
                    prefetch_factor=4 if w else None,
                    shuffle=True,
                )
        rates = {key: [] for key in loaders}
        for r in range(repeats + 1):  # pass 0 starts the workers and warms caches: not timed
            for key, loader in loaders.items():
                t = time.perf_counter()
                n = sum(b.shape[0] for b in loader)
                if r:
                    rates[key].append(n / (time.perf_counter() - t))
        print(
            f"{n_images} JPEGs 500x375 -> RandomResizedCrop {img_size} bicubic + flip + normalise, batch {batch_size}; "
            f"median (best) of {repeats} passes; main process: {torch.get_num_threads()} torch thread(s), each worker 1"
        )
        print(
            f"model: {model_img_s:g} img/s"
            + (
                " (bench perf pretrain, MAE ViT-B/16 bf16 step on the 2-core CPU; --model-img-s for yours)"
                if model_img_s == MODEL_IMG_S_CPU
                else ""
            )
        )
        print(f"  {'decoder':<12} {'workers':>7}  {'loader img/s':>17}  {'loader / model':>14}")
        for (d, w), rs in rates.items():
            med = statistics.median(rs)
            print(f"  {d:<12} {w:>7}  {med:>8.0f} ({max(rs):>5.0f})  {med / model_img_s:>13.0f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Dense tasks: UperNet (``bench perf seg``) and Mask R-CNN (``bench perf det``) training steps, built
# from the tasks' own configs, on random images and targets
# ---------------------------------------------------------------------------------------------------
def build_dense_model(registry, model_cfg, channels_last: bool):
    """A dense task's model as one training process gets it: without its data preprocessor (inputs
    are given as normalised tensors), SyncBN -> BN (``revert_sync_batchnorm``, as mmengine's Runner
    does off DDP), mmengine's weight init, mmcv's RoI layers fed NCHW maps and the conv layout set
    (``tasks.dense.memory_format.prepare_dense_model``, as the task runners' ``DenseRunner``)."""
    import copy
    import logging

    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm

    from tasks.dense.memory_format import prepare_dense_model

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("data_preprocessor", None)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(registry.build(cfg))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return prepare_dense_model(model.train(), channels_last)


def _fp32(t):
    return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.device.type == "cpu" else t


def mmcv_ops_fp32_on_cpu(model) -> None:
    """Under CPU bf16 autocast, mmcv's CPU NMS and RoIAlign kernels take fp32 only: the RPN head's
    outputs (scores and deltas for NMS and its loss) and the RoI extractors' input maps are cast to
    fp32 (CUDA AMP keeps those in fp32 too). No-op in fp32 and on CUDA."""
    from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor

    for m in model.modules():
        if isinstance(m, BaseRoIExtractor):
            m.register_forward_pre_hook(lambda mod, args: (tuple(_fp32(f) for f in args[0]),) + tuple(args[1:]))
    rpn = getattr(model, "rpn_head", None)
    if rpn is not None:
        rpn.register_forward_hook(lambda mod, args, out: tuple([_fp32(t) for t in level] for level in out))


def dense_loss(model, inputs, samples):
    """The summed training loss of an mmengine model (``parse_losses``: every ``loss*`` term)."""
    return model.parse_losses(model.loss(inputs, samples))[0]


def _layouts(channels_last) -> list[bool]:
    """``channels_last`` None (the tasks' default on this device: CPU), True, False or 'both'."""
    from tasks.dense.memory_format import resolve_channels_last

    if channels_last == "both":
        return [False, True]
    return [resolve_channels_last(channels_last, "cpu")]


def dense_peaks(before: dict | None = None) -> dict:
    """The fp32 and bf16 matmul peaks of this CPU (GFLOP/s), each the best of ``before`` and now."""
    dev = torch.device("cpu")
    now = {"fp32": matmul_peak(torch.float32, dev), "bf16": matmul_peak(torch.bfloat16, dev)}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}


def _time_dense(title, model, loss_of, batch_size, layouts, baseline, iters, repeats, notes=(), peaks=None):
    """Print FLOPs, matmul peaks and, per precision and conv layout, img/s, step time, GFLOP/s and
    the fraction of that precision's peak. Layouts (and precisions) are timed interleaved: each of
    ``repeats`` rounds times every variant once (1 warm-up + ``iters`` steps); the median over all
    of a variant's timed steps is reported, with their min-max. The matmul peaks are the best of a
    measurement before and one after the timing (on a shared machine either can be slowed down).
    ``peaks``: the matmul peaks measured by the caller (``dense_peaks``; several models timed in one
    run share them) instead of measuring them here. Returns one dict per variant."""
    import statistics

    from torch.utils.flop_counter import FlopCounterMode

    from tasks.dense.memory_format import set_memory_format

    dev = torch.device("cpu")
    with FlopCounterMode(display=False) as fc:
        loss_of(model).backward()
    model.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    shared = peaks is not None
    peaks = dict(peaks) if shared else dense_peaks()
    names = {False: "NCHW", True: "channels-last"}
    variants = [(p, c) for p in ["bf16"] + (["fp32"] if baseline else []) for c in layouts]
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for pname, cl in variants:
            set_memory_format(model, cl)
            times[(pname, cl)] += step_times(model, loss_of, pname == "bf16", iters, dev)
    if not shared:
        peaks = dense_peaks(peaks)
    print(
        f"{title}, batch {batch_size}, {torch.get_num_threads()} threads; {flops / batch_size / 1e9:.4g} GFLOP/img "
        f"(fwd+bwd); matmul peak fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s; conv layout "
        f"{' vs '.join(names[c] for c in layouts)}"
    )
    for n in notes:
        print(f"  note: {n}")
    rows = []
    for pname, cl in variants:
        ts = sorted(times[(pname, cl)])
        t = statistics.median(ts)
        tag = f", {names[cl]}" if len(layouts) > 1 else ""
        r = dict(
            prec=pname,
            channels_last=cl,
            img_s=batch_size / t,
            step_s=t,
            gflop_img=flops / batch_size / 1e9,
            gflop_s=flops / t / 1e9,
            of_peak=flops / t / 1e9 / peaks[pname],
            steps=len(ts),
        )
        rows.append(r)
        print(
            f"  {pname}{tag}: {r['img_s']:.3f} img/s, {t:.4g} s/step (median of {len(ts)}, {ts[0]:.4g}-{ts[-1]:.4g}), "
            f"{r['gflop_s']:.2f} GFLOP/s ({100 * r['of_peak']:.0f}% of {pname} peak)"
        )
        if len(layouts) > 1 and cl == layouts[-1]:
            base = next(x for x in rows if x["prec"] == pname and x["channels_last"] == layouts[0])
            print(f"  {pname}: {names[layouts[-1]]} step time / {names[layouts[0]]} = {t / base['step_s']:.3f}")
    if any(r["of_peak"] > 1 for r in rows):
        print(
            "  note: over 100 %: the peak is torch.matmul's 2048^3 rate, not the hardware's; oneDNN's fp32 "
            "convolutions run faster than the BLAS matmul here"
        )
    set_memory_format(model, layouts[0])
    return rows


def perf_seg(
    config="paper_vit_base",
    backbone="random_vit_base_patch16",
    crop=512,
    batch_size=2,
    iters=2,
    threads=None,
    baseline=False,
    channels_last=None,
    repeats=1,
    trust_config=False,
):
    """UperNet training step (mmseg model built from the task's own config for one process):
    img/s, step time, GFLOP/s and the fraction of the matmul peak, on random images and labels.
    ``channels_last``: None = the task's default here, True / False, or 'both' (timed interleaved)."""
    import tempfile

    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT)
    from tasks.segmentation.run import load_config

    if threads:
        torch.set_num_threads(threads)
    register_all_modules(init_default_scope=True)
    # the task's own config loading: backbone, head widths and crop follow the arguments
    m = load_config(
        config,
        backbone=backbone,
        data_root=".",
        work_dir=tempfile.gettempdir(),
        crop_size=crop,
        trust_config=trust_config,
    ).model
    layouts = _layouts(channels_last)
    model = build_dense_model(MODELS, m, layouts[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, crop, crop, generator=g)
    samples = []
    for _ in range(batch_size):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, crop, crop), generator=g)))
        s.set_metainfo(dict(img_shape=(crop, crop), pad_shape=(crop, crop), ori_shape=(crop, crop)))
        samples.append(s)
    return _time_dense(
        f"UperNet ({config}) on {backbone} @ {crop}",
        model,
        lambda mm: dense_loss(mm, x, samples),
        batch_size,
        layouts,
        baseline,
        iters,
        repeats,
    )


def random_det_samples(batch_size: int, size: int, boxes: int, num_classes: int, seed: int = 0):
    """``batch_size`` DetDataSamples for ``size`` x ``size`` inputs, each with ``boxes`` random boxes
    (sides 5-40 % of the image), their masks (the box's inscribed ellipse, BitmapMasks) and labels."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    samples = []
    for _ in range(batch_size):
        wh = rng.uniform(0.05, 0.4, (boxes, 2)) * size
        xy = rng.uniform(0, 1, (boxes, 2)) * (size - wh)
        bb = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        c, r = (bb[:, :2] + bb[:, 2:]) / 2, wh / 2
        masks = (
            ((xx[None] - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2
            + ((yy[None] - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2
            <= 1
        ).astype(np.uint8)
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        s.gt_instances = InstanceData(
            bboxes=torch.from_numpy(bb),
            labels=torch.from_numpy(rng.integers(0, num_classes, boxes)),
            masks=BitmapMasks(masks, size, size),
        )
        samples.append(s)
    return samples


DET_ENGINES = ("mmdet", "detectron2", "both")


def perf_det(
    config="vit_b",
    variants=("fpn",),
    backbone="random_vit_base_patch16",
    img_size=512,
    batch_size=1,
    boxes=8,
    iters=2,
    threads=None,
    baseline=False,
    channels_last=None,
    repeats=1,
    engine="both",
    trust_config=False,
):
    """Mask R-CNN training step (variant 'fpn' = ViT -> FPN [Li21] / 'vitdet' = simple pyramid, for
    one process) on random images, boxes, masks and labels: img/s, step time, GFLOP/s and the
    fraction of the matmul peak. ``engine``: 'mmdet' (the model of the detection task's mmengine
    config), 'detectron2' (``tasks.detection.detectron2.perf.build_step``: the model of its
    LazyConfig of the same name) or 'both', timed one after the other in this process with the same
    helper. ``img_size``: the square input (the protocols train at 1024; smaller for CPU)."""
    from backbones.registry import parse_name
    from backbones.vit import arch_config
    from bench.core.errors import BenchError

    if engine not in DET_ENGINES:
        raise BenchError(f"--engine {engine!r}: choose from {', '.join(DET_ENGINES)}")
    if engine == "both" and str(config) not in ("smoke", "vit_b", "vit_l"):
        raise BenchError(
            f"--config {config}: a config file belongs to one engine (an mmengine config or a "
            f"detectron2 LazyConfig); pass --engine mmdet or --engine detectron2"
        )
    if threads:
        torch.set_num_threads(threads)
    patch = arch_config(parse_name(backbone)[1])["patch_size"]
    stride = 32 * patch // 16  # the coarsest pyramid level
    if img_size < 2 * stride or img_size % stride:
        raise BenchError(
            f"--img-size {img_size}: must be a multiple of {stride} (the stride-32 level of {backbone}) "
            f"and at least {2 * stride}"
        )
    engines = ("mmdet", "detectron2") if engine == "both" else (engine,)
    if "detectron2" in engines:
        from tasks.detection.detectron2.install import require_detectron2

        require_detectron2()  # before timing anything: one line that says how to install it
    rows = []
    peaks = dense_peaks()  # once for every model of this run (a bf16 peak takes minutes on a loaded CPU)
    for variant in [variants] if isinstance(variants, str) else variants:
        for eng in engines:
            run = _perf_det_mmdet if eng == "mmdet" else _perf_det_detectron2
            for r in run(
                config,
                variant,
                backbone,
                img_size,
                batch_size,
                boxes,
                iters,
                baseline,
                channels_last,
                repeats,
                trust_config,
                peaks,
            ):
                rows.append(dict(r, engine=eng, variant=variant))
    if len(engines) > 1:
        print("same config, same run:")
        for r in rows:
            print(
                f"  {r['variant']} {r['prec']} {r['engine']:>10}: {r['img_s']:.3f} img/s, {r['gflop_img']:.4g} GFLOP/img, "
                f"{100 * r['of_peak']:.0f}% of peak"
            )
    return rows


def _perf_det_mmdet(
    config, variant, backbone, img_size, batch_size, boxes, iters, baseline, channels_last, repeats, trust_config, peaks
):
    from mmcv.ops import RoIAlign
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT)
    import tasks.detection.mmdet_plugins  # noqa: F401  (LN2d, LastLevelMaxPool)
    from backbones.registry import parse_name
    from tasks.detection.run import fill_model, load_config, resolve_config

    register_all_modules(init_default_scope=True)
    path, name = resolve_config(config, variant, parse_name(backbone)[1])
    cfg = load_config(path, trust_config=trust_config)
    fill_model(cfg, path, backbone=backbone)
    cfg.model.backbone.img_size = img_size  # position embedding for this input (the config's: 1024)
    layouts = _layouts(channels_last)
    model = build_dense_model(MODELS, cfg.model, layouts[0])
    mmcv_ops_fp32_on_cpu(model)
    num_classes = int(cfg.model.roi_head.bbox_head.num_classes)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    samples = random_det_samples(batch_size, img_size, boxes, num_classes)
    notes = []
    if any(isinstance(mm, RoIAlign) for mm in model.modules()):
        notes.append(
            "FLOPs are the aten matmul / conv / attention ops torch.utils.flop_counter sees; mmcv's RoIAlign "
            "and NMS are extension calls it does not count (bilinear sampling / box overlaps, no matmul)"
        )
    torch.manual_seed(0)  # the RPN / RoI samplers draw from torch's generator
    return _time_dense(
        f"mmdet Mask R-CNN ({name}, {cfg.model.backbone.variant} pyramid) on {backbone} @ {img_size}, "
        f"{boxes} boxes/img",
        model,
        lambda mm: dense_loss(mm, x, samples),
        batch_size,
        layouts,
        baseline,
        iters,
        repeats,
        notes,
        peaks,
    )


def _perf_det_detectron2(
    config, variant, backbone, img_size, batch_size, boxes, iters, baseline, channels_last, repeats, trust_config, peaks
):
    from tasks.detection.detectron2.perf import build_step

    model, loss_of, title = build_step(
        config, variant, backbone, img_size, batch_size, boxes, trust_config=trust_config
    )
    notes = ["FLOPs as for mmdet: torchvision's RoIAlign and NMS (detectron2's ROIAlign, batched_nms) are not counted"]
    torch.manual_seed(0)  # the RPN / RoI samplers draw from torch's generator
    return _time_dense(
        title, model, loss_of, batch_size, _layouts(channels_last), baseline, iters, repeats, notes, peaks
    )


# --------------------------------------------------------------------------------------------------
# CLI: bench perf {pretrain,cls,seg,det,data}
# --------------------------------------------------------------------------------------------------


def add_perf_arguments(parser):
    """Options of ``bench perf`` (one subcommand per measurement)."""
    sub = parser.add_subparsers(dest="what", required=True)

    def command(name, help_, *, arch=None, img_size=None, batch_size, iters, **description):
        p = sub.add_parser(name, help=help_, **description)
        if arch:
            p.add_argument("--arch", default=arch, help="ViT architecture (bench backbones lists them)")
        if img_size:
            p.add_argument("--img-size", type=int, default=img_size, help="input size in pixels")
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per timed step")
        if iters:
            p.add_argument("--iters", type=int, default=iters, help="timed steps per configuration (after 1 warm-up)")
            p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
            p.add_argument("--baseline", action="store_true", help="also time plain fp32")
        return p

    def layout(p):
        p.add_argument(
            "--channels-last",
            nargs="?",
            const="on",
            default=None,
            choices=["on", "off", "both"],
            help="conv layout of the pyramid / neck / heads: on = channels-last (NHWC), off = NCHW, "
            "both = time both interleaved (default: the task's, i.e. on for CUDA, off on CPU)",
        )
        p.add_argument(
            "--repeats",
            type=int,
            default=1,
            help="rounds of timing every variant (precision x layout) in turn; medians over all rounds",
        )

    p = command(
        "pretrain",
        "MAE step img/s, vs encoder-with-mask-tokens, vs FLOPs and matmul peaks",
        arch="vit_base_patch16",
        img_size=224,
        batch_size=8,
        iters=3,
    )
    p.add_argument(
        "--decoder-depths",
        type=int,
        nargs="+",
        default=[8, 1],
        help="MAE decoder depths to time (the paper's 8, and 1)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p = command(
        "cls",
        "fine-tuning step img/s, ours vs timm's ViT, vs matmul peaks",
        arch="vit_base_patch16",
        img_size=224,
        batch_size=8,
        iters=3,
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p = command(
        "seg", "UperNet training step img/s (mmseg model from our config) vs matmul peaks", batch_size=2, iters=2
    )
    p.add_argument("--config", default="paper_vit_base", help="segmentation config name or path")
    p.add_argument("--backbone", default="random_vit_base_patch16", help="registry name of the backbone")
    p.add_argument("--crop", type=int, default=512, help="crop size in pixels (the paper's 512)")
    p.add_argument(
        "--trust-config",
        action="store_true",
        help="allow a --config file from outside the package (mmengine runs it as Python when reading it)",
    )
    layout(p)
    p = command(
        "det",
        "Mask R-CNN training step img/s (mmdet and detectron2 models from our configs) vs matmul peaks",
        batch_size=1,
        iters=2,
        description="Mask R-CNN training step (forward, backward, AdamW) of the detection task's own config "
        "on random images, boxes, masks and labels: img/s, step time, GFLOP/img (fwd+bwd), "
        "GFLOP/s and % of the matmul peak of the precision, per engine.",
    )
    p.add_argument(
        "--engine",
        choices=DET_ENGINES,
        default="both",
        help="mmdet, detectron2, or both (default: both, timed in one run, same config name)",
    )
    p.add_argument(
        "--config",
        default="vit_b",
        help="detection config name (smoke, vit_b, vit_l), or a config file of one engine (with --engine)",
    )
    p.add_argument(
        "--trust-config",
        action="store_true",
        help="allow a --config file from outside the package (it runs as Python when read)",
    )
    p.add_argument(
        "--variant",
        nargs="+",
        default=["fpn"],
        choices=["fpn", "vitdet"],
        help="fpn: ViT -> FPN (MAE paper / Li et al. 2021); vitdet: simple feature pyramid; both: fpn vitdet",
    )
    p.add_argument("--backbone", default="random_vit_base_patch16", help="registry name of the backbone")
    p.add_argument(
        "--img-size",
        type=int,
        default=512,
        help="square input in pixels (the protocols' LSJ crop is 1024; default 512 for CPU)",
    )
    p.add_argument("--boxes", type=int, default=8, help="random ground-truth boxes (with masks) per image")
    layout(p)
    p = command(
        "data", "data loader img/s (JPEG decode + augmentation) with 0..N workers", img_size=224, batch_size=64, iters=0
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    p.add_argument(
        "--decoder",
        choices=["pil", "torchvision", "both"],
        default="both",
        help="pil: PIL decode + transforms on PIL images; torchvision: torchvision.io decode + "
        "transforms.v2 on uint8 tensors (the default path); both (default)",
    )
    p.add_argument(
        "--model-img-s",
        type=float,
        default=7.5,
        help="model img/s the loader must feed, printed as loader/model ratio (default 7.5: bench perf "
        "pretrain's MAE ViT-B/16 bf16 step on the 2-core CPU)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images per configuration")
    return parser


def check_perf_options(a) -> None:
    """Refuse impossible sizes before any measuring (the matmul peak alone takes a while)."""
    least = {"iters": 1, "batch_size": 1, "img_size": 1, "crop": 1, "threads": 1, "repeats": 1, "boxes": 0}
    for name, low in least.items():
        value = getattr(a, name, None)
        if value is not None and value < low:
            raise BenchError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    for name in ("decoder_depths", "workers"):
        values = getattr(a, name, None) or []
        if any(v < 0 for v in values):
            raise BenchError(f"--{name.replace('_', '-')} values must be >= 0, got {values}")
    if getattr(a, "arch", None) is not None:
        from backbones.vit import arch_config

        arch_config(a.arch)  # an unknown architecture: the registry's one-line message
    if getattr(a, "device", None) is not None:
        from bench.core.engine import pick_device

        pick_device(a.device)


def perf_main(a) -> int:
    """Run the ``bench perf`` measurement ``a.what`` with the parsed options."""
    check_perf_options(a)
    layout = {None: None, "on": True, "off": False, "both": "both"}[getattr(a, "channels_last", None)]
    if a.what == "pretrain":
        perf_pretrain(
            arch=a.arch,
            img_size=a.img_size,
            batch_size=a.batch_size,
            decoder_depths=a.decoder_depths,
            iters=a.iters,
            threads=a.threads,
            baseline=a.baseline,
            device=a.device,
        )
    elif a.what == "cls":
        perf_cls(
            arch=a.arch,
            img_size=a.img_size,
            batch_size=a.batch_size,
            iters=a.iters,
            threads=a.threads,
            baseline=a.baseline,
            device=a.device,
        )
    elif a.what == "seg":
        perf_seg(
            config=a.config,
            backbone=a.backbone,
            crop=a.crop,
            batch_size=a.batch_size,
            iters=a.iters,
            threads=a.threads,
            baseline=a.baseline,
            channels_last=layout,
            repeats=a.repeats,
            trust_config=a.trust_config,
        )
    elif a.what == "det":
        perf_det(
            config=a.config,
            variants=a.variant,
            backbone=a.backbone,
            img_size=a.img_size,
            batch_size=a.batch_size,
            boxes=a.boxes,
            iters=a.iters,
            threads=a.threads,
            baseline=a.baseline,
            channels_last=layout,
            repeats=a.repeats,
            engine=a.engine,
            trust_config=a.trust_config,
        )
    else:
        perf_data(
            img_size=a.img_size,
            batch_size=a.batch_size,
            workers=a.workers,
            decoder=a.decoder,
            model_img_s=a.model_img_s,
            repeats=a.repeats,
        )
    return 0
