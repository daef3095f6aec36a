"""mmengine's ``Runner`` as the dense tasks use it (``DenseRunner``), and its hooks.

* the model gets ``tasks.dense.memory_format.prepare_dense_model`` (conv layout, NCHW RoI inputs)
  right after it is built, before DDP wraps it;
* a resumed run moves the data stream by sampler indices (``tasks.dense.resume``);
* resume starts from the newest *readable* checkpoint (``tasks.dense.workdir.resume_candidates``): a
  truncated file, a refused pickle or a ``last_checkpoint`` naming nothing is skipped with a warning
  for the one before, like the shared engine's ``load_latest``;
* checkpoints are written to a temp file and renamed (a kill or a full disk leaves the previous
  ones intact), ``last_checkpoint`` holds a file name relative to the work dir, and a failed write is
  a one-line ``CheckpointError``;
* the terminal gets errors and the lines marked for it (``TERMINAL``); everything mmengine logs
  (environment, config, hooks, progress) goes to the log file in the work dir;
* several processes: the process group comes from ``bench.core.distributed.init_distributed``
  (torchrun or Slurm variables; NCCL with CUDA, gloo without), so mmengine does not create its own;
  each rank trains on ``local_device()`` (GPU ``LOCAL_RANK % visible GPUs``, as mmengine's own Slurm
  set-up: one GPU bound per task is GPU 0 of every task), and a non-finite loss on any rank stops
  all ranks at the same iteration (``all_ranks_finite``), so none waits for the others forever.
  Without CUDA mmengine's own set-up cannot run (its ``pytorch`` launcher calls
  ``torch.cuda.set_device``, its DDP wrapper passes ``device_ids=[LOCAL_RANK]``, ``SyncBN`` makes DDP
  refuse a CPU model); here the wrapper gets ``device_ids=None`` and SyncBN becomes
  ``bench.core.distributed``'s gloo SyncBatchNorm, so CPU runs (and the tests) take the GPU path.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from bench.core.device import start_line
from bench.core.distributed import (
    all_ranks_finite,
    check_same_settings,
    convert_sync_batchnorm,
    init_distributed,
    launch_world_size,
    local_device,
)
from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError, first_line
from bench.core.io import atomic_write_text
from tasks.dense import memory_format
from tasks.dense.mm_backbone import check_model
from tasks.dense.mmengine_compat import enable_mmengine_checkpoints
from tasks.dense.resume import skip_trained_batches_on_resume
from tasks.dense.runner import launch_rank
from tasks.dense.workdir import check_record, clean_temps, resume_candidates, start_fresh, write_record

TERMINAL = {"bench_terminal": True}  # logger.warning(msg, extra=TERMINAL): shown on the terminal too


class _TerminalFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or getattr(record, "bench_terminal", False)


class RunWatch(Hook):
    """Records the iteration training starts at (after a resume) and stops on a non-finite loss,
    before that iteration's checkpoint is written."""

    priority = "VERY_HIGH"

    def __init__(self):
        self.start_iter = None

    def before_train(self, runner):
        self.start_iter = int(runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        loss = (outputs or {}).get("loss")
        # one all-reduce under several processes: every rank takes the same branch, none waits
        if loss is not None and not all_ranks_finite(loss):
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in outputs.items())
            raise NonFiniteLossError(
                f"{runner.work_dir}: non-finite loss at iteration {runner.iter + 1} (this rank: {terms}); "
                f"the last checkpoint there is intact"
            )


