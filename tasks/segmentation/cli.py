"""``bench seg``: its options, and the check that the dense libraries of the full set-up are there
before the run module (which imports mmengine, mmseg and mmdet) is loaded, so `bench seg --help` works
in the light set-up of `make demo` and a run there says in one line how to install them."""

from __future__ import annotations

import argparse

from bench.core.optional import require
from tasks.dense.runner import add_dense_arguments
from tasks.segmentation.config import CONFIGS


def add_seg_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone", required=True, help="registry name <init>_<arch>, e.g. mae_vit_base_patch16 (`bench backbones`)"
    )
    p.add_argument(
        "--checkpoint", default=None, help="backbone weights (official release file or `bench pretrain` output)"
    )
    p.add_argument("--data-root", required=True, help="ADEChallengeData2016 folder (or its parent); never downloaded")
    p.add_argument(
        "--config",
        default="smoke",
        help=f"{' | '.join(CONFIGS)} (the package's files) | a path to an mmengine .py config "
        "(./name.py; needs --trust-config) (default smoke)",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="square training crop (default: the config's; a multiple of the patch size)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="global batch (default: the config's; lr scaled linearly)"
    )
    add_dense_arguments(p, default_out="work_dirs/seg/ade20k-upernet-<label or backbone>-s<seed>")


def seg_main(args: argparse.Namespace) -> int:
    require("bench seg")
    from tasks.segmentation.run import seg_main as run_main  # imports mmengine, mmseg, mmdet

    return run_main(args)
