"""``bench``: the one command-line entry point.

    bench run SUITE            run a suite (inits x tasks x seeds), resume what was interrupted, write tables
    bench pretrain             pretrain a ViT here (MAE, MoCo v3, BEiT, supervised)
    bench visualize            MAE reconstructions like the paper's Fig. 2/4
    bench backbones            list registry names (<init>_<arch>)
    bench det | seg | cls      one transfer run (COCO Mask R-CNN | ADE20K UperNet | iNat/Places classification)
    bench table                result tables (CSV, LaTeX, Markdown) + plots from a results store
    bench perf pretrain|cls|seg|det|data   img/s of the MAE step (vs mask-token encoder, FLOPs,
                               matmul peaks), the fine-tuning step (vs timm), UperNet, Mask R-CNN, and
                               data loading

Bad input ends with ``error: <one line>`` on stderr and exit status 2; nothing half-written is left.
"""
from __future__ import annotations

import argparse
import sys

from bench.core.errors import BenchError

DEFAULT_ARCH = "vit_demo_patch8"


def _add_train_args(p: argparse.ArgumentParser):
    """Training options of the shared engine. Unset options keep the method's own defaults
    (``backbones.pretrainers.DEMO_DEFAULTS``: CPU demo scale; paper values in each module)."""
    g = p.add_argument_group("training (the shared engine; unset options keep the method's defaults)")
    g.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, pretrain.pth")
    g.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, help="epochs over the data (embedded data: --epoch-size crops each)")
    g.add_argument("--batch-size", type=int, help="per-process batch (global = batch x accum x world)")
    g.add_argument("--accum-iter", type=int, help="gradient accumulation steps")
    g.add_argument("--blr", type=float, help="base lr; lr = blr x global batch / 256")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast (CPU and GPU)")
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute each ViT block in the backward pass (less memory, ~30%% more compute)")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model's forward (default backend inductor; no gain on CPU here)")
    g.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun/Slurm: shard parameters, gradients and AdamW state over the processes "
                        "(FSDP2) instead of DDP; checkpoints stay unsharded; one process: ignored")
    g.add_argument("--workers", type=int, dest="num_workers", help="data loader worker processes")
    g.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (always at the end)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-nonfinite", type=int, help="skip up to N steps with a non-finite loss before stopping")
    g.add_argument("--no-resume", action="store_true", help="start over even if --out has checkpoints")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


TRAIN_OPTIONS = ("steps", "epochs", "batch_size", "accum_iter", "blr", "lr", "weight_decay", "warmup_epochs", "bf16",
                 "grad_checkpointing", "compile", "fsdp", "num_workers", "ckpt_every", "seed", "max_nonfinite")


def _train_kwargs(a) -> dict:
    kw = {k: getattr(a, k) for k in TRAIN_OPTIONS if getattr(a, k, None) is not None}
    if a.steps is not None:
        kw.pop("epochs", None)
    if a.no_progress:
        kw["progress"] = False
    return kw


# ---------------------------------------------------------------------------------------------------
def cmd_pretrain(a):
    from backbones.pretrainers import pretrain
    from backbones.pretrainers.mae import check_mask_ratio
    kw = _train_kwargs(a)
    if a.mask_ratio is not None:
        check_mask_ratio(a.mask_ratio)
        if a.method in ("mae", "beit"):
            kw["mask_ratio"] = a.mask_ratio
    if a.method == "mae":
        kw["norm_pix_loss"] = not a.no_norm_pix_loss
    path = pretrain(a.method, a.arch, a.out, data=a.data, img_size=a.img_size, epoch_size=a.epoch_size,
                    resume=not a.no_resume, **kw)
    print(f"backbone checkpoint: {path}\n  use it as: --backbone {a.method}_{a.arch} --checkpoint {path}")


def cmd_visualize(a):
    from bench.visualize import visualize
    out = visualize(a.checkpoint, a.out, images=a.images, mask_ratios=a.mask_ratios, n=a.n, seed=a.seed,
                    trust=a.trust_checkpoint)
    print(f"wrote {out}")


def cmd_backbones(a):
    from backbones.registry import INITS
    from backbones.vit import ARCHS
    for name, spec in INITS.items():
        if a.init and name != a.init:
            continue
        print(f"{name}: {spec.description}" + (f"  [official files: {spec.official_files}]" if spec.official_files else ""))
        for arch in ARCHS:
            print(f"    {name}_{arch}")


