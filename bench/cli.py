"""``bench``: the one command-line entry point.

    bench run SUITE            run a suite (inits x tasks x seeds), resume what was interrupted, write tables
    bench pretrain             pretrain a ViT here (MAE, MoCo v3, BEiT, supervised)
    bench visualize            MAE reconstructions like the paper's Fig. 2/4
    bench backbones            list registry names (<init>_<arch>)
    bench det | seg | cls      one transfer run of a task (declared in tasks/<family>/task.py)
    bench table                result tables (CSV, LaTeX, Markdown) + plots from a results store
    bench perf pretrain|cls|seg|det|data   img/s of the MAE step (vs mask-token encoder, FLOPs,
                               matmul peaks), the fine-tuning step (vs timm), UperNet, Mask R-CNN, and
                               data loading

Bad input ends with ``error: <one line>`` on stderr and exit status 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bench.core.distributed import is_peer_failure, peer_failure
from bench.core.errors import BenchError, first_line
from bench.core.options import add_device_options, join_launcher

DEFAULT_ARCH = "vit_demo_patch8"


def _add_train_args(p: argparse.ArgumentParser):
    """Training options of the shared engine. Unset options keep the method's own defaults
    (``backbones.pretrainers.DEMO_DEFAULTS``: CPU demo scale; paper values in each module)."""
    g = p.add_argument_group("training (the shared engine; unset options keep the method's defaults)")
    g.add_argument(
        "--out", "--work-dir", dest="out", required=True, help="run folder: checkpoints, log.jsonl, pretrain.pth"
    )
    g.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, help="epochs over the data (embedded data: --epoch-size crops each)")
    g.add_argument("--batch-size", type=int, help="per-process batch (global = batch x accum x world)")
    g.add_argument("--accum-iter", type=int, help="gradient accumulation steps")
    g.add_argument("--blr", type=float, help="base lr; lr = blr x global batch / 256")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the method's paper value)")
    g.add_argument(
        "--warmup-epochs",
        type=float,
        help="linear lr warmup in epochs (default: 10%% of the schedule; with --steps, 10%% of the steps)",
    )
    add_device_options(
        g,
        config_help=" (e.g. steps=200 clip_grad=3.0 betas=[0.9,0.95]): the options above and each pretrainer's "
        "keyword arguments",
        device_default=None,
    )
    g.add_argument(
        "--grad-checkpointing",
        action="store_true",
        default=None,
        help="recompute each ViT block in the backward pass (less memory, ~30%% more compute)",
    )
    g.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the model's forward (default backend inductor; no gain on CPU here)",
    )
    g.add_argument(
        "--fsdp",
        action="store_true",
        default=None,
        help="under torchrun/Slurm: shard parameters, gradients and AdamW state over the processes "
        "(FSDP2) instead of DDP; checkpoints stay unsharded; one process: ignored",
    )
    g.add_argument("--workers", type=int, dest="num_workers", help="data loader worker processes")
    g.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (always at the end)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--max-nonfinite", type=int, help="skip up to N steps with a non-finite loss before stopping")
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest readable checkpoint in --out (default); --no-resume starts over",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


TRAIN_OPTIONS = (
    "steps",
    "epochs",
    "batch_size",
    "accum_iter",
    "blr",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "amp",
    "device",
    "grad_checkpointing",
    "compile",
    "fsdp",
    "num_workers",
    "ckpt_every",
    "seed",
    "max_nonfinite",
)


def _train_kwargs(a) -> dict:
    kw = {k: getattr(a, k) for k in TRAIN_OPTIONS if getattr(a, k, None) is not None}
    if a.steps is not None:
        kw.pop("epochs", None)
    if a.no_progress:
        kw["progress"] = False
    return kw


# Settings --cfg-options may not set in bench pretrain: they have their own options, read before training
PRETRAIN_OWN = ("img_size", "epoch_size", "data", "resume", "out_dir", "desc")
TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple, "list": list, "None": type(None)}


def _pretrain_settings(method: str) -> dict[str, set]:
    """The settings ``--cfg-options`` may set for ``method`` (the engine's and the pretrainer's) and
    the value types each takes, read from their annotations."""
    import dataclasses
    import inspect

    from backbones.pretrainers import PRETRAINERS
    from bench.core.train_config import TrainConfig

    def types(annotation) -> set:
        names = {t.strip() for t in str(annotation).split("|")}
        return {TYPE_NAMES[n] for n in names if n in TYPE_NAMES}

    own = {
        n: types(p.annotation) or {type(p.default)}
        for n, p in inspect.signature(PRETRAINERS[method]).parameters.items()
        if p.default is not p.empty
    }
    engine = {f.name: types(f.type) for f in dataclasses.fields(TrainConfig)}
    return {n: t for n, t in {**engine, **own}.items() if n not in PRETRAIN_OWN}


def _check_pretrain_cfg(method: str, options: dict) -> dict:
    """``--cfg-options`` of ``bench pretrain``: known names, values of the declared types (one line)."""
    allowed = _pretrain_settings(method)
    for name, value in options.items():
        if name not in allowed:
            have = ", ".join(sorted(allowed))
            raise BenchError(f"--cfg-options {name}: not a setting of {method} pretraining; allowed: {have}")
        want = allowed[name]
        ok = (
            (isinstance(value, bool) and bool in want)
            or (not isinstance(value, bool) and isinstance(value, int) and (int in want or float in want))
            or (isinstance(value, float) and float in want and math.isfinite(value))
            or (isinstance(value, str) and str in want)
            or (value is None and type(None) in want)
            or (isinstance(value, (list, tuple)) and (tuple in want or list in want))
        )
        if not ok or not want:
            names = " or ".join(sorted(t.__name__ if t is not type(None) else "None" for t in want))
            raise BenchError(f"--cfg-options {name}={value!r}: {name} takes {names or 'no value from here'}")
    return dict(options)


# ---------------------------------------------------------------------------------------------------
def add_pretrain_arguments(p: argparse.ArgumentParser):
    p.description = (
        "Pretrain on the embedded photos (default, no download) or an image folder; resumes from "
        "--out. Writes <out>/pretrain.pth for the registry."
    )
    p.add_argument(
        "--method",
        default="mae",
        choices=["mae", "mocov3", "beit", "supervised"],
        help="pretraining method (default mae)",
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"ViT size (default {DEFAULT_ARCH}; see `bench backbones`)")
    p.add_argument(
        "--data",
        default="embedded",
        help="'embedded' (bundled real photos, default), 'digits' (the 897-image pretraining split of "
        "scikit-learn's handwritten digits) or an image folder",
    )
    p.add_argument("--epoch-size", type=int, default=1024, help="crops per epoch of the embedded data")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the arch's)")
    p.add_argument(
        "--mask-ratio", type=float, default=None, help="MAE (default 0.75) / BEiT (0.4): fraction of patches masked"
    )
    p.add_argument(
        "--target",
        choices=["pixel_norm", "pixel", "tokens"],
        default=None,
        help="MAE reconstruction target (the paper's Table 7): pixel_norm (per-patch normalised pixels, "
        "default), pixel (raw pixels) or tokens (the code id of each masked patch from the suite's BEiT "
        "VQ tokenizer, trained first on the same data; the paper used DALL-E's dVAE, which cannot be "
        "downloaded; --cfg-options vocab_size=N tokenizer=FILE)",
    )
    p.add_argument("--no-norm-pix-loss", action="store_true", help="MAE: the same as --target pixel")
    _add_train_args(p)


def cmd_pretrain(a):
    from backbones.pretrainers import pretrain
    from backbones.pretrainers.mae import check_mask_ratio, check_target

    kw = _train_kwargs(a)
    if not str(a.out).strip():
        raise BenchError("--out must name a folder, got ''")
    for name in ("steps", "epoch_size", "img_size"):  # 0 steps would silently fall back to the epochs
        value = getattr(a, name, None)
        if value is not None and value < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if a.mask_ratio is not None:
        check_mask_ratio(a.mask_ratio)
        if a.method in ("mae", "beit"):
            kw["mask_ratio"] = a.mask_ratio
    if a.method != "mae" and (a.target is not None or a.no_norm_pix_loss):
        raise BenchError(f"--target and --no-norm-pix-loss are MAE options, not {a.method}'s")
    if a.method == "mae" and (a.target is not None or a.no_norm_pix_loss):
        kw["target"] = check_target(a.target, False if a.no_norm_pix_loss else None)
    kw.update(_check_pretrain_cfg(a.method, a.cfg_options or {}))
    path = pretrain(
        a.method, a.arch, a.out, data=a.data, img_size=a.img_size, epoch_size=a.epoch_size, resume=a.resume, **kw
    )
    print(f"backbone checkpoint: {path}\n  use it as: --backbone {a.method}_{a.arch} --checkpoint {path}")


def add_visualize_arguments(p: argparse.ArgumentParser):
    p.description = (
        "MAE reconstructions of an MAE checkpoint: the paper's Fig. 2 layout (masked | reconstruction | "
        "original, one row per image) or, with --mask-ratios, Fig. 4's mask-ratio sweep. The caption "
        "states the un-normalisation and whether the images are the checkpoint's training images."
    )
    p.add_argument("--checkpoint", required=True, help="our MAE checkpoint or an official mae_visualize_vit_*.pth")
    p.add_argument(
        "--out",
        default="mae_reconstructions.png",
        help="PNG file to write ('.png' added when the name has no extension)",
    )
    p.add_argument(
        "--images",
        default="embedded",
        help="'embedded' (bundled photos, default), 'digits' (the "
        "held-out eval split of the sklearn digits) or an image folder",
    )
    p.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of patches removed (Fig. 2; default 0.75)")
    p.add_argument(
        "--mask-ratios",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="Fig. 4 instead: one column group per ratio, e.g. 0.75 0.85 0.95",
    )
    p.add_argument("--n", type=int, default=4, help="number of images (rows; default 4)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the random masks (default 0)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling")


def cmd_visualize(a):
    from bench.visualize import visualize

    out = visualize(
        a.checkpoint,
        a.out,
        images=a.images,
        mask_ratio=a.mask_ratio,
        mask_ratios=a.mask_ratios,
        n=a.n,
        seed=a.seed,
        trust=a.trust_checkpoint,
    )
    print(f"wrote {out}")


def add_backbones_arguments(p: argparse.ArgumentParser):
    p.description = (
        "The registry's backbone names (<init>_<arch>) with each architecture's width, depth, heads, "
        "patch and input size, and the official checkpoint file of that init and size where one exists."
    )
    p.add_argument("--init", default=None, help="only this initialisation (mae, supervised, mocov3, beit, random, ...)")


def _expand_braces(pattern: str) -> list[str]:
    """'a_{b,c}.pth' -> ['a_b.pth', 'a_c.pth'] (one brace group, as the registry writes them)."""
    head, sep, rest = pattern.partition("{")
    if not sep or "}" not in rest:
        return [pattern]
    body, _, tail = rest.partition("}")
    return [head + alt + tail for alt in body.split(",")]


def official_file(official_files: str, arch: str) -> str:
    """The official file among an init's ``official_files`` for ``arch`` (matched on its size
    name: base, large, ...; MoCo v3 writes vit-b / vit-s), or '' when none is named for it."""
    size = arch.split("_")[1]  # vit_base_patch16 -> base
    tokens = (f"_{size}_", f"_{size}.", f"_{size}-", f"{size}_patch", f"vit-{size[0]}-")
    import re

    for item in re.split(r",\s*(?![^{]*\})", official_files):  # commas outside {...}
        for name in _expand_braces(item.strip().split(" (")[0]):
            if any(t in name for t in tokens):
                return name
    return ""


def cmd_backbones(a):
    from backbones.registry import INITS
    from backbones.vit import ARCHS

    if a.init and a.init not in INITS:
        raise BenchError(f"--init {a.init!r}: unknown initialisation; known: {', '.join(INITS)}")
    for name, spec in INITS.items():
        if a.init and name != a.init:
            continue
        print(f"{name}: {spec.description}")
        print(
            f"    {'backbone':34s} {'width':>5s} {'depth':>5s} {'heads':>5s} {'patch':>5s} {'input':>5s}  official file"
        )
        for arch, cfg in ARCHS.items():
            cfg = {**cfg, **spec.per_arch.get(arch, {})}  # e.g. MoCo v3's ViT-S has 12 heads
            official = official_file(spec.official_files, arch) if spec.official_files else ""
            print(
                f"    {name + '_' + arch:34s} {cfg['embed_dim']:5d} {cfg['depth']:5d} {cfg['num_heads']:5d} "
                f"{cfg['patch_size']:5d} {cfg.get('img_size', 224):5d}  {official or '-'}"
            )
        if spec.official_files:
            print(f"    (official files: {spec.official_files})")


# `bench data` options -> the generators' parameter names (per-class counts for classification sets)
DATA_OPTIONS = {
    "n_train": ("n_train", "n_train_per_class"),
    "n_val": ("n_val", "n_val_per_class"),
    "image_size": ("image_size",),
    "num_classes": ("num_classes",),
    "seed": ("seed",),
}


def add_data_arguments(p: argparse.ArgumentParser):
    from tasks.registry import TASKS

    names = [name for name, spec in TASKS.items() if spec.generator]
    p.add_argument("task", choices=names, help="which dataset layout to write: " + ", ".join(names))
    p.add_argument("--out", required=True, help="the dataset root to create (must not exist, or be empty)")
    p.add_argument("--n-train", type=int, help="training images (per class for classification sets)")
    p.add_argument("--n-val", type=int, help="validation images (per class for classification sets)")
    p.add_argument("--image-size", type=int, help="image side in pixels")
    p.add_argument("--num-classes", type=int, help="classes (classification sets)")
    p.add_argument("--seed", type=int, help="random seed of the generated images and split (default 0)")


def cmd_data(a) -> int:
    """Write a small dataset in the real on-disk layout the task's reader takes, then check it with
    that reader, so `bench cls|seg|det --data-root DIR` runs on it as on the real data."""
    from tasks.registry import TASKS

    spec = TASKS[a.task]
    accepted = spec.generator_options()
    kwargs = {}
    for option, params in DATA_OPTIONS.items():
        value = getattr(a, option)
        if value is None:
            continue
        if value < (0 if option == "seed" else 1):
            raise BenchError(f"--{option.replace('_', '-')} must be {'>= 0' if option == 'seed' else '>= 1'}")
        param = next((accepted[name] for name in params if name in accepted), None)
        if param is None:
            raise BenchError(f"bench data {a.task}: --{option.replace('_', '-')} does not apply to this layout")
        kwargs[param.name] = (value, value) if isinstance(param.default, tuple) else value
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out}: exists and is not an empty folder (option --out)")
    root = spec.generate(out, **kwargs)
    if spec.reader is not None:
        spec.reader(root)
    print(f"{a.task}: wrote {root} ({spec.title} layout); use it as --data-root {root}")
    return 0


def commands() -> dict[str, tuple]:
    """``bench`` subcommands: name -> (help, add_arguments, main). Functions given as "module:name"
    are imported only when their command runs; det / seg / cls are the tasks' (``tasks.registry``)."""
    from tasks.registry import COMMANDS

    return {
        "run": (
            "run a suite: initialisations x tasks x seeds (resumable), then tables",
            "bench.runner:add_run_arguments",
            "bench.runner:run_main",
        ),
        "pretrain": ("pretrain a ViT here (MAE, MoCo v3, BEiT, supervised)", add_pretrain_arguments, cmd_pretrain),
        "visualize": (
            "MAE reconstructions (Fig. 2: masked | reconstruction | original; --mask-ratios: Fig. 4)",
            add_visualize_arguments,
            cmd_visualize,
        ),
        "backbones": ("list backbone names (<init>_<arch>)", add_backbones_arguments, cmd_backbones),
        "data": ("write a small dataset in a task's real on-disk layout", add_data_arguments, cmd_data),
        **{c.name: (c.help, c.add_arguments, c.main) for c in COMMANDS},
        "table": (
            "result tables (CSV/LaTeX/Markdown) + plots from a results store",
            "bench.tables:add_table_arguments",
            "bench.tables:table_main",
        ),
        "perf": ("throughput benchmarks", "bench.perf:add_perf_arguments", "bench.perf:perf_main"),
    }


