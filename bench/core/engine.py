"""The one training engine: every pretrainer (MAE, MoCo v3, BEiT, supervised) and every
classification protocol trains through ``fit``. Detection and segmentation use mmengine's Runner
(the field's engine for those), not this.

What ``fit`` guarantees:

* **Resume is exact.** Training is counted in optimizer steps. The data order of epoch ``e`` is a
  permutation seeded by ``(seed, e)``, and each sample's augmentation is seeded by its position in
  that permutation (``SeededDataset``), so neither worker count nor a restart changes what a step
  sees. A checkpoint stores model, optimizer, step and the RNG states; on CPU a resumed run repeats
  the uninterrupted run's loss sequence bit for bit.
* **Loader never restarts.** One DataLoader (``RunBatchSampler``) serves the whole run, so worker
  processes start once and keep prefetching (``prefetch_factor`` 4) across epoch boundaries;
  pinned memory on CUDA.
* **No lost work.** Checkpoints (``checkpoint-<step>.pth``) are written atomically (temp + rename)
  with their sha256 in ``checkpoints.sha256``; the last ``keep_last`` are kept (no other file is
  ever deleted), and a corrupt newest checkpoint (unreadable, or bytes that differ from the recorded
  digest) makes resume fall back to the previous one with a warning.
* **One run per folder.** ``train_settings.json`` records the training config, dataset size, model
  signature and the caller's ``settings``; resuming with others is refused in one line.
* **Numerics guard.** A non-finite loss stops the run (after ``max_nonfinite`` skipped steps) with
  the step, the loss terms and a saved state.
* **Distributed.** Under ``torchrun`` / Slurm (``bench.core.distributed.init_distributed``) the model is
  wrapped in DDP and rank ``r`` reads the r-th slice of every global batch, so the global batch —
  and the loss trajectory — equal a single process with the whole batch (tested to 1e-5 with the
  same per-sample masks). Global batch, lr and epoch length come from ``batch * accum * world``
  and are printed at start: ``lr = blr * batch * accum * world / 256``. Gradients are synchronised
  once per optimizer step (``no_sync`` on the other micro-steps). The logged loss (and every logged
  term) is the mean over all micro-batches of the step on all ranks, so logs equal a single
  process's; a non-finite loss on any rank makes every rank skip (or stop at) the same step; each
  rank's RNG state is checkpointed, so a DDP resume repeats the uninterrupted run too.
* **Activation checkpointing.** ``grad_checkpointing=True`` recomputes every ViT ``Block`` in the
  backward pass (``torch.utils.checkpoint``, non-reentrant): less activation memory, same numbers.
* **FSDP.** ``fsdp=True`` under a process group shards with FSDP2 (``fully_shard`` on every ViT
  ``Block``, then the root) instead of DDP: each rank holds 1/world of the parameters, gradients
  and AdamW state. Accumulation uses ``set_requires_gradient_sync``; clipping, the fused AdamW,
  bf16 autocast, activation checkpointing, ``compile`` and ``after_step`` hooks work unchanged.
  Checkpoints are gathered to rank 0 in the single-process format (load, resume and export as
  before), and at the end ``fit`` hands back the plain module with the full trained weights on
  every rank. One process: ignored (noted in the start line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.core.checkpoint import load_checkpoint_file, read_checksums, save_atomic, write_checksums
from bench.core.determinism import check_seed
from bench.core.distributed import all_reduce_sum, gather_objects, rank_world
from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError, first_line
from bench.core.io import atomic_write_text, clean_stale_temps
from bench.core.run_record import check_run_record, write_run_record


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
    bf16: bool | None = None  # bfloat16 autocast; None: on for CUDA, off for CPU
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

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class FitResult:
    steps: int
    final_loss: float
    wall_time_s: float
    images_per_s: float
    out_dir: Path
    history: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Data: deterministic, resumable order and augmentation
# ------------------------------------------------------------------------------------------------
def sample_seed(seed: int, epoch: int, position: int) -> int:
    h = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SeededDataset(Dataset):
    """Wraps a dataset so item ``(index, seed)`` is produced under RNGs seeded with ``seed``
    (torch, numpy, random), restoring the caller's RNG state afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochBatchSampler(Sampler):
    """Batches of ``(index, seed)`` for one epoch, from batch ``start``; rank ``r`` of ``world``
    takes the r-th slice of every global batch. The last incomplete global batch is dropped."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.n, self.bs, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.rank, self.world, self.shuffle = rank, world, shuffle

    def batches_per_epoch(self) -> int:
        return self.n // (self.bs * self.world)

    def __len__(self):
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        gb = self.bs * self.world
        for b in range(self.start, self.batches_per_epoch()):
            lo = b * gb + self.rank * self.bs
            yield [(perm[p], sample_seed(self.seed, self.epoch, p)) for p in range(lo, lo + self.bs)]


class RunBatchSampler(Sampler):
    """The whole run's micro-batches: ``EpochBatchSampler`` epochs back to back, from micro-batch
    ``start`` (counted from the run's beginning) for ``count`` micro-batches. One DataLoader over it
    serves the whole run, so its workers start once and keep prefetching across epoch boundaries
    (a loader per epoch would stall at every epoch start while new workers spawn)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        count: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.n, self.bs, self.seed, self.start, self.count = n, batch_size, seed, start, count
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.bpe = n // (batch_size * world)
        if self.bpe == 0:
            raise ValueError(f"{n} samples are fewer than one global batch of {batch_size * world}")

    def __len__(self):
        return max(0, self.count)

    def __iter__(self):
        epoch, first = divmod(self.start, self.bpe)
        left = self.count
        while left > 0:
            for batch in EpochBatchSampler(
                self.n, self.bs, self.seed, epoch, first, self.rank, self.world, self.shuffle
            ):
                yield batch
                left -= 1
                if left == 0:
                    return
            epoch, first = epoch + 1, 0


# ------------------------------------------------------------------------------------------------
# Optimisation helpers
# ------------------------------------------------------------------------------------------------
def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """timm's parameter groups: no weight decay on biases, norms and ``model.no_weight_decay()``
    (pos_embed, cls_token, mask_token, relative position tables), optional layer-wise lr decay
    (``lr_scale`` = decay^(L - layer), blocks by ``model.group_matcher``)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is not None and layer_decay != 1.0:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


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
    if cfg.steps < 0 or (cfg.steps == 0 and not (cfg.epochs > 0 and math.isfinite(cfg.epochs))):
        raise BenchError(
            f"--steps must be >= 1 or --epochs a finite number > 0, got steps {cfg.steps}, epochs {cfg.epochs}"
        )
    if not (math.isfinite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
        raise BenchError(f"--warmup-epochs must be a finite number >= 0, got {cfg.warmup_epochs}")


def _fusable(groups) -> bool:
    params = [p for g in groups for p in g["params"]]
    return all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
    )


def make_optimizer(groups, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        # The fused kernel (CPU and CUDA) is ~3x faster than the per-tensor loop on CPU for ViT-B
        # (0.30 vs 0.92 s per step here) and gives the same updates to float rounding.
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=_fusable(groups))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=cfg.momentum)
    raise BenchError(f"unknown optimizer {cfg.optimizer!r} (adamw, sgd, lars)")


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup, then half-cycle cosine to ``min_lr`` (per optimizer step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def enable_grad_checkpointing(model: torch.nn.Module, block_type: type) -> int:
    """Run every ``block_type`` module in ``model`` (e.g. ``backbones.vit.Block``: encoder and MAE
    decoder blocks) under ``torch.utils.checkpoint`` while gradients are being recorded; returns how
    many blocks. The state dict is unchanged (only the instances' ``forward`` is replaced)."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for m in model.modules():
        if isinstance(m, block_type) and not getattr(m, "_grad_checkpointing", False):

            def forward(*args, _fwd=m.forward, **kw):
                if torch.is_grad_enabled():
                    return checkpoint(_fwd, *args, use_reentrant=False, **kw)
                return _fwd(*args, **kw)

            m.forward, m._grad_checkpointing = forward, True
            n += 1
    return n


# ------------------------------------------------------------------------------------------------
# FSDP2 (``TrainConfig.fsdp``): sharding for the loop, and back to a plain module afterwards
# ------------------------------------------------------------------------------------------------
_HOOK_DICT_SUFFIXES = ("_hooks", "_hooks_with_kwargs", "_hooks_always_called")


def _hook_dicts(m: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(m).items() if k.endswith(_HOOK_DICT_SUFFIXES) and isinstance(v, dict)}


class FSDPSharding:
    """``fully_shard`` (FSDP2) every ``block_type`` module (``backbones.vit.Block``) of ``model`` (encoder, MAE decoder, both
    MoCo encoders), then ``model`` itself, in place: parameters become ``DTensor`` shards (dim 0 over
    the ranks), gradients are reduce-scattered and the optimizer only ever sees the local shard.
    Parameter names do not change. Rank 0's parameters and buffers are broadcast first (as DDP does).

    ``release()`` (a collective) turns the model back into the plain module it was: its original
    parameter objects hold the full trained values on every rank (all-gathered); the classes are
    restored and the hooks and attributes added to the modules since sharding are removed; buffers
    are rank 0's. ``fit`` calls it at the end, so after ``fit`` the caller's model is usable as after
    a DDP run (``export_backbone``, evaluation of each rank's shard). After an exception inside
    ``fit`` the model stays sharded."""

    def __init__(self, model: torch.nn.Module, block_type: type | None = None):
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self.model = model
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, 0)
        # what to restore: each module's class, attribute names and hook ids before sharding, and its
        # parameter objects (emptied while sharded, refilled at release: references to them stay valid)
        self._before = {
            m: (type(m), set(vars(m)), {k: set(d) for k, d in _hook_dicts(m).items()}) for m in model.modules()
        }
        self._params = {(m, name): p for m in model.modules() for name, p in m._parameters.items() if p is not None}
        blocks = [m for m in model.modules() if block_type is not None and isinstance(m, block_type)]
        for b in blocks:
            fully_shard(b)
        fully_shard(model)
        with torch.no_grad():  # FSDP copied its shard; free the full tensors
            for p in self._params.values():
                p.data = p.data.new_empty(0)
        self.n_blocks = len(blocks)
        self.modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def reshard(self):
        """Register the sharded parameters everywhere (after a forward without backward the root
        keeps its gathered ones)."""
        for m in self.modules:
            m.reshard()

    def drop_grads(self):
        """Discard the gradients of a skipped step, including those accumulated unsharded under
        ``set_requires_gradient_sync(False)`` (``reset_iter_state`` keeps those; measured)."""
        self.model.reset_iter_state()
        for m in self.modules:
            m.unshard()
        self.model.zero_grad(set_to_none=True)
        self.reshard()

    def full_state(self, opt: torch.optim.Optimizer, order: list[str]) -> tuple[dict, dict]:
        """Collective. On rank 0: the model and optimizer state dicts in the unsharded on-disk format
        of a single process (``state_dict()`` / ``opt.state_dict()``: integer parameter ids); ``{}``
        on the other ranks."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        self.reshard()
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(self.model, options=opts)
        if not opt.state:  # nothing to gather; DCP would first initialise the state with a zero step
            return model_sd, opt.state_dict()
        osd = get_optimizer_state_dict(self.model, opt, options=opts)
        if not osd:
            return model_sd, osd
        ids = {name: i for i, name in enumerate(order)}
        return model_sd, {
            "state": {ids[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]],
        }

    def load(self, model_sd: dict, opt: torch.optim.Optimizer, opt_sd: dict, order: list[str]):
        """Every rank: load a full (single-process format) checkpoint into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        self.reshard()
        set_model_state_dict(self.model, model_sd, options=StateDictOptions(full_state_dict=True))
        if not opt_sd["state"]:
            opt.load_state_dict(opt_sd)
            return
        fqn = {
            "state": {order[i]: v for i, v in opt_sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in opt_sd["param_groups"]],
        }
        # strict=False: a trainable parameter that never had a gradient has no AdamW state
        set_optimizer_state_dict(self.model, opt, fqn, options=StateDictOptions(full_state_dict=True, strict=False))

    @torch.no_grad()
    def release(self):
        """Collective: back to the plain module, full parameters on every rank."""
        from torch.distributed.tensor import DTensor

        self.reshard()
        for m in self.model.modules():  # same order on every rank: one all-gather per parameter
            for name, p in list(m._parameters.items()):
                if isinstance(p, DTensor):
                    orig = self._params[(m, name)]
                    orig.data = p.full_tensor()
                    m._parameters[name] = orig
        for m in self.model.modules():
            cls, attrs, hooks = self._before[m]
            for k, d in _hook_dicts(m).items():
                for hid in [h for h in d if h not in hooks.get(k, ())]:
                    del d[hid]
            for k in [k for k in vars(m) if k not in attrs]:
                del m.__dict__[k]
            m.__class__ = cls
        for b in self.model.buffers():  # each rank ran its own BatchNorm statistics
            dist.broadcast(b, 0)


def local_state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Bytes of this rank's parameters and optimizer state tensors (the local shard of a ``DTensor``)."""

    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    out = {"params": sum(nbytes(p) for p in model.parameters()), "optimizer": 0}
    if opt is not None:
        out["optimizer"] = sum(nbytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return out


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise BenchError(
            f"--device {name!r}: not a device name ({first_line(e)}); use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise BenchError(f"--device {name!r}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r}: only cpu and cuda are supported")
    return device


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Checkpoints and the run record
# ------------------------------------------------------------------------------------------------
CHECKPOINT_NAME = "checkpoint-{:07d}.pth"  # the only files the engine writes, prunes and resumes from
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{7,})\.pth$")
CHECKSUMS = "checkpoints.sha256"  # sha256sum format, one line per kept checkpoint
RUN_RECORD = "train_settings.json"  # what a resumed run must match
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


def _rng_state() -> dict:
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
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    v, state, gauss = s["python"]
    random.setstate((v, tuple(state), gauss))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def checkpoint_paths(out_dir: Path) -> list[Path]:
    """The engine's training checkpoints in ``out_dir`` (exactly the names it writes), newest first.
    Other files (``checkpoint-best.pth``, a user's ``checkpoint-0-mine.pth``) are never touched."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for p in Path(out_dir).iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m and p.is_file():
                found.append((int(m[1]), p))
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(out_dir: Path) -> dict | None:
    """The newest readable training checkpoint (its sha256 checked against ``CHECKSUMS`` when listed
    there); corrupt ones are skipped with a warning."""
    sums = read_checksums(Path(out_dir) / CHECKSUMS)
    for p in checkpoint_paths(out_dir):
        try:
            state = load_checkpoint_file(p, sha256=sums.get(p.name))
            if not isinstance(state, dict) or "step" not in state or "model" not in state:
                raise CheckpointError(f"checkpoint {p} is not a training checkpoint (no 'step'/'model')")
            state["_path"] = p
            return state
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint, falling back to the previous one: {e}")
    return None


def prune_checkpoints(out_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` engine checkpoints, and their checksum lines."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    paths = checkpoint_paths(out_dir)
    for old in paths[keep_last:]:
        old.unlink(missing_ok=True)
    sums = read_checksums(Path(out_dir) / CHECKSUMS)
    kept = {p.name for p in paths[:keep_last]}
    if set(sums) - kept:
        write_checksums(Path(out_dir) / CHECKSUMS, {n: d for n, d in sums.items() if n in kept})


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


def unwrap(model):
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------------------------
# The trainer: set-up, resume, step, save
# ------------------------------------------------------------------------------------------------
LossFn = Callable[[torch.nn.Module, object], tuple]


@dataclass
class _Window:
    """What the micro-batches of one optimizer step have produced so far."""

    bad: bool = False  # a non-finite loss on some rank: the step is skipped
    bad_logs: list = field(default_factory=list)
    loss: float = 0.0  # sums over the finite micro-batches
    n: int = 0
    terms: dict = field(default_factory=dict)
    last_logs: dict = field(default_factory=dict)  # the last micro-batch's terms as loss_fn returned them


class Trainer:
    """The state of one ``fit`` run: the wrapped model, optimizer, schedule and counters. Every
    method is called on every rank (several contain collectives); only rank 0 writes files."""

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: Dataset,
        cfg: TrainConfig,
        *,
        groups=None,
        block_type: type | None = None,
        extra_state: dict | None = None,
    ):
        self.cfg, self.dataset, self.extra_state = cfg, dataset, extra_state or {}
        self.out = Path(cfg.out_dir)
        self.rank, self.world = rank_world()
        self.ddp = self.world > 1  # several processes (DDP or FSDP): rank agreement, global logs, per-rank RNG
        self.device = pick_device(cfg.device)
        self.bf16 = cfg.bf16 if cfg.bf16 is not None else self.device.type == "cuda"
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % 2**32)
        model.to(self.device)
        if cfg.grad_checkpointing:
            if block_type is None:
                raise BenchError("grad_checkpointing needs the model's block type (fit(..., block_type=))")
            enable_grad_checkpointing(unwrap(model), block_type)
        if cfg.compile:
            # Compile the forward only: parameter names (and so checkpoints) stay those of the eager model.
            # Measured: no gain on CPU here; the option is for GPUs.
            core = unwrap(model)
            core.forward = torch.compile(core.forward, backend=cfg.compile)
        self.model, self.sharding, self.wrapper, groups = self._wrap(model, groups, block_type)
        if groups is None:
            groups = param_groups(unwrap(self.model), cfg.weight_decay)
        for g in groups:
            g.setdefault("lr_scale", 1.0)

        self.global_batch = cfg.batch_size * cfg.accum_iter * self.world
        self.lr = cfg.lr if cfg.lr is not None else cfg.blr * self.global_batch / 256
        self.opt = make_optimizer(groups, cfg, self.lr)
        if self.sharding is not None:  # optimizer parameter ids -> names, for the unsharded checkpoint format
            names = {p: n for n, p in self.model.named_parameters()}
            self.order = [names[p] for g in self.opt.param_groups for p in g["params"]]
        self.bpe = micro_batches_per_epoch(len(dataset), cfg.batch_size, self.world)
        self.steps_per_epoch = max(1, self.bpe // cfg.accum_iter)
        self.total = cfg.steps or max(1, int(round(cfg.epochs * self.steps_per_epoch)))
        self.warmup = (
            cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * self.steps_per_epoch))
        )

        self.step, self.micro, self.nonfinite, self.history = 0, 0, 0, []
        self.resumed_from = None
        self.window, self.last_loss, self.seen = _Window(), float("nan"), 0
        self.log = self.bar = None

    def _wrap(self, model, groups, block_type):
        """(model, FSDP sharding or None, start-line note, groups) for this world size."""
        if self.ddp and self.cfg.fsdp:
            names = {p: n for n, p in model.named_parameters()}
            sharding = FSDPSharding(model, block_type)  # in place: the same module, its parameters now DTensor shards
            if groups is not None:  # the caller's groups hold the replaced parameters: map them by name
                new = dict(model.named_parameters())
                groups = [{**g, "params": [new[names[p]] for p in g["params"]]} for g in groups]
            return model, sharding, f"; FSDP2 ({sharding.n_blocks} blocks sharded)", groups
        if self.ddp:  # broadcasts rank 0's parameters and buffers; averages gradients over ranks
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids), None, "; DDP", groups
        return model, None, "; --fsdp ignored: single process" if self.cfg.fsdp else "", groups

    # -- resume --------------------------------------------------------------------------------
    def resume(self):
        """Continue from the newest readable checkpoint in the output folder, if any: weights,
        optimizer, counters, every rank's RNG state, ``extra_state`` and the logged history."""
        state = load_latest(self.out)
        if state is None:
            return
        if self.sharding is not None:
            self.sharding.load(state["model"], self.opt, state["optimizer"], self.order)
        else:
            unwrap(self.model).load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        self.step, self.micro, self.nonfinite = state["step"], state["micro"], state.get("nonfinite", 0)
        rngs = state.get("rng_ranks") or [state["rng"]]
        if len(rngs) != self.world and self.rank == 0:
            warnings.warn(
                f"resuming a {len(rngs)}-process run with {self.world} processes: data order is "
                f"unchanged, random streams inside the model (e.g. masks) differ"
            )
        if self.rank < len(rngs):  # another world size: data order is still exact (by position), model RNG is not
            _set_rng_state(rngs[self.rank])
        for k, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][k])
        self.history = [h for h in state.get("history", []) if h["step"] <= self.step]
        self.resumed_from = state["_path"]

    # -- start ---------------------------------------------------------------------------------
    def start(self, record: dict):
        """Rank 0: the run record, ``log.jsonl`` rewritten to the history we continue from, the start
        line. Every rank: the progress bar (shown on rank 0) and train mode."""
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.out)  # temp files of a killed earlier run
            write_run_record(self.out / RUN_RECORD, record)
            print(
                f"[{cfg.desc}] world {self.world} x batch {cfg.batch_size} x accum {cfg.accum_iter} = global batch "
                f"{self.global_batch}; lr {self.lr:.3g} (blr {cfg.blr:g} x {self.global_batch}/256)"
                f"{' [given]' if cfg.lr is not None else ''}; {self.total} steps, {self.steps_per_epoch} per epoch, "
                f"warmup {self.warmup}{self.wrapper}"
                + (f"; resumed at step {self.step} from {self.resumed_from.name}" if self.resumed_from else ""),
                flush=True,
            )
            _write_log(self.out / "log.jsonl", self.history)
            self.log = open(self.out / "log.jsonl", "a")
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total,
            initial=self.step,
            desc=cfg.desc,
            disable=not cfg.progress or self.rank != 0,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.model.train()
        self.t0 = time.perf_counter()

    def batches(self, collate_fn=None):
        """Every remaining micro-batch of the run, on the device (a skipped step still counts). One
        DataLoader serves them all, so its workers start once."""
        cfg = self.cfg
        sampler = RunBatchSampler(
            len(self.dataset),
            cfg.batch_size,
            cfg.seed,
            self.micro,
            self.total * cfg.accum_iter - self.micro,
            self.rank,
            self.world,
        )
        loader = DataLoader(
            SeededDataset(self.dataset),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if cfg.num_workers else None,
            # its own generator: creating a loader must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        if self.step >= self.total:
            return
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except BenchError as e:  # raised in a worker: DataLoader puts its traceback in the message
                raise worker_error(e) from None
            yield _to_device(batch, self.device)

    # -- step ----------------------------------------------------------------------------------
    def forward_backward(self, loss_fn: LossFn, batch):
        """One micro-batch: forward, and backward unless the loss is non-finite on some rank.
        Gradients are all-reduced (DDP) / reduce-scattered (FSDP) only in the step's last backward."""
        cfg, w = self.cfg, self.window
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.total, self.warmup, self.lr, cfg.min_lr) * g["lr_scale"]
        last_micro = (self.micro + 1) % cfg.accum_iter == 0
        if self.sharding is not None:
            self.model.set_requires_gradient_sync(last_micro)
        no_sync = self.ddp and self.sharding is None and not last_micro
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(self.device, self.bf16):
                loss, logs = loss_fn(self.model, batch)
            w.last_logs = logs
            bad_ranks = [self.rank] if not bool(torch.isfinite(loss).all()) else []
            if self.ddp:  # agree before backward: a rank that skipped it would hang the others
                flags = all_reduce_sum([int(r == self.rank and bool(bad_ranks)) for r in range(self.world)])
                bad_ranks = [r for r, f in enumerate(flags) if f]
            if bad_ranks:
                w.bad = True
                w.bad_logs.append(
                    {
                        "loss": float(loss.detach()),
                        **{k: float(v) for k, v in logs.items()},
                        **({"ranks": bad_ranks} if self.ddp else {}),
                    }
                )
            else:
                (loss / cfg.accum_iter).backward()
                w.loss += float(loss.detach())
                w.n += 1
                for k, v in logs.items():
                    w.terms[k] = w.terms.get(k, 0.0) + float(v)
        self.micro += 1
        self.seen += _batch_len(batch) * self.world

    def optimizer_step(self):
        """End of an accumulation window: the optimizer step (clipped), or a skipped step after a
        non-finite loss; past ``max_nonfinite`` skips the state is saved and the run stops."""
        cfg, w = self.cfg, self.window
        self.terms = w.last_logs
        if w.n:  # the step's mean loss and terms over all its micro-batches on all ranks
            keys = sorted(w.terms)
            sums = [w.loss, float(w.n), *(w.terms[k] for k in keys)]
            if self.ddp:
                sums = all_reduce_sum(sums)
            self.last_loss = sums[0] / sums[1]
            self.terms = {k: v / sums[1] for k, v in zip(keys, sums[2:])}
        if w.bad:
            self.opt.zero_grad(set_to_none=True)
            if self.sharding is not None:
                self.sharding.drop_grads()
            self.nonfinite += 1
            if self.nonfinite > cfg.max_nonfinite:
                self.save()
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step} ({w.bad_logs[-1]}); state saved in {self.out}; "
                    f"pass --max-nonfinite N to skip up to N such steps"
                )
            if self.rank == 0:
                warnings.warn(
                    f"step {self.step}: non-finite loss {w.bad_logs[-1]}, step skipped "
                    f"({self.nonfinite}/{cfg.max_nonfinite})"
                )
        else:
            if cfg.clip_grad:  # FSDP: DTensor gradients, the norm is over the whole model (tested)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.window = _Window()
        self.step += 1

    def log_step(self):
        """Append the step to the history, ``log.jsonl`` and the progress bar."""
        g = self.opt.param_groups[0]
        rec = {
            "step": self.step,
            "epoch": self.micro / self.bpe,
            "loss": self.last_loss,
            "lr": g["lr"] / g["lr_scale"],
            **{k: float(v) for k, v in self.terms.items()},
        }
        self.history.append(rec)
        if self.log is not None:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
        elapsed = time.perf_counter() - self.t0
        self.bar.set_postfix(
            loss=f"{self.last_loss:.4f}",
            lr=f"{rec['lr']:.2e}",
            img_s=f"{self.seen / max(elapsed, 1e-9):.1f}",
            refresh=False,
        )
        self.bar.update(1)

    # -- save ----------------------------------------------------------------------------------
    def save(self):
        """``checkpoint-<step>.pth`` (atomic, its sha256 recorded), then all but the newest
        ``keep_last`` pruned. Collective: every rank calls it, rank 0 writes."""
        rngs = gather_objects(_rng_state()) if self.ddp else None
        if self.sharding is not None:  # gathered to rank 0, in the format of a single process
            model_sd, opt_sd = self.sharding.full_state(self.opt, self.order)
        if self.rank != 0:
            return
        if self.sharding is None:
            model_sd, opt_sd = unwrap(self.model).state_dict(), self.opt.state_dict()
        ckpt = {
            "model": model_sd,
            "optimizer": opt_sd,
            "step": self.step,
            "micro": self.micro,
            "nonfinite": self.nonfinite,
            "rng": rngs[0] if self.ddp else _rng_state(),
            "config": self.cfg.to_json(),
            "history": self.history,
            **({"rng_ranks": rngs} if self.ddp else {}),
            "arch": getattr(unwrap(self.model), "arch", None),
            "extra": {k: obj.state_dict() for k, obj in self.extra_state.items()},
        }
        save_atomic(ckpt, self.out / CHECKPOINT_NAME.format(self.step), checksums=self.out / CHECKSUMS)
        prune_checkpoints(self.out, self.cfg.keep_last)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()

    def finish(self) -> FitResult:
        if self.sharding is not None:  # the caller gets its plain module back, trained, on every rank
            self.sharding.release()
        if self.ddp:  # every rank leaves with the final checkpoint on disk
            dist.barrier()
        wall = time.perf_counter() - self.t0
        return FitResult(self.step, self.last_loss, wall, self.seen / max(wall, 1e-9), self.out, self.history)


