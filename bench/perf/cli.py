"""``bench perf {pretrain,cls,seg,det,data}``: options, their checks, and the dispatch."""

from __future__ import annotations

from backbones.vit import arch_config
from bench.core.device import pick_device
from bench.core.errors import BenchError
from bench.core.options import CfgOptions

from .data import MODEL_IMG_S_CPU, perf_data
from .dense import perf_seg
from .detection import DET_ENGINES, perf_det
from .pretrain import perf_cls, perf_pretrain

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
# bench perf det: the options of the timing, refused with --agreement (which has its own setting), and
# the agreement's, refused without it
_TIMING_ONLY = (
    "config variant backbone img_size batch_size boxes iters threads baseline channels_last repeats engine "
    "trust_config device"
).split()
_TIMING_DEFAULTS: dict = {}
_AGREEMENT_ONLY = ("seeds", "train_iters", "train_images", "out", "mmdet_options", "detectron2_options")


def _command(sub, name, help_, *, arch=None, img_size=None, batch_size, iters, **description):
    """A subcommand with the options every timed measurement shares."""
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
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def _dense_options(p) -> None:
    """Conv layout, rounds and config trust of ``perf seg`` / ``perf det``."""
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
    p.add_argument(
        "--trust-config",
        action="store_true",
        help="allow a --config file from outside the package (mmengine runs it as Python when reading it)",
    )
    p.add_argument("--backbone", default="random_vit_base_patch16", help="registry name of the backbone")


def _add_pretrain_and_cls(sub) -> None:
    p = _command(
        sub,
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
    _command(
        sub,
        "cls",
        "fine-tuning step img/s, ours vs timm's ViT, vs matmul peaks",
        arch="vit_base_patch16",
        img_size=224,
        batch_size=8,
        iters=3,
    )


def _add_seg(sub) -> None:
    p = _command(
        sub, "seg", "UperNet training step img/s (mmseg model from our config) vs matmul peaks", batch_size=2, iters=2
    )
    p.add_argument("--config", default="paper_vit_base", help="segmentation config name or path")
    p.add_argument("--crop", type=int, default=512, help="crop size in pixels (the paper's 512)")
    _dense_options(p)


def _add_det(sub) -> None:
    p = _command(
        sub,
        "det",
        "Mask R-CNN training step img/s (mmdet and detectron2 models from our configs) vs matmul peaks",
        batch_size=1,
        iters=2,
        description="Mask R-CNN training step (forward, backward, AdamW) of the detection task's own config "
        "on random images, boxes, masks and labels: img/s, step time, GFLOP/img (fwd+bwd), "
        "GFLOP/s and % of the matmul peak of the precision, per engine. The reduced precision is bf16 "
        "on CPU and fp16 on CUDA (mmcv's CUDA RoIAlign has no bf16).",
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
        "--variant",
        nargs="+",
        default=["fpn"],
        choices=["fpn", "vitdet"],
        help="fpn: ViT -> FPN (MAE paper / Li et al. 2021); vitdet: simple feature pyramid; both: fpn vitdet",
    )
    p.add_argument(
        "--img-size",
        type=int,
        default=512,
        help="square input in pixels (the protocols' LSJ crop is 1024; default 512 for CPU)",
    )
    p.add_argument("--boxes", type=int, default=8, help="random ground-truth boxes (with masks) per image")
    _dense_options(p)
    g = p.add_argument_group("cross-engine agreement (docs/detectron2.md): trains instead of timing")
    g.add_argument(
        "--agreement",
        action="store_true",
        help="train the Table 4 recipe's CPU twin on both engines over --seeds seeds; AP mean, 95%% t-interval, overlap",
    )
    g.add_argument("--seeds", type=int, default=None, help="seeds per engine (default 5)")
    g.add_argument("--train-iters", type=int, default=None, help="training iterations per run (default 400)")
    g.add_argument("--train-images", type=int, default=None, help="generated training images (default 32)")
    g.add_argument(
        "--out", default=None, help="folder of the set, runs and agreement.json (default work_dirs/perf/det-agreement)"
    )
    for engine, syntax in (("mmdet", "mmengine's --cfg-options syntax"), ("detectron2", "keys of its LazyConfig")):
        g.add_argument(
            f"--{engine}-options",
            nargs="+",
            action=CfgOptions,
            default=None,
            metavar="KEY=VALUE",
            help=f"settings swapped in the {engine} runs only ({syntax}): does this difference explain a gap?",
        )
    _TIMING_DEFAULTS.update({name: p.get_default(name) for name in _TIMING_ONLY})


def _add_data(sub) -> None:
    p = _command(
        sub,
        "data",
        "data loader img/s (JPEG decode + augmentation) with 0..N workers",
        img_size=224,
        batch_size=64,
        iters=0,
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
        default=MODEL_IMG_S_CPU,
        help=f"model img/s the loader must feed, printed as loader/model ratio (default {MODEL_IMG_S_CPU:g}: bench "
        "perf pretrain's MAE ViT-B/16 bf16 step on the 2-core CPU)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images per configuration")


def add_perf_arguments(parser):
    """Options of ``bench perf`` (one subcommand per measurement)."""
    sub = parser.add_subparsers(dest="what", required=True)
    _add_pretrain_and_cls(sub)
    _add_seg(sub)
    _add_det(sub)
    _add_data(sub)
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
    if getattr(a, "what", None) == "det":
        _check_agreement_options(a)
    if getattr(a, "arch", None) is not None:
        arch_config(a.arch)  # an unknown architecture: the registry's one-line message
    if getattr(a, "device", None) is not None:
        pick_device(a.device)


def _check_agreement_options(a) -> None:
    """``--agreement`` takes only its own options; they mean nothing without it."""
    if a.agreement:
        given = [n for n in _TIMING_ONLY if getattr(a, n) != _TIMING_DEFAULTS[n]]
        if given:
            raise BenchError(
                f"--{given[0].replace('_', '-')}: an option of the timing; --agreement trains its own setting "
                "(takes --seeds, --train-iters, --train-images, --out, --mmdet-options, --detectron2-options)"
            )
        for name, low in (("seeds", 2), ("train_iters", 1), ("train_images", 1)):
            value = getattr(a, name)
            if value is not None and value < low:
                raise BenchError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    else:
        given = [n for n in _AGREEMENT_ONLY if getattr(a, n) is not None]
        if given:
            raise BenchError(f"--{given[0].replace('_', '-')}: only with --agreement")


LAYOUTS = {None: None, "on": True, "off": False, "both": "both"}
# each measurement and the names of its keyword arguments, read from the parsed options
MEASUREMENTS = {
    "pretrain": (perf_pretrain, "arch img_size batch_size decoder_depths iters threads baseline device"),
    "cls": (perf_cls, "arch img_size batch_size iters threads baseline device"),
    "seg": (
        perf_seg,
        "config backbone crop batch_size iters threads baseline channels_last repeats trust_config device",
    ),
    "det": (
        perf_det,
        "config variants backbone img_size batch_size boxes iters threads baseline channels_last repeats engine "
        "trust_config device agreement seeds train_iters train_images out mmdet_options detectron2_options",
    ),
    "data": (perf_data, "img_size batch_size workers decoder model_img_s repeats"),
}


def perf_main(a) -> int:
    """Run the ``bench perf`` measurement ``a.what`` with the parsed options."""
    check_perf_options(a)
    options = dict(vars(a), variants=getattr(a, "variant", None))
    options["channels_last"] = LAYOUTS[getattr(a, "channels_last", None)]
    run, names = MEASUREMENTS[a.what]
    run(**{name: options[name] for name in names.split()})
    return 0
