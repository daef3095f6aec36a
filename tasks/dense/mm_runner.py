"""mmengine's ``Runner`` as the dense tasks use it (``DenseRunner``), and its hooks.

* the model gets ``tasks.dense.memory_format.prepare_dense_model`` (conv layout, NCHW RoI inputs)
  right after it is built, before DDP wraps it;
* a resumed run moves the data stream by sampler indices (``tasks.dense.resume``);
* resume starts from the newest *readable* checkpoint (``tasks.dense.runner.resume_candidates``): a
  truncated file, a refused pickle or a ``last_checkpoint`` naming nothing is skipped with a warning
  for the one before, like the shared engine's ``load_latest``;
* checkpoints are written to a temp file and renamed (a kill or a full disk leaves the previous
  ones intact), ``last_checkpoint`` holds a file name relative to the work dir, and a failed write is
  a one-line ``CheckpointError``;
* the terminal gets errors and the lines marked for it (``TERMINAL``); everything mmengine logs
  (environment, config, hooks, progress) goes to the log file in the work dir;
* several processes: the process group comes from ``bench.core.distributed.init_distributed``
  (torchrun or Slurm variables; NCCL with CUDA, gloo without), so mmengine does not create its own.
  Without CUDA mmengine's own set-up cannot run (its ``pytorch`` launcher calls
  ``torch.cuda.set_device``, its DDP wrapper passes ``device_ids=[LOCAL_RANK]``, ``SyncBN`` makes DDP
  refuse a CPU model); here the wrapper gets ``device_ids=None`` and SyncBN becomes
  ``bench.core.distributed``'s gloo SyncBatchNorm, so CPU runs (and the tests) take the GPU path.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError, first_line
from tasks.dense import memory_format
from tasks.dense.mmengine_compat import enable_mmengine_checkpoints

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
        if loss is not None and not math.isfinite(float(loss)):
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in outputs.items())
            raise NonFiniteLossError(
                f"{runner.work_dir}: non-finite loss at iteration {runner.iter + 1} ({terms}); "
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
            from bench.core.io import atomic_write_text

            atomic_write_text(Path(runner.work_dir) / "last_checkpoint", Path(self.last_ckpt).name)


class DenseRunner(Runner):
    """mmengine's ``Runner`` for ``bench det`` / ``bench seg`` (see the module docstring)."""

    @classmethod
    def from_cfg(cls, cfg):
        """mmengine's ``from_cfg`` on a copy of ``cfg`` with sampler-index resume and our checkpoint hook."""
        from tasks.dense.resume import skip_trained_batches_on_resume

        cfg = copy.deepcopy(cfg)
        skip_trained_batches_on_resume(cfg)
        ck = (cfg.get("default_hooks") or {}).get("checkpoint")
        if ck is not None and ck.get("type", "CheckpointHook") == "CheckpointHook":
            ck["type"] = "BenchCheckpointHook"
        return super().from_cfg(cfg)

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
            from bench.core.distributed import init_distributed

            init_distributed()
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        import torch.distributed as dist

        if self.distributed and dist.get_backend() == "gloo":
            from bench.core.distributed import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
            if model_wrapper_cfg is None:
                model_wrapper_cfg = dict(
                    type="MMDistributedDataParallel",
                    device_ids=None,
                    broadcast_buffers=False,
                    find_unused_parameters=self.cfg.get("find_unused_parameters", False),
                )
        return super().wrap_model(model_wrapper_cfg, model)

    def build_model(self, model):
        """mmengine's model in the run's memory format, with ``RegistryViT``'s strides and channels
        checked against the heads (``tasks.dense.mm_backbone.check_model``: one-line error)."""
        import sys

        from mmengine.device import get_device

        model = super().build_model(model)
        plugin = sys.modules.get("tasks.dense.mm_backbone")  # a RegistryViT exists only once it is imported
        if plugin is not None:
            plugin.check_model(model)
        layout = memory_format.resolve_channels_last(self.cfg.get("channels_last"), get_device())
        return memory_format.prepare_dense_model(model, layout)

    # ---- checkpoints -----------------------------------------------------------------------------
    def load_or_resume(self) -> None:
        """Auto-resume from the newest readable checkpoint of the work dir (mmengine's would take
        whatever ``last_checkpoint`` names, even a truncated file or one in another folder)."""
        if self._has_loaded or not (self._resume and self._load_from is None):
            return super().load_or_resume()
        from mmengine.runner.checkpoint import _load_checkpoint

        from tasks.dense.runner import resume_candidates

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


__all__ = ["DenseRunner", "RunWatch", "BenchCheckpointHook", "TERMINAL", "enable_mmengine_checkpoints", "BenchError"]
