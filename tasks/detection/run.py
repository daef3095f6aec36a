"""``bench det``: COCO object detection + instance segmentation transfer (He et al. 2021, Table 4) with
Mask R-CNN on a registry ViT, on one of two engines: mmdet 3.3 (the default,
``tasks/detection/mmdet_run.py``) or detectron2 (``tasks/detection/detectron2/run.py``; why mmdet is the
default: docs/detectron2.md). What both share is in ``tasks/detection/protocol.py``; both write the
same row, ``extra['engine']`` naming the engine.

    bench det --backbone mae_vit_base_patch16 --checkpoint mae_pretrain_vit_base.pth --data-root data/coco
    bench det ... --engine detectron2 --variant vitdet train.log_period=50        # trailing KEY=VALUE
    bench det ... --eval-only --weights work_dirs/det/.../iter_184375.pth        # evaluate only

Two protocols (every config value commented with its source): ``--variant fpn`` (row protocol
``maskrcnn_fpn``), the MAE paper's, i.e. Li et al. 2021: 4 evenly spaced blocks -> deconv / identity /
max-pool adapter -> FPN; ``--variant vitdet`` (``maskrcnn_vitdet``): ViTDet's last block -> simple
feature pyramid. ``--config`` is ``auto`` (by the backbone's architecture), ``smoke``, ``vit_b``,
``vit_l`` or a file of the engine's kind (read only with ``--trust-config``: it runs as Python).

The command builds the run's facts object (``tasks.spec.TransferRun``) once from its options and hands
it to the task's ``run`` (``tasks.detection.task.run_coco``), which picks the engine.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.options import add_run_options, default_out, join_launcher, run_fields
from bench.core.results import check_outputs
from tasks.detection.mmdet_run import fill_model, load_config, prepare_config
from tasks.detection.protocol import (
    DEFAULT_ENGINE,
    ENGINES,
    PROTOCOL_OF_VARIANT,
    SPLITS,
    VARIANTS,
    check_coco_root,
    detection_deviations,
    resolve_config,
)
from tasks.detection.task import run_coco
from tasks.spec import TransferRun


def add_det_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backbone", required=True, help="registry backbone name, e.g. mae_vit_base_patch16")
    parser.add_argument("--checkpoint", default=None, help="pre-trained weights (not for random_*)")
    parser.add_argument("--data-root", required=True, help="COCO 2017 layout: annotations/, train2017/, val2017/")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default=None,
        help="fpn: MAE paper / Li et al. 2021 (default); vitdet: ViTDet simple pyramid",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="mmdet (default) or detectron2 (--config takes its names or a LazyConfig); both write the same "
        "row with extra.engine",
    )
    parser.add_argument(
        "--config",
        default="auto",
        help="auto (by architecture), smoke, vit_b, vit_l, or a config file of the engine (with --trust-config)",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="training iterations (default: the config's); warm-up, lr steps and intervals keep their fraction",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="total batch (default: the config's, 64)")
    parser.add_argument("--ckpt-interval", type=int, default=None, help="iterations between checkpoints")
    parser.add_argument("--dets-out", default=None, help="write the val detections (COCO results JSON) here")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mmdet engine: channels-last convolutions in the pyramid and heads (default: on for CUDA)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides after the options, as detectron2's lazyconfig_train_net.py takes them (values "
        "are Python literals, else strings); merged with --cfg-options, for either engine",
    )
    add_run_options(parser, default_out="work_dirs/det/coco-<protocol>-<label or backbone>[-detectron2]-s<seed>")
    return parser


def trailing_overrides(pairs) -> dict:
    """``['a.b=1', 'c=x']`` -> ``{'a.b': 1, 'c': 'x'}`` (detectron2's rule: a Python literal, else the string)."""
    out = {}
    for kv in pairs:
        key, sep, raw = kv.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"override {kv!r}: expects KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key.strip()] = raw
    return out


def det_run(args: argparse.Namespace) -> TransferRun:
    """The run's facts object, built once from the options."""
    fields = run_fields(args)
    fields["cfg_options"] = {**fields["cfg_options"], **trailing_overrides(args.overrides)}
    protocol = PROTOCOL_OF_VARIANT[args.variant or "fpn"]
    name = (fields["label"] or args.backbone) + ("" if args.engine == DEFAULT_ENGINE else f"-{args.engine}")
    options = dict(variant=args.variant, dets_out=args.dets_out, ckpt_interval=args.ckpt_interval)
    if args.channels_last is not None:
        options["channels_last"] = args.channels_last
    return TransferRun(
        task="coco",
        protocol=protocol,
        backbone=args.backbone,
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
        data_root=Path(args.data_root),
        work_dir=Path(args.work_dir) if args.work_dir else default_out("det", "coco", protocol, name, args.seed),
        config=args.config,
        iters=args.iters,
        batch_size=args.batch_size,
        engine=args.engine,
        options=options,
        **fields,
    )


def det_main(args: argparse.Namespace) -> int:
    run = det_run(args)
    check_outputs(run.work_dir, run.results, run.options["dets_out"])
    join_launcher(args.launcher, args.device)
    row = run_coco(run)
    if row is not None:
        m = row["metrics"]
        shown = ", ".join(f"{k} {m[k]:.1f}" for k in ("APbox", "APmask", "APbox50", "APbox75") if k in m)
        what = "evaluated" if run.eval_only else f"{row['iterations']} iterations"
        print(
            f"coco {row['protocol']} ({row['extra']['engine']}) {row['label']} seed {row['seed']}: {shown} "
            f"({what}, {row['wall_time_s']:.0f} s)"
        )
    return 0


__all__ = [
    "ENGINES",
    "DEFAULT_ENGINE",
    "PROTOCOL_OF_VARIANT",
    "SPLITS",
    "add_det_arguments",
    "check_coco_root",
    "det_main",
    "det_run",
    "detection_deviations",
    "fill_model",
    "load_config",
    "prepare_config",
    "resolve_config",
]
