"""``bench cls``: the options, and the main that builds the run's ``TransferRun`` once and runs it.

    bench cls --protocol finetune --dataset digits --data-root data/digits --backbone mae_vit_demo_patch8 \\
        --checkpoint pt/pretrain.pth --config smoke --label mae-ours [--eval-every 1]
    bench cls ... --eval-only --weights work_dirs/cls/<run>/checkpoint-0000040.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core.engine import pick_device
from bench.core.errors import BenchError
from bench.core.options import add_run_options, run_fields
from tasks.classification import config as C
from tasks.classification.datasets import DATASETS
from tasks.classification.run import run_classification
from tasks.spec import TransferRun


def config_names() -> list[str]:
    """The names ``--config`` takes besides a file: the override files in ``configs/``."""
    protocol_files = {f"{name}.yaml" for name in C.PROTOCOLS}
    return sorted(p.stem for p in C.CONFIG_DIR.glob("*.yaml") if p.name not in protocol_files)


def check_config_name(value: str | None) -> str | None:
    """``--config``: an existing YAML file or a name in ``configs/``; anything else lists the names."""
    if value is None or Path(value).is_file() or (C.CONFIG_DIR / f"{value}.yaml").is_file():
        return value
    if value in C.PROTOCOLS:
        raise BenchError(f"--config {value}: the protocol is chosen by --protocol; --config names overrides")
    raise BenchError(f"--config {value}: no such file or config name; names: {', '.join(config_names())}")


def add_cls_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``bench cls`` (the shared ones from ``bench.core.options.add_run_options``)."""
    parser.add_argument(
        "--protocol",
        required=True,
        choices=C.PROTOCOLS,
        help="finetune (Table 6), linear (linear probe), partial (the last k blocks, Fig. 9)",
    )
    parser.add_argument(
        "--dataset", required=True, choices=DATASETS, help="which dataset's on-disk format --data-root holds"
    )
    parser.add_argument(
        "--data-root", required=True, help="dataset folder in its official layout (a small one: bench data)"
    )
    parser.add_argument("--backbone", required=True, help="<init>_<arch>, e.g. mae_vit_base_patch16")
    parser.add_argument("--checkpoint", default=None, help="pretrained weights (not for random_*)")
    parser.add_argument(
        "--k", default=None, help="partial: number of last blocks to tune (0 = linear probe, depth = full), or 'mlp'"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML overriding the protocol config, or a name in tasks/classification/configs "
        f"({', '.join(config_names())})",
    )
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default: the protocol's)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None, help="absolute learning rate (replaces blr x batch/256)")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="N",
        help="evaluate every N epochs and append (epoch, train_loss, eval_top1) to <out>/curve.jsonl; "
        "training is unchanged",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP",
    )
    add_run_options(
        parser,
        default_out="work_dirs/cls/<dataset>-<protocol>-<label or backbone>-<key>-s<seed>, <key> hashing the "
        "checkpoint's sha256, the data and the effective config",
        config_help="; keys of the classification config, e.g. lr=0.01 weight_decay=0.05",
    )
    return parser


def transfer_run(args: argparse.Namespace) -> TransferRun:
    """The run's facts object from the parsed options (checked: one line on misuse)."""
    fields = run_fields(args)
    cfg_options = dict(fields.pop("cfg_options"))
    if args.lr is not None:
        cfg_options.setdefault("lr", args.lr)
    if args.amp is None:  # neither --amp nor --bf16: on for CUDA, off on CPU
        fields["amp"] = pick_device(args.device).type == "cuda"
    options = {"fsdp": True} if args.fsdp else {}
    if args.eval_every is not None:
        options["eval_every"] = args.eval_every
    return TransferRun(
        task=args.dataset,
        protocol=args.protocol,
        backbone=args.backbone,
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
        data_root=Path(args.data_root),
        work_dir=None if args.work_dir is None else Path(args.work_dir),
        k=C.parse_k(args.k),
        config=check_config_name(args.config),
        epochs=args.epochs,
        batch_size=args.batch_size,
        cfg_options=cfg_options,
        options=options,
        **fields,
    )


def cls_main(args: argparse.Namespace) -> int:
    """Run ``bench cls`` from parsed arguments; prints the result line and returns exit status 0
    (errors are ``BenchError`` for the CLI to print)."""
    row = run_classification(transfer_run(args))
    m = row["metrics"]
    what = "evaluated" if row["extra"].get("eval_only") else f"{row['iterations']} steps"
    print(
        f"{row['task']} {row['protocol']}{'' if row['k'] is None else ' k=' + str(row['k'])} "
        f"{row['label']} ({row['init']}_{row['backbone']}): top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  "
        f"({what}, {row['wall_time_s']:.0f} s; row in {Path(row['extra']['out_dir']) / 'result.json'})"
    )
    return 0
