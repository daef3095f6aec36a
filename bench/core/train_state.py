"""What the engine keeps in a run folder: checkpoint names, the settings a resumed run must share,
the model's signature, and each rank's RNG state (CPU generators and the training GPU only)."""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.core.train_config import TrainConfig
from bench.core.workdir import WorkDir

CHECKPOINT_NAME = "checkpoint-{:07d}.pth"  # the only files the engine writes, prunes and resumes from
CHECKPOINT_GLOB = "checkpoint-*.pth"
CHECKSUMS = "checkpoints.sha256"  # sha256sum format, one line per kept checkpoint: the manifest
RUN_RECORD = "train_settings.json"  # what a resumed run must match
LOG = "log.jsonl"
# TrainConfig fields that may change between a run and its resumption: where and how it runs, not what
NOT_RECORDED = (
    "out_dir",
    "progress",
    "desc",
    "device",
    "num_workers",
    "ckpt_every",
    "keep_last",
    "max_nonfinite",
    "grad_checkpointing",
    "compile",
    "fsdp",
)


def engine_workdir(out_dir: str | Path, writes: tuple = ()) -> WorkDir:
    """The engine's run folder: ``checkpoint-<step>.pth`` listed in ``checkpoints.sha256``, settings
    in ``train_settings.json``, the log in ``log.jsonl`` (plus the caller's ``writes``)."""
    return WorkDir(out_dir, pattern=CHECKPOINT_GLOB, settings=RUN_RECORD, manifest=CHECKSUMS, writes=(LOG, *writes))


def checkpoint_paths(out_dir: Path) -> list[Path]:
    """The engine's training checkpoints in ``out_dir`` (exactly the names it writes), newest first.
    Other files (``checkpoint-best.pth``, a user's ``checkpoint-0-mine.pth``) are never touched."""
    return engine_workdir(out_dir).checkpoints()


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_signature(model: torch.nn.Module) -> str:
    """``'<class>: <n> tensors, <m> values, #<hash of names, shapes, dtypes>'``: another architecture
    or method gives another signature."""
    sd = unwrap(model).state_dict()
    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sd.items())
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    return f"{type(unwrap(model)).__name__}: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} values, #{digest}"


def run_settings(cfg: TrainConfig, model: torch.nn.Module, dataset: Dataset, settings: dict | None = None) -> dict:
    """What a resumed run must share with the run it continues: the training config (less
    ``NOT_RECORDED``), the dataset size, the model's signature and the caller's ``settings``."""
    record = {k: v for k, v in cfg.to_json().items() if k not in NOT_RECORDED}
    record.update(dataset_size=len(dataset), model=model_signature(model))
    clash = set(settings or {}) & set(record)
    if clash:
        raise ValueError(f"fit(settings=...) keys {sorted(clash)} are TrainConfig fields; they are recorded already")
    return {**record, **(settings or {})}


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: torch CPU, Python, numpy, and the training GPU's generator only
    (another node may see fewer GPUs, so the state of every visible one could not be restored)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(s: dict, device: torch.device) -> None:
    """Restore ``rng_state``'s states; the GPU state goes to the training device."""
    torch.set_rng_state(s["torch"])
    v, state, gauss = s["python"]
    random.setstate((v, tuple(state), gauss))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    cuda = s.get("cuda")
    if isinstance(cuda, (list, tuple)):  # checkpoints of older versions: every visible GPU's state
        cuda = cuda[0] if len(cuda) == 1 else None
        if s.get("cuda"):
            warnings.warn("checkpoint holds the RNG states of several GPUs; the training GPU's stream restarts")
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def seed_rank(seed: int, rank: int) -> None:
    """Each rank's own streams (model randomness such as drop path), from the run's seed; the CPU
    generator, Python's and numpy's, and the training GPU's via ``torch.manual_seed``."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