def build_parser(argv=None) -> argparse.ArgumentParser:
    from tasks.spec import resolve

    ap = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    ap.subcommand_parsers = {}
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_, add, main) in commands().items():
        p = sub.add_parser(name, help=help_, description=help_)
        ap.subcommand_parsers[name] = p
        if name != chosen:  # import a command's module (mmdet, mmseg, torch, ...) only when it runs
            p.add_argument("args", nargs=argparse.REMAINDER)
            continue
        resolve(add)(p)
        p.set_defaults(func=resolve(main))
    return ap


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("maebench")
    except PackageNotFoundError:  # run from a checkout that was not pip-installed
        return "unknown (not installed)"


def parse(argv=None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is reported with the subcommand's usage, not bench's."""
    ap = build_parser(argv)
    args, extra = ap.parse_known_args(argv)
    if extra:
        ap.subcommand_parsers.get(args.cmd, ap).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from bench.core.cpu_tuning import tune_malloc

    tune_malloc()  # keep multi-MB tensors on the heap between training steps (docs/perf.md)
    try:
        if args.cmd in ("pretrain", "cls"):  # under torchrun / srun: join the DDP process group (no-op alone)
            join_launcher(getattr(args, "launcher", None), getattr(args, "device", "auto") or "auto")
        rc = int(args.func(args) or 0)
        from bench.core.distributed import exit_distributed

        return exit_distributed(rc)  # under torchrun: all ranks leave together, no interpreter finalization
    except BenchError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        if not is_peer_failure(e):
            raise
        print(f"error: {first_line(peer_failure(e))}", file=sys.stderr)  # another rank died
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
