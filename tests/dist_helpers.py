"""Shared pieces of the 2-process test files (``test_distributed.py``, ``test_fsdp.py``,
``test_distributed_pretrain.py``): the tiny MAE run through ``fit`` that the torchrun workers and
the single-process references both do, and the comparisons of their outputs.

Importable as ``dist_helpers`` both under pytest (``tests/`` is on ``sys.path``, as for
``conftest``) and in a torchrun worker (the script's own folder is ``sys.path[0]``)."""

import json
from pathlib import Path

import torch

from backbones.pretrainers.mae import MaskNoise, build_mae
from backbones.vit import Block
from bench.core.data import pretrain_dataset
from bench.core.engine import TrainConfig, fit

ARCH = "vit_test_patch8"  # 32 px, 4x4 = 16 patches, 2 encoder blocks + 1 decoder block
N_SAMPLES, STEPS, BLR = 64, 6, 5e-3


class Crash(Exception):
    """Raised by a loss function to stop a run mid-way (then resumed)."""


def MaskedCrops(n=N_SAMPLES):
    """Embedded-photo crops with the MAE mask noise drawn per sample by the product's data pipeline
    (``backbones.pretrainers.mae.MaskNoise``, under the engine's per-sample seed), so a sample's mask
    does not depend on which rank sees it."""
    return MaskNoise(pretrain_dataset("embedded", 32, n), 16)


def mae_loss(m, batch):
    imgs, noise = batch
    return m(imgs, 0.75, noise)[0], {"pix_mean": imgs.mean().detach()}


def run_mae(out, batch_size, accum_iter=1, steps=STEPS, loss_fn=mae_loss, dataset=None, model=None, desc="dist", **kw):
    """``fit`` a fresh (seed 0) or the given MAE for ``steps`` steps; ``kw``: more TrainConfig fields."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        out_dir=str(out),
        steps=steps,
        batch_size=batch_size,
        accum_iter=accum_iter,
        blr=BLR,
        warmup_steps=2,
        progress=False,
        desc=desc,
        **kw,
    )
    model = model or build_mae(ARCH)
    res = fit(model, dataset if dataset is not None else MaskedCrops(), loss_fn, cfg, block_type=Block)
    return model, res


def logged(out):
    return [json.loads(line) for line in open(Path(out) / "log.jsonl")]


def ckpt(out, step=STEPS):
    return torch.load(Path(out) / f"checkpoint-{step:07d}.pth", weights_only=False)


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b))


def without_zero_gradient(state, drop=()):
    """The state without the parameters whose gradient is zero in exact arithmetic: float rounding
    noise, which Adam normalises into lr-sized steps, is all that moves them, in each run
    differently, and they change no training-mode output. These are the key part of the attention
    qkv biases (softmax is shift-invariant) and the ``drop`` entries."""
    out = {}
    for k, v in state.items():
        if k.endswith("attn.qkv.bias"):
            d = v.shape[0] // 3
            v = torch.cat([v[:d], v[2 * d :]])
        if k not in drop:
            out[k] = v
    return out