def micro_batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Micro-batches per epoch and rank; a dataset smaller than one global batch is a BenchError."""
    if n < batch_size * world:
        raise BenchError(f"dataset has {n} samples, fewer than one global batch of {batch_size * world}")
    return n // (batch_size * world)


def fit(
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    groups: list[dict] | None = None,
    after_step: Callable[[int, int], None] | None = None,
    collate_fn=None,
    extra_state: dict | None = None,
    resume: bool = True,
    block_type: type | None = None,
    settings: dict | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset``. ``loss_fn(model, batch) -> (loss, {name: float})``.

    ``groups``: optimizer parameter groups (default: ``param_groups(model, cfg.weight_decay)``),
    each may carry ``lr_scale``. ``after_step(step, total_steps)`` runs after each optimizer step
    (e.g. MoCo's momentum update). ``extra_state``: objects with ``state_dict``/``load_state_dict``
    saved in the checkpoint (e.g. a tokenizer). With ``resume`` the newest checkpoint in
    ``cfg.out_dir`` is continued, and refused (one line) when the run there was started with other
    settings: ``settings`` (JSON values, e.g. ``{"method": "mae", "mask_ratio": 0.75}``) are recorded
    with the training config and the model's signature. ``block_type``: the model's repeated block
    class (``backbones.vit.Block``), the unit of activation checkpointing and FSDP sharding.
    """
    check_config(cfg)
    record = run_settings(cfg, model, dataset, settings)
    if resume and checkpoint_paths(Path(cfg.out_dir)):  # before anything is loaded or written
        check_run_record(
            Path(cfg.out_dir) / RUN_RECORD, record, hint="use the same settings, another output folder, or --no-resume"
        )
    micro_batches_per_epoch(len(dataset), cfg.batch_size, rank_world()[1])

    trainer = Trainer(model, dataset, cfg, groups=groups, block_type=block_type, extra_state=extra_state)
    if resume:
        trainer.resume()
    trainer.start(record)
    try:
        for batch in trainer.batches(collate_fn):
            trainer.forward_backward(loss_fn, batch)
            if trainer.micro % cfg.accum_iter:
                continue  # accumulating gradients
            trainer.optimizer_step()
            if after_step is not None:
                after_step(trainer.step, trainer.total)
            trainer.log_step()
            if trainer.step == trainer.total or (cfg.ckpt_every and trainer.step % cfg.ckpt_every == 0):
                trainer.save()
            if trainer.step >= trainer.total:
                break
    finally:
        trainer.close()
    return trainer.finish()


def worker_error(e: BenchError) -> BenchError:
    """``e`` with its original one-line message when a DataLoader re-raised it from a worker
    (``'Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\n<type>: <message>'``)."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        prefix, sep, message = lines[-1].partition(": ")
        return type(e)(message if sep and prefix.split(".")[-1] == type(e).__name__ else lines[-1])
    return e


def _write_log(path: Path, history: list):
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_len(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_len(next(iter(batch.values())))
    return 0