@HOOKS.register_module()
class BenchCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` writing ``last_checkpoint`` as a file name relative to the work
    dir (atomically), so a copied work dir resumes from its own files."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        super()._save_checkpoint_with_step(runner, step, meta)
        from mmengine.dist import is_main_process

        if is_main_process():
            atomic_write_text(Path(runner.work_dir) / "last_checkpoint", Path(self.last_ckpt).name)


class DenseRunner(Runner):
    """mmengine's ``Runner`` for ``bench det`` / ``bench seg`` (see the module docstring)."""

    @classmethod
    def from_cfg(cls, cfg):
        """mmengine's ``from_cfg`` on a copy of ``cfg`` with sampler-index resume and our checkpoint hook."""
        cfg = copy.deepcopy(cfg)
        skip_trained_batches_on_resume(cfg)
        ck = (cfg.get("default_hooks") or {}).get("checkpoint")
        if ck is not None and ck.get("type", "CheckpointHook") == "CheckpointHook":
            ck["type"] = "BenchCheckpointHook"
        return super().from_cfg(cfg)

    def dump_config(self) -> None:
        """The config mmengine saves in the work dir, for mmseg's / mmdet's own tools (``tools/test.py``
        loads it with ``load_from``): the run's resume flag is this folder's business, not the recipe's."""
        from mmengine.dist import is_main_process

        if not is_main_process():
            return
        cfg = copy.deepcopy(self.cfg)
        cfg.resume, cfg.load_from = False, None
        cfg.dump(os.path.join(self.work_dir, os.path.basename(cfg.filename or f"{self.timestamp}.py")))

    # ---- logging ---------------------------------------------------------------------------------
    def build_logger(self, log_level="INFO", log_file=None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        for h in logger.handlers:
            if not isinstance(h, logging.FileHandler) and not any(isinstance(f, _TerminalFilter) for f in h.filters):
                h.addFilter(_TerminalFilter())
        return logger

    @property
    def log_file(self) -> str:
        return getattr(self.logger, "log_file", None) or os.path.join(self.log_dir, f"{self.timestamp}.log")

    def announce(self) -> None:
        """The run's one terminal line before training: where its log goes."""
        self.logger.info(f"{self.work_dir}: training, log in {self.log_file}", extra=TERMINAL)

    def log_warnings(self, caught) -> None:
        """Python warnings caught during the run, to the log file (once each)."""
        seen = set()
        for w in caught:
            text = f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
            if text not in seen:
                seen.add(text)
                self.logger.warning(text)

    # ---- distributed, model ----------------------------------------------------------------------
    def setup_env(self, env_cfg):
        if self.distributed:
            init_distributed(device=self.cfg.get("device", "auto"))  # selects local_device() with CUDA
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        import torch.distributed as dist

        if not self.distributed:
            return super().wrap_model(model_wrapper_cfg, model)
        gloo = dist.get_backend() == "gloo"
        if gloo:  # mmengine's SyncBN needs NCCL
            model = convert_sync_batchnorm(model)
        wrapper = dict(
            model_wrapper_cfg
            or dict(broadcast_buffers=False, find_unused_parameters=self.cfg.get("find_unused_parameters", False))
        )
        if wrapper.setdefault("type", "MMDistributedDataParallel") == "MMDistributedDataParallel":
            # mmengine's default is device_ids=[LOCAL_RANK]: an invalid ordinal where each task sees one GPU
            dev = local_device()
            wrapper.setdefault("device_ids", None if gloo or dev.type != "cuda" else [dev.index])
        return super().wrap_model(wrapper, model)

    def build_model(self, model):
        """mmengine's model in the run's memory format, with ``RegistryViT``'s strides and channels
        checked against the heads (``tasks.dense.mm_backbone.check_model``: one-line error)."""
        from mmengine.device import get_device

        model = super().build_model(model)
        check_model(model)
        layout = memory_format.resolve_channels_last(self.cfg.get("channels_last"), get_device())
        return memory_format.prepare_dense_model(model, layout)

    # ---- checkpoints -----------------------------------------------------------------------------
    def load_or_resume(self) -> None:
        """Auto-resume from the newest readable checkpoint of the work dir (mmengine's would take
        whatever ``last_checkpoint`` names, even a truncated file or one in another folder)."""
        if self._has_loaded or not (self._resume and self._load_from is None):
            return super().load_or_resume()
        from mmengine.runner.checkpoint import _load_checkpoint

        self._has_loaded = True  # searched once: a fresh run stays fresh when val()/test() come later
        for path in resume_candidates(self.work_dir):
            try:
                ckpt = _load_checkpoint(str(path), map_location="cpu", logger="current")
                if not (isinstance(ckpt, dict) and "state_dict" in ckpt and "iter" in ckpt.get("meta", {})):
                    raise CheckpointError("not an mmengine training checkpoint (no 'state_dict' / 'meta.iter')")
            except Exception as e:  # truncated zip, refused pickle, empty file, ...
                self.logger.warning(
                    f"{path}: unreadable checkpoint, falling back to the one before "
                    f"({first_line(e, with_type=True, limit=200)})",
                    extra=TERMINAL,
                )
                continue
            step, max_iters = int(ckpt["meta"]["iter"]), int((self.cfg.get("train_cfg") or {}).get("max_iters", 0))
            if max_iters and step > max_iters:  # a longer run's checkpoint never continues a shorter one
                raise CheckpointError(
                    f"{path}: checkpoint at iteration {step} of a longer run than this one ({max_iters} "
                    f"iterations); use --no-resume or another --out"
                )
            self._preloaded = (str(path), ckpt)
            self.logger.info(f"resuming from {path}")
            self.resume(str(path))
            return
        self.logger.info(f"{self.work_dir}: no checkpoint to resume from, training from the start")

    def load_checkpoint(self, filename, map_location="cpu", strict=False, revise_keys=[(r"^module.", "")]):  # noqa: B006 (mmengine's signature)
        pre = getattr(self, "_preloaded", None)
        if pre is None or pre[0] != str(filename):
            return super().load_checkpoint(filename, map_location=map_location, strict=strict, revise_keys=revise_keys)
        # the file load_or_resume has just read: not read (a checkpoint can be GBs) a second time
        from mmengine.model import is_model_wrapper
        from mmengine.runner.checkpoint import _load_checkpoint_to_model

        self._preloaded = None
        checkpoint = pre[1]
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        """mmengine's save into ``.<filename>.tmp``, fsync, rename: never half a checkpoint; a failed
        write (a full disk) is a CheckpointError naming the file, the earlier checkpoints intact."""
        from mmengine.dist import is_main_process

        if not is_main_process():
            return
        final = Path(out_dir) / filename
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            super().save_checkpoint(out_dir, tmp.name, *args, **kwargs)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"{final}: cannot write checkpoint ({first_line(e, with_type=True)}); "
                f"the earlier checkpoints in {out_dir} are intact"
            ) from None


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def prepare_work_dir(work: Path, record: dict, *, resume: bool, eval_only: bool) -> bool:
    """Before anything is built: the settings guard, then (rank 0) temp clean-up and, with
    ``resume=False``, the fresh start that moves the old checkpoints aside. An evaluate-only run
    reads no checkpoint of the folder and moves nothing. Returns whether ``work`` is new."""
    created = not work.exists()
    if eval_only:
        return created
    check_record(work, record, resume)
    if launch_rank() == 0 and not created:
        clean_temps(work)  # a save killed half-way
        if not resume:
            start_fresh(work)
    return created


# A saved config's custom_imports imports this module, so mmseg's / mmdet's own tools (tools/test.py:
# Runner.from_cfg + load_from) load our checkpoints under torch's weights_only loading too.
enable_mmengine_checkpoints()


def build_runner(cfg, work: Path, *, created: bool, main: bool) -> DenseRunner:
    """``DenseRunner.from_cfg``; a user error while building (e.g. a checkpoint of another
    architecture) removes a work dir this call created."""
    enable_mmengine_checkpoints()  # mmengine's own checkpoints under torch's weights_only loading
    try:
        return DenseRunner.from_cfg(cfg)
    except BenchError:
        if created and main:  # a user error: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise


def load_weights(runner: DenseRunner, weights: Path) -> None:
    """An evaluate-only run's trained model: every tensor of the model from ``weights`` (an mmengine
    checkpoint, ours or mmseg's / mmdet's released files); a file that does not fit is one line."""
    try:
        ckpt = runner.load_checkpoint(str(weights), strict=True)
    except Exception as e:  # missing / unexpected keys, shape clashes, a refused pickle
        raise CheckpointError(
            f"{weights}: cannot load as the trained model of this config ({first_line(e, with_type=True, limit=300)})"
        ) from None
    runner._has_loaded = True  # val()/test() must not load anything else
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    runner.weights_iter = int((meta or {}).get("iter", 0) or 0)  # the iteration the weights were saved at


def dense_start_line(name: str, runner, cfg) -> str:
    """The start line every training command prints: device, dtype, world size, backend."""
    wrapper = cfg.get("optim_wrapper", {})
    dtype = None
    if wrapper.get("type") == "AmpOptimWrapper":  # mmengine's default AMP dtype is fp16
        dtype = torch.bfloat16 if str(wrapper.get("dtype")) in ("bfloat16", "torch.bfloat16") else torch.float16
    device = next(runner.model.parameters()).device
    return start_line(name, device, dtype, launch_world_size())


def run_dense(
    cfg,
    *,
    name: str,
    record: dict,
    resume: bool,
    register: Callable[[], None],
    evaluate: Callable[[Any], dict],
    hooks=(),
    weights: Path | None = None,
) -> tuple[Any, dict, float]:
    """Build the runner of ``cfg`` (``name``: 'det' / 'seg'), train (resuming from the newest readable
    checkpoint with ``resume``; fresh with the old checkpoints moved aside without), then
    ``evaluate(runner)``. With ``weights`` (evaluate-only): nothing is trained, the model is that file.
    Returns ``(runner, metrics, wall seconds)``; ``runner.run_watch.start_iter`` is where training started.

    mmengine's output (environment, config, hooks, progress, Python warnings) goes to the log file in
    the work dir; the terminal gets the log file's name and errors."""
    work = Path(cfg.work_dir)
    created = prepare_work_dir(work, record, resume=resume, eval_only=weights is not None)
    cfg.resume, cfg.load_from = bool(resume) and weights is None, None
    cfg.experiment_name = f"{name}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"  # the logger's name
    main = launch_rank() == 0
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        runner = None
        try:
            register()  # mmseg / mmdet: their import-time warnings are caught too
            runner = build_runner(cfg, work, created=created, main=main)
            check_same_settings(record)  # ranks started with other options: one line on every rank
            if main:
                print(dense_start_line(name, runner, cfg), flush=True)
            runner.run_watch = RunWatch()
            runner.register_hook(runner.run_watch)
            for hook in hooks:
                runner.register_hook(hook)
            if weights is not None:
                load_weights(runner, weights)
            else:
                if main:
                    write_record(work, record)
                runner.announce()
                runner.train()
            metrics = evaluate(runner)
        finally:
            if runner is not None:
                runner.log_warnings(caught)
    return runner, metrics, time.time() - t0


__all__ = [
    "DenseRunner",
    "RunWatch",
    "BenchCheckpointHook",
    "TERMINAL",
    "launch_rank",
    "run_dense",
    "resume_candidates",
]
