"""The engine's settings (``TrainConfig``), their one-line checks and documented limits, and what a
run returns (``FitResult``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.core.determinism import check_seed
from bench.core.errors import BenchError

# Upper limits of the schedule options: far above any paper recipe (MAE's longest run is 1600
# epochs, about 500k steps at batch 4096), low enough that a typo is refused before it starts.
MAX_STEPS = 10_000_000
MAX_EPOCHS = 100_000


@dataclass
class TrainConfig:
    out_dir: str
    batch_size: int = 32  # per process, per micro-step
    epochs: float = 1.0  # used when steps == 0
    steps: int = 0  # optimizer steps (0: from epochs)
    accum_iter: int = 1
    blr: float = 1.5e-4  # base lr: lr = blr * global_batch / 256 (MAE, MoCo v3, BEiT, DeiT)
    lr: float | None = None  # absolute lr (overrides blr)
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    optimizer: str = "adamw"  # adamw | sgd | lars (linear probe)
    momentum: float = 0.9  # sgd / lars
    clip_grad: float | None = None
    bf16: bool | None = None  # older name of ``amp`` (used when amp is None)
    seed: int = 0
    ckpt_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_last: int = 2
    num_workers: int = 0
    max_nonfinite: int = 0
    progress: bool = True
    desc: str = "train"
    device: str = "auto"
    grad_checkpointing: bool = False  # recompute ViT blocks in backward (activation memory -> compute)
    compile: str | None = None  # torch.compile backend for the model's forward (e.g. 'inductor'); None: eager
    fsdp: bool = False  # under a process group: FSDP2 (params, grads, AdamW state sharded) instead of DDP
    amp: bool | None = None  # autocast; None: on for CUDA, off for the CPU (see bench.core.device.amp_dtype)
    amp_dtype: str | None = None  # 'bf16' | 'fp16'; None: by hardware (bf16 where supported, else fp16)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def amp_on(self) -> bool | None:
        return self.amp if self.amp is not None else self.bf16


@dataclass
class FitResult:
    steps: int
    final_loss: float
    wall_time_s: float
    images_per_s: float
    out_dir: Path
    history: list = field(default_factory=list)


def check_config(cfg: TrainConfig) -> None:
    """One-line errors for settings that would otherwise fail deep inside training."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is an existing file, not a folder")
    check_seed(cfg.seed)
    for name in ("batch_size", "accum_iter", "keep_last"):
        if getattr(cfg, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name, flag in (
        ("num_workers", "--workers"),
        ("ckpt_every", "--ckpt-every"),
        ("max_nonfinite", "--max-nonfinite"),
    ):
        if getattr(cfg, name) < 0:
            raise BenchError(f"{flag} must be >= 0, got {getattr(cfg, name)}")
    for name in ("lr", "blr"):
        v = getattr(cfg, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise BenchError(f"--{name} must be a finite number >= 0, got {v}")
    check_schedule(cfg)
    if not (math.isfinite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
        raise BenchError(f"--warmup-epochs must be a finite number >= 0, got {cfg.warmup_epochs}")
    if cfg.amp_dtype not in (None, "bf16", "fp16"):
        raise BenchError(f"--amp-dtype {cfg.amp_dtype!r}: use bf16 or fp16")


def check_schedule(cfg: TrainConfig) -> None:
    """``--steps`` / ``--epochs``: positive and within ``MAX_STEPS`` / ``MAX_EPOCHS``."""
    if cfg.steps < 0 or (cfg.steps == 0 and not (cfg.epochs > 0 and math.isfinite(cfg.epochs))):
        raise BenchError(
            f"--steps must be >= 1 or --epochs a finite number > 0, got steps {cfg.steps}, epochs {cfg.epochs}"
        )
    if cfg.steps > MAX_STEPS:
        raise BenchError(f"--steps {cfg.steps}: at most {MAX_STEPS} (the engine's documented limit)")
    if not cfg.steps and cfg.epochs > MAX_EPOCHS:
        raise BenchError(f"--epochs {cfg.epochs:g}: at most {MAX_EPOCHS} (the engine's documented limit)")


def check_total_steps(total: int, cfg: TrainConfig) -> int:
    """The run's optimizer steps (from ``--epochs`` and the epoch length) within ``MAX_STEPS``."""
    if total > MAX_STEPS:
        raise BenchError(
            f"--epochs {cfg.epochs:g} gives {total} optimizer steps: at most {MAX_STEPS} (the engine's documented limit)"
        )
    return total
