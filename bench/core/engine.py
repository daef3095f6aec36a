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
  with their sha256 in ``checkpoints.sha256``; the last ``keep_last`` listed there are kept (no other
  file is ever deleted), and a corrupt newest checkpoint (unreadable, or bytes that differ from the
  recorded digest) makes resume fall back to the previous one with a warning. The folder is handled
  by ``bench.core.workdir`` (the service every engine uses).
* **One run per folder.** ``train_settings.json`` records the training config, dataset size, model
  signature and the caller's ``settings``; resuming with others is refused in one line, and so is a
  checkpoint that recorded other settings or a step past this run's end. ``resume=False``
  (``--no-resume``) moves the folder's checkpoints and records into ``previous-<UTC time>/``.
* **Says where it runs.** Every run prints ``device, dtype, world size, backend`` first. Precision
  by hardware (``bench.core.device.amp_dtype``): bf16 autocast where supported, fp16 with a
  ``GradScaler`` on other GPUs; on the CPU only when asked for.
* **Numerics guard.** A non-finite loss stops the run (after ``max_nonfinite`` skipped steps) with
  the step, the loss terms and a saved state.
* **Distributed.** Under ``torchrun`` / Slurm (``bench.core.distributed.init_distributed``) the model is
  wrapped in DDP and rank ``r`` reads the r-th slice of every global batch, so the global batch —
  and the loss trajectory — equal a single process with the whole batch (tested to 1e-5 with the
  same per-sample masks). Global batch, lr and epoch length come from ``batch * accum * world``
  and are printed at start: ``lr = blr * batch * accum * world / 256``. All ranks must start with
  the same settings (a digest is all-gathered; a mismatch is one line on every rank), and a peer
  that dies gives one line on every surviving rank (collectives time out, ``BENCH_DIST_TIMEOUT_S``). Gradients are synchronised
  once per optimizer step (``no_sync`` on the other micro-steps). The logged loss (and every logged
  term) is the mean over all micro-batches of the step on all ranks, so logs equal a single
  process's; a non-finite loss on any rank makes every rank skip (or stop at) the same step; each
  rank's RNG state (CPU and its training GPU) is checkpointed, so a DDP resume repeats the
  uninterrupted run too.
* **Activation checkpointing.** ``grad_checkpointing=True`` recomputes every ViT ``Block`` in the
  backward pass (``torch.utils.checkpoint``, non-reentrant): less activation memory, same numbers.
* **FSDP.** ``fsdp=True`` under a process group shards with FSDP2 (``fully_shard`` on every ViT
  ``Block``, then the root) instead of DDP: each rank holds 1/world of the parameters, gradients
  and AdamW state. Accumulation uses ``set_requires_gradient_sync``; clipping, the fused AdamW,
  autocast (with ``MixedPrecisionPolicy(param_dtype=<amp dtype>, reduce_dtype=float32)``),
  activation checkpointing, ``compile`` and ``after_step`` hooks work unchanged.
  Checkpoints are gathered to rank 0 in the single-process format (load, resume and export as
  before), and at the end ``fit`` hands back the plain module with the full trained weights on
  every rank. One process: ignored (noted in the start line).

