"""Dense training steps timed on random images and targets, built from the tasks' own configs:
``bench perf seg`` (UperNet) here, ``bench perf det`` (Mask R-CNN) in ``detection.py``; both time
on the chosen device (CPU or CUDA), in NCHW and / or channels-last conv layout."""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile

import torch

from bench.core.device import pick_device
from bench.core.optional import require
from tasks.dense.memory_format import prepare_dense_model, resolve_channels_last, set_memory_format

from .timing import PRECISIONS, loss_flops, matmul_peak, step_times

LAYOUT_NAMES = {False: "NCHW", True: "channels-last"}


# what the light set-up (`make demo`) leaves out and the full one (`make setup`) builds
def build_dense_model(registry, model_cfg, channels_last: bool, device="cpu"):
    """A dense task's model as one training process gets it: without its data preprocessor (inputs
    are given as normalised tensors), SyncBN -> BN (``revert_sync_batchnorm``, as mmengine's Runner
    does off DDP), mmengine's weight init, mmcv's RoI layers fed NCHW maps and the conv layout set
    (``tasks.dense.memory_format.prepare_dense_model``, as the task runners' ``DenseRunner``), on
    ``device``."""
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm

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
    return prepare_dense_model(model.to(device).train(), channels_last)


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


def layouts_for(channels_last, device) -> list[bool]:
    """``channels_last`` None (the tasks' default on ``device``), True, False or 'both'."""
    if channels_last == "both":
        return [False, True]
    return [resolve_channels_last(channels_last, torch.device(device).type)]


def peak_names(precisions) -> list[str]:
    """The peaks a dense timing prints: fp32 always, then the reduced precision timed."""
    return ["fp32"] + [p for p in precisions if p != "fp32"]


def dense_peaks(device="cpu", names=("fp32", "bf16"), before: dict | None = None) -> dict:
    """Matmul peaks (GFLOP/s) of ``device`` for the precisions ``names``, each the best of
    ``before`` and now (on a shared machine either measurement can be slowed down)."""
    dev = torch.device(device)
    now = {k: matmul_peak(PRECISIONS[k], dev) for k in names}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}


def time_dense(title, model, loss_of, batch_size, layouts, *, precisions, iters, repeats, device, notes=(), peaks=None):
    """Print FLOPs, matmul peaks and, per precision and conv layout, img/s, step time, GFLOP/s and
    the fraction of that precision's peak. Variants (precision x layout) are timed interleaved:
    each of ``repeats`` rounds times every variant once (1 warm-up + ``iters`` steps); the median
    over a variant's timed steps is reported with their min-max. ``peaks``: measured by the caller
    (several models of one run share them); else the best of a measurement before and after."""
    dev = torch.device(device)
    flops = loss_flops(model, loss_of)
    shared = peaks is not None
    names = peak_names(precisions)
    peaks = dict(peaks) if shared else dense_peaks(dev, names)
    variants = [(p, c) for p in precisions for c in layouts]
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for pname, cl in variants:
            set_memory_format(model, cl)
            times[(pname, cl)] += step_times(model, loss_of, pname if pname != "fp32" else None, iters, dev)
    if not shared:
        peaks = dense_peaks(dev, names, peaks)
    peak_text = ", ".join(f"{k} {peaks[k]:.1f}" for k in names)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"{title}, batch {batch_size}, {where}; {flops / batch_size / 1e9:.4g} GFLOP/img "
        f"(fwd+bwd); matmul peak {peak_text} GFLOP/s; conv layout {' vs '.join(LAYOUT_NAMES[c] for c in layouts)}"
    )
    for n in notes:
        print(f"  note: {n}")
    rows = [_dense_row(pname, cl, sorted(times[(pname, cl)]), flops, batch_size, peaks) for pname, cl in variants]
    _print_dense_rows(rows, layouts)
    set_memory_format(model, layouts[0])
    return rows


def _dense_row(pname, cl, ts, flops, batch_size, peaks) -> dict:
    t = statistics.median(ts)
    return dict(
        prec=pname,
        channels_last=cl,
        img_s=batch_size / t,
        step_s=t,
        lo=ts[0],
        hi=ts[-1],
        gflop_img=flops / batch_size / 1e9,
        gflop_s=flops / t / 1e9,
        of_peak=flops / t / 1e9 / peaks[pname],
        steps=len(ts),
    )


def _print_dense_rows(rows, layouts) -> None:
    for r in rows:
        pname, cl = r["prec"], r["channels_last"]
        tag = f", {LAYOUT_NAMES[cl]}" if len(layouts) > 1 else ""
        print(
            f"  {pname}{tag}: {r['img_s']:.3f} img/s, {r['step_s']:.4g} s/step (median of {r['steps']}, "
            f"{r['lo']:.4g}-{r['hi']:.4g}), {r['gflop_s']:.2f} GFLOP/s ({100 * r['of_peak']:.0f}% of {pname} peak)"
        )
        if len(layouts) > 1 and cl == layouts[-1]:
            base = next(x for x in rows if x["prec"] == pname and x["channels_last"] == layouts[0])
            ratio = r["step_s"] / base["step_s"]
            print(f"  {pname}: {LAYOUT_NAMES[layouts[-1]]} step time / {LAYOUT_NAMES[layouts[0]]} = {ratio:.3f}")
    if any(r["of_peak"] > 1 for r in rows):
        print(
            "  note: over 100 %: the peak is torch.matmul's rate at the size timed, not the hardware's; "
            "oneDNN's fp32 convolutions can run faster than the BLAS matmul"
        )


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
    device="cpu",
):
    """UperNet training step (mmseg model built from the task's own config for one process):
    img/s, step time, GFLOP/s and the fraction of the matmul peak, on random images and labels.
    ``channels_last``: None = the task's default on ``device``, True / False, or 'both'."""
    require("bench perf seg")  # the dense backbone registers itself with mmseg and mmdet
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT; imports mmengine)
    from tasks.segmentation.run import load_config as load_seg_config  # imports mmengine, mmseg and mmdet

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    register_all_modules(init_default_scope=True)
    # the task's own config loading: backbone, head widths and crop follow the arguments
    m = load_seg_config(
        config,
        backbone=backbone,
        data_root=".",
        work_dir=tempfile.gettempdir(),
        crop_size=crop,
        trust_config=trust_config,
    ).model
    layouts = layouts_for(channels_last, dev)
    model = build_dense_model(MODELS, m, layouts[0], dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, crop, crop, generator=g).to(dev)
    samples = []
    for _ in range(batch_size):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, crop, crop), generator=g)))
        s.set_metainfo(dict(img_shape=(crop, crop), pad_shape=(crop, crop), ori_shape=(crop, crop)))
        samples.append(s.to(dev))
    return time_dense(
        f"UperNet ({config}) on {backbone} @ {crop}",
        model,
        lambda mm: dense_loss(mm, x, samples),
        batch_size,
        layouts,
        precisions=["bf16"] + (["fp32"] if baseline else []),
        iters=iters,
        repeats=repeats,
        device=dev,
    )