def cmd_perf(a):
    from bench import perf
    if a.what == "pretrain":
        perf.perf_pretrain(arch=a.arch, img_size=a.img_size, batch_size=a.batch_size, decoder_depths=a.decoder_depths,
                           iters=a.iters, threads=a.threads, baseline=a.baseline, device=a.device)
    elif a.what == "seg":
        perf.perf_seg(config=a.config, backbone=a.backbone, crop=a.crop, batch_size=a.batch_size, iters=a.iters,
                      threads=a.threads, baseline=a.baseline, channels_last=_layout(a), repeats=a.repeats)
    elif a.what == "det":
        perf.perf_det(config=a.config, variants=a.variant, backbone=a.backbone, img_size=a.img_size,
                      batch_size=a.batch_size, boxes=a.boxes, iters=a.iters, threads=a.threads, baseline=a.baseline,
                      channels_last=_layout(a), repeats=a.repeats)
    elif a.what == "cls":
        perf.perf_cls(arch=a.arch, img_size=a.img_size, batch_size=a.batch_size, iters=a.iters, threads=a.threads,
                      baseline=a.baseline, device=a.device)
    else:
        perf.perf_data(img_size=a.img_size, batch_size=a.batch_size, workers=a.workers, decoder=a.decoder,
                       model_img_s=a.model_img_s, repeats=a.repeats)


def _add_layout_args(p: argparse.ArgumentParser):
    p.add_argument("--channels-last", nargs="?", const="on", default=None, choices=["on", "off", "both"],
                   help="conv layout of the pyramid / neck / heads: on = channels-last (NHWC), off = NCHW, both = "
                        "time both interleaved (default: the task's, i.e. on for CUDA, off on CPU)")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of timing every variant (precision x layout) in turn; medians over all rounds")


def _layout(a):
    return {None: None, "on": True, "off": False, "both": "both"}[a.channels_last]


def _delegate(module: str, add: str, main: str, name: str):
    """Sub-commands implemented next to their task: ``module.add(parser)`` / ``module.main(args)``."""
    import importlib
    try:
        mod = importlib.import_module(module)
        return getattr(mod, add), getattr(mod, main)
    except (ImportError, AttributeError) as e:
        reason = f"{module}: {e}"  # `e` itself is unbound once the except block ends

        def add_missing(p):
            p.add_argument("args", nargs=argparse.REMAINDER)

        def main_missing(_):
            raise BenchError(f"`bench {name}` is not available in this install ({reason})")
        return add_missing, main_missing


SUBTASKS = {
    "run": ("bench.runner", "add_run_arguments", "run_main", "run a suite: initialisations x tasks x seeds (resumable), then tables"),
    "det": ("tasks.detection.run", "add_det_arguments", "det_main", "COCO detection + instance segmentation (Mask R-CNN)"),
    "seg": ("tasks.segmentation.run", "add_seg_arguments", "seg_main", "ADE20K semantic segmentation (UperNet)"),
    "cls": ("tasks.classification.run", "add_cls_arguments", "cls_main", "iNat / Places / folder classification: fine-tune, linear probe, partial"),
    "table": ("bench.tables", "add_table_arguments", "table_main", "result tables (CSV/LaTeX/Markdown) + plots from a results store"),
}