The engine's parts, one job per module: ``train_config`` (settings and limits), ``samplers`` (data
order), ``optim`` (optimizer, schedule), ``fsdp``, ``device`` (device, precision, start line),
``train_state`` (checkpoint names, run settings, RNG state), ``trainer`` (the steps), and this
module's ``fit`` (the loop). The names other code imports from ``bench.core.engine`` stay here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from bench.core.device import autocast, pick_device
from bench.core.distributed import (
    barrier,
    check_same_settings,
    gather_objects,
    is_peer_failure,
    peer_failure,
    rank_world,
)
from bench.core.errors import BenchError
from bench.core.fsdp import FSDPSharding, local_state_bytes
from bench.core.optim import enable_grad_checkpointing, lr_at, make_optimizer, param_groups
from bench.core.samplers import (
    EpochBatchSampler,
    RunBatchSampler,
    SeededDataset,
    micro_batches_per_epoch,
    sample_seed,
)
from bench.core.train_config import FitResult, TrainConfig, check_config
from bench.core.train_state import (
    CHECKPOINT_NAME,
    CHECKSUMS,
    NOT_RECORDED,
    RUN_RECORD,
    checkpoint_paths,
    engine_workdir,
    model_signature,
    run_settings,
    unwrap,
)
from bench.core.trainer import LossFn, Trainer, worker_error

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKSUMS",
    "NOT_RECORDED",
    "RUN_RECORD",
    "EpochBatchSampler",
    "FSDPSharding",
    "FitResult",
    "LossFn",
    "RunBatchSampler",
    "SeededDataset",
    "TrainConfig",
    "Trainer",
    "autocast",
    "check_config",
    "checkpoint_paths",
    "enable_grad_checkpointing",
    "fit",
    "local_state_bytes",
    "lr_at",
    "make_optimizer",
    "micro_batches_per_epoch",
    "model_signature",
    "param_groups",
    "pick_device",
    "prepare_folder",
    "run_settings",
    "sample_seed",
    "unwrap",
    "worker_error",
]


def prepare_folder(cfg: TrainConfig, record: dict, n_samples: int, resume: bool, writes: tuple = ()) -> None:
    """Before anything is loaded or written: every rank started with the same settings; rank 0
    checks the folder (``WorkDir.guard``) and the dataset size, then, without ``resume``, moves the
    previous run aside (``WorkDir.start_fresh``). A refusal is raised on every rank alike.
    ``writes``: the caller's own files in the folder (e.g. ``pretrain.pth``)."""
    check_same_settings(record)
    rank, world = rank_world()
    wd, error = engine_workdir(cfg.out_dir, writes), None
    if rank == 0:
        try:
            wd.guard(record, resume=resume)
            micro_batches_per_epoch(n_samples, cfg.batch_size, world)
        except BenchError as e:
            error = e
    errors = gather_objects(None if error is None else (type(error), str(error)))
    if errors[0] is not None:
        if error is not None:
            raise error
        raise errors[0][0](errors[0][1])
    if rank == 0 and not resume:
        aside = wd.start_fresh()
        if aside is not None:
            print(f"[{cfg.desc}] --no-resume: the previous run's files moved to {aside}", flush=True)
    barrier()


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
    writes: tuple = (),
) -> FitResult:
    """Train ``model`` on ``dataset``. ``loss_fn(model, batch) -> (loss, {name: float or tensor})``.

    ``groups``: optimizer parameter groups (default: ``param_groups(model, cfg.weight_decay)``),
    each may carry ``lr_scale``. ``after_step(step, total_steps)`` runs after each optimizer step
    (e.g. MoCo's momentum update). ``extra_state``: objects with ``state_dict``/``load_state_dict``
    saved in the checkpoint (e.g. a tokenizer). With ``resume`` the newest checkpoint in
    ``cfg.out_dir`` is continued, and refused (one line) when the run there was started with other
    settings: ``settings`` (JSON values, e.g. ``{"method": "mae", "mask_ratio": 0.75}``) are recorded
    with the training config and the model's signature. Without ``resume`` the folder's previous
    checkpoints and records (and ``writes``) are moved aside. ``block_type``: the model's repeated
    block class (``backbones.vit.Block``), the unit of activation checkpointing and FSDP sharding.
    """
    check_config(cfg)
    record = run_settings(cfg, model, dataset, settings)
    try:
        prepare_folder(cfg, record, len(dataset), resume, writes)
        trainer = Trainer(model, dataset, cfg, groups=groups, block_type=block_type, extra_state=extra_state)
        if resume:
            trainer.resume(record)
        trainer.start(record)
        try:
            _loop(trainer, loss_fn, collate_fn, after_step)
        finally:
            trainer.close()
        return trainer.finish()
    except RuntimeError as e:
        if is_peer_failure(e):
            raise peer_failure(e) from None
        raise


def _loop(trainer: Trainer, loss_fn: LossFn, collate_fn, after_step) -> None:
    cfg = trainer.cfg
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
