"""Small-scale pretrainers for the four initialisations the MAE paper transfers (Sec. 5): MAE,
MoCo v3, BEiT and supervised, all trained on ``bench.core.engine.fit`` and all exporting
``<out>/pretrain.pth`` that ``build_backbone(f'{method}_{arch}', checkpoint=...)`` loads.

Every entry of ``PRETRAINERS`` has the signature::

    fn(arch, out_dir, *, data='embedded', img_size=None, epoch_size=1024, resume=True, **kwargs) -> Path

``kwargs`` are the method's own options (see each function) and ``TrainConfig`` fields
(batch_size, epochs / steps, blr / lr, warmup_epochs, weight_decay, betas, clip_grad, bf16, seed,
ckpt_every, device, ...). ``pretrain(method, ...)`` starts from ``DEMO_DEFAULTS[method]``: CPU
demo scale, the same data budget (epochs x ``epoch_size`` images) for every method. Paper values
are in each module's ``PAPER`` dict and docstring.

Upper limits, checked before anything is built or allocated (one line each): ``--img-size`` at most
``MAX_IMG_SIZE`` (a ViT's attention memory grows with the 4th power of the side), ``--epoch-size``
at most ``MAX_EPOCH_SIZE`` (the sampler holds a permutation of the epoch); ``--steps`` and
``--epochs`` are bounded by the engine (``bench.core.train_config.MAX_STEPS`` / ``MAX_EPOCHS``).
"""

from __future__ import annotations

from pathlib import Path

from backbones.pretrainers.mae import pretrain_mae
from bench.core.errors import BenchError

from .beit import pretrain_beit
from .mocov3 import pretrain_mocov3
from .supervised import pretrain_supervised

MAX_IMG_SIZE = 1024  # ViTDet's detection size; pretraining recipes use 224
MAX_EPOCH_SIZE = 10_000_000  # above ImageNet-1k's 1.28M images per epoch

PRETRAINERS = {
    "mae": pretrain_mae,
    "mocov3": pretrain_mocov3,
    "beit": pretrain_beit,
    "supervised": pretrain_supervised,
}

# CPU demo scale (vit_demo_patch8: 64 px, 4 blocks of width 128). Every method sees the same number
# of images: 30 epochs x 1024 crops at batch 64 (480 optimizer steps), 3 warmup epochs. Learning
# rates are larger than the papers' (short schedules, small batches); the methods' own optimizer
# settings (betas, weight decay) stay those of their papers (set in each pretrainer).
_SCHEDULE = dict(batch_size=64, epochs=30, warmup_epochs=3)
# Stage one of BEiT (the VQ tokenizer); MAE's token target (Table 7) trains the same tokenizer, which
# only a tokens run reads (pretrain_mae ignores it for the pixel targets).
_TOKENIZER_TRAIN = dict(epochs=10, warmup_epochs=1, blr=2e-3)
DEMO_DEFAULTS: dict[str, dict] = {
    # paper (MAE Table 8): blr 1.5e-4, batch 4096, 800-1600 epochs, 40 warmup, mask 0.75, norm_pix_loss
    "mae": dict(_SCHEDULE, blr=1.5e-3, mask_ratio=0.75, tokenizer_train=_TOKENIZER_TRAIN),
    # paper (moco-v3 CONFIG.md): blr 1.5e-4, wd 0.1, batch 4096, 300 epochs, 40 warmup, tau 0.2,
    # m0 0.99 (cosine to 1), projector/predictor hidden 4096, output 256, crop-min 0.08
    "mocov3": dict(_SCHEDULE, blr=1.5e-3, temperature=0.2, m0=0.99, dim=64, mlp_dim=256),
    # paper (unilm beit README): lr 1.5e-3 at batch 2048 (blr 1.9e-4), 800 epochs, 10 warmup, clip 3.0,
    # 8192 DALL-E codes, 75/196 patches masked, layer scale 0.1, drop path 0.1
    "beit": dict(
        _SCHEDULE,
        blr=1.5e-3,
        clip_grad=3.0,
        vocab_size=256,
        mask_ratio=0.4,
        tokenizer_train=_TOKENIZER_TRAIN,
    ),
    # paper (MAE A.2 / Table 11, from scratch): blr 1e-4, wd 0.3, batch 4096, 300 epochs, 20 warmup,
    # smoothing 0.1, mixup 0.8, cutmix 1.0, drop path 0.1
    "supervised": dict(_SCHEDULE, blr=1.5e-3, smoothing=0.1),
}


def pretrain(method: str, arch: str, out_dir: str | Path, *, demo_defaults: bool = True, **kwargs) -> Path:
    """Run pretrainer ``method`` (``DEMO_DEFAULTS[method]`` overridden by ``kwargs``)."""
    if method not in PRETRAINERS:
        raise BenchError(f"unknown pretraining method {method!r}; known: {', '.join(PRETRAINERS)}")
    check_sizes(kwargs.get("img_size"), kwargs.get("epoch_size"))
    opts = dict(DEMO_DEFAULTS[method]) if demo_defaults else {}
    if demo_defaults and kwargs.get("steps") is not None and not {"warmup_epochs", "warmup_steps"} & kwargs.keys():
        # A schedule given in steps keeps the defaults' warmup fraction (3 of 30 epochs), so a
        # short run still reaches its peak lr; the default warmup alone is 3 x the epoch's steps.
        opts.pop("warmup_epochs", None)
        opts["warmup_steps"] = warmup_steps_for(kwargs["steps"], _SCHEDULE)
    opts.update(kwargs)
    return PRETRAINERS[method](arch, out_dir, **opts)


def check_sizes(img_size: int | None, epoch_size: int | None) -> None:
    """``--img-size`` and ``--epoch-size`` within ``[1, MAX_*]`` (None: the default)."""
    for flag, value, limit in (("--img-size", img_size, MAX_IMG_SIZE), ("--epoch-size", epoch_size, MAX_EPOCH_SIZE)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise BenchError(f"{flag} {value!r}: must be an integer in 1..{limit} (the documented limit)")


def warmup_steps_for(steps: int, schedule: dict = _SCHEDULE) -> int:
    """Warmup steps of a ``steps``-step run at ``schedule``'s warmup fraction (10 % for the demo)."""
    return int(round(steps * schedule["warmup_epochs"] / schedule["epochs"]))


__all__ = [
    "MAX_EPOCH_SIZE",
    "MAX_IMG_SIZE",
    "PRETRAINERS",
    "check_sizes",
    "DEMO_DEFAULTS",
    "pretrain",
    "warmup_steps_for",
    "pretrain_mae",
    "pretrain_mocov3",
    "pretrain_beit",
    "pretrain_supervised",
]