def build_parser(argv=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, add, main, help_) in SUBTASKS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name != chosen:  # import a task's module (mmdet, mmseg, ...) only when it is the command
            p.add_argument("args", nargs=argparse.REMAINDER)
            continue
        add_fn, main_fn = _delegate(module, add, main, name)
        add_fn(p)
        p.set_defaults(func=main_fn)

    p = sub.add_parser("pretrain", help="pretrain a ViT here (MAE, MoCo v3, BEiT, supervised)",
                       description="Pretrain on the embedded photos (default, no download) or an image folder; "
                                   "resumes from --out. Writes <out>/pretrain.pth for the registry.")
    p.add_argument("--method", default="mae", choices=["mae", "mocov3", "beit", "supervised"])
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"ViT size (default {DEFAULT_ARCH}; see `bench backbones`)")
    p.add_argument("--data", default="embedded", help="'embedded' (bundled real photos) or an image folder")
    p.add_argument("--epoch-size", type=int, default=1024, help="crops per epoch of the embedded data")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the arch's)")
    p.add_argument("--mask-ratio", type=float, default=None, help="MAE (default 0.75) / BEiT (0.4): fraction of patches masked")
    p.add_argument("--no-norm-pix-loss", action="store_true", help="MAE: raw-pixel target instead of per-patch normalised")
    _add_train_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("visualize", help="MAE reconstructions (original | masked | reconstruction | + visible)")
    p.add_argument("--checkpoint", required=True, help="our MAE checkpoint or an official mae_visualize_vit_*.pth")
    p.add_argument("--out", default="mae_reconstructions.png")
    p.add_argument("--images", default="embedded", help="'embedded' or an image folder")
    p.add_argument("--mask-ratios", type=float, nargs="+", default=[0.75, 0.85, 0.95])
    p.add_argument("--n", type=int, default=4, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("backbones", help="list backbone names (<init>_<arch>)")
    p.add_argument("--init", default=None)
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("perf", help="throughput benchmarks")
    psub = p.add_subparsers(dest="what", required=True)
    pp = psub.add_parser("pretrain", help="MAE step img/s, vs encoder-with-mask-tokens, vs FLOPs and matmul peaks")
    pp.add_argument("--arch", default="vit_base_patch16")
    pp.add_argument("--img-size", type=int, default=224)
    pp.add_argument("--batch-size", type=int, default=8)
    pp.add_argument("--decoder-depths", type=int, nargs="+", default=[8, 1])
    pp.add_argument("--iters", type=int, default=3, help="timed steps per configuration (after 1 warm-up)")
    pp.add_argument("--threads", type=int, default=None)
    pp.add_argument("--baseline", action="store_true", help="also time plain fp32 (the --baseline implementation)")
    pp.add_argument("--device", default="auto")
    pp.set_defaults(func=cmd_perf)
    pc = psub.add_parser("cls", help="fine-tuning step img/s, ours vs timm's ViT, vs matmul peaks")
    pc.add_argument("--arch", default="vit_base_patch16")
    pc.add_argument("--img-size", type=int, default=224)
    pc.add_argument("--batch-size", type=int, default=8)
    pc.add_argument("--iters", type=int, default=3)
    pc.add_argument("--threads", type=int, default=None)
    pc.add_argument("--baseline", action="store_true", help="also time plain fp32")
    pc.add_argument("--device", default="auto")
    pc.set_defaults(func=cmd_perf)
    ps = psub.add_parser("seg", help="UperNet training step img/s (mmseg model from our config) vs matmul peaks")
    ps.add_argument("--config", default="paper_vit_base", help="segmentation config name or path")
    ps.add_argument("--backbone", default="random_vit_base_patch16")
    ps.add_argument("--crop", type=int, default=512)
    ps.add_argument("--batch-size", type=int, default=2)
    ps.add_argument("--iters", type=int, default=2)
    ps.add_argument("--threads", type=int, default=None)
    ps.add_argument("--baseline", action="store_true", help="also time plain fp32")
    _add_layout_args(ps)
    ps.set_defaults(func=cmd_perf)
    pt = psub.add_parser("det", help="Mask R-CNN training step img/s (mmdet model from our config) vs matmul peaks",
                         description="Mask R-CNN training step (forward, backward, AdamW) of the detection task's own "
                                     "config on random images, boxes, masks and labels: img/s, step time, GFLOP/img "
                                     "(fwd+bwd), GFLOP/s and % of the matmul peak of the precision.")
    pt.add_argument("--config", default="vit_b", help="detection config name (smoke, vit_b, vit_l) or .py path (default vit_b)")
    pt.add_argument("--variant", nargs="+", default=["fpn"], choices=["fpn", "vitdet"],
                    help="fpn: ViT -> FPN (MAE paper / Li et al. 2021); vitdet: simple feature pyramid; both: fpn vitdet")
    pt.add_argument("--backbone", default="random_vit_base_patch16")
    pt.add_argument("--img-size", type=int, default=512,
                    help="square input in pixels (the protocols' LSJ crop is 1024; default 512 for CPU)")
    pt.add_argument("--batch-size", type=int, default=1)
    pt.add_argument("--boxes", type=int, default=8, help="random ground-truth boxes (with masks) per image")
    pt.add_argument("--iters", type=int, default=2)
    pt.add_argument("--threads", type=int, default=None)
    pt.add_argument("--baseline", action="store_true", help="also time plain fp32")
    _add_layout_args(pt)
    pt.set_defaults(func=cmd_perf)
    pd = psub.add_parser("data", help="data loader img/s (JPEG decode + augmentation) with 0..N workers")
    pd.add_argument("--img-size", type=int, default=224)
    pd.add_argument("--batch-size", type=int, default=64)
    pd.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    pd.add_argument("--decoder", choices=["pil", "torchvision", "both"], default="both",
                    help="pil: PIL decode + transforms on PIL images (the previous path); torchvision: torchvision.io "
                         "decode + transforms.v2 on uint8 tensors (the default path); both (default)")
    pd.add_argument("--model-img-s", type=float, default=7.5,
                    help="model img/s the loader must feed, printed as loader/model ratio (default 7.5: bench perf "
                         "pretrain's MAE ViT-B/16 bf16 step on the 2-core CPU)")
    pd.add_argument("--repeats", type=int, default=3, help="timed passes over the images per configuration")
    pd.set_defaults(func=cmd_perf)
    return ap


def main(argv=None) -> int:
    args = build_parser(argv).parse_args(argv)
    from bench.core.cpu_tuning import tune_malloc
    tune_malloc()  # keep multi-MB tensors on the heap between training steps (+14% bf16 img/s here)
    if args.cmd in ("pretrain", "cls"):  # under torchrun / srun: join the DDP process group (no-op alone)
        from bench.core.distributed import init_distributed
        init_distributed()
    try:
        rc = int(args.func(args) or 0)
        from bench.core.distributed import exit_distributed
        return exit_distributed(rc)  # under torchrun: all ranks leave together, no interpreter finalization
    except BenchError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
