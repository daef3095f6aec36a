"""Resume a dense-task run without loading the batches it already trained on.

mmengine's ``IterBasedTrainLoop`` resumes at iteration K by calling ``next()`` K times on the
training DataLoader ("Advance dataloader K steps"): every skipped batch is read, decoded and
augmented, then thrown away. At paper scale that is the whole run so far: resuming Mask R-CNN at
iteration 80k of 90k (64 images each) loads 5 M images, hours of loader time, before training
continues. Which batch comes next is decided by the samplers alone, which need no image, so here the
index stream is advanced instead:

* ``ResumableBatchSampler`` wraps the configured batch sampler (torch's ``BatchSampler`` when there
  is none) over an endless sampler (mmengine's ``InfiniteSampler``, which all dense configs train
  with) and keeps one iterator of it for the whole run, so its stream position is the number of
  batches drawn so far. ``seek(k)`` makes the next pass start at batch ``k``: later batches are drawn
  (indices only), earlier ones come from a short record of the last drawn batches (the DataLoader
  has already prefetched a few when the loop is built, before the checkpoint is loaded).
* ``SkipTrainedBatches`` (a hook, ``before_train``: after the checkpoint is loaded, before the
  loop's advance) seeks to the resumed iteration, restarts the DataLoader iterator (persistent
  workers drop what they had prefetched) and hands the loop an iterator whose first K ``next()``
  calls return without loading anything.

After a resume each iteration gets the same image indices (on every rank) as in the uninterrupted
run; only the random augmentation draws differ (mmengine's replay reproduced those too, by doing
all the work again). ``skip_trained_batches_on_resume(cfg)`` wires both into a config; ``DenseRunner``
calls it for every ``bench seg`` / ``bench det`` run whose training sampler is endless.
"""

from __future__ import annotations

import collections
import logging

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, HOOKS
from torch.utils.data import BatchSampler

RECORDED_BATCHES = 256  # >= the batches a DataLoader prefetches (prefetch_factor x num_workers: 2 x 8 here)


@DATA_SAMPLERS.register_module()
class ResumableBatchSampler:
    """The configured batch sampler, as one endless stream that can be positioned (see module)."""

    def __init__(self, sampler, batch_size: int, batch_sampler: dict | None = None):
        if batch_sampler is None:
            self.inner = BatchSampler(sampler, batch_size, drop_last=False)
        else:
            self.inner = DATA_SAMPLERS.build(batch_sampler, default_args=dict(sampler=sampler, batch_size=batch_size))
        self.sampler, self.batch_size = sampler, batch_size  # what hooks (DistSamplerSeedHook) look for
        self._stream = None
        self.position = 0  # batches drawn from the inner batch sampler so far
        self._recent = collections.deque(maxlen=RECORDED_BATCHES)
        self._start = None  # set by seek(): where the next pass begins

    def seek(self, k: int) -> None:
        if k < self.position - len(self._recent):
            raise RuntimeError(
                f"cannot go back to batch {k}: drawn {self.position}, only the last {len(self._recent)} are recorded"
            )
        self._start = k

    def _draw(self):
        if self._stream is None:
            self._stream = iter(self.inner)
        try:
            batch = next(self._stream)
        except StopIteration:
            raise RuntimeError(
                "ResumableBatchSampler needs an endless sampler (InfiniteSampler); this one ran out"
            ) from None
        self.position += 1
        self._recent.append(batch)
        return batch

    def __iter__(self):
        start, self._start = self._start, None
        if start is not None:
            first_recorded = self.position - len(self._recent)
            yield from list(self._recent)[max(start - first_recorded, 0) :]
            while self.position < start:
                self._draw()
        while True:
            yield self._draw()

    def __len__(self) -> int:
        return len(self.inner)


class _SkipFirst:
    """An iterator whose first ``n`` ``next()`` calls return None, then those of ``inner``."""

    def __init__(self, inner, n: int):
        self.inner, self.n = inner, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n > 0:
            self.n -= 1
            return None
        return next(self.inner)


@HOOKS.register_module()
class SkipTrainedBatches(Hook):
    """Before training continues at iteration K > 0: the data stream moves to batch K by indices
    alone, and the loop's K-step advance loads nothing (see module)."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        batch_sampler = getattr(loop.dataloader, "batch_sampler", None)
        if loop.iter == 0 or not isinstance(batch_sampler, ResumableBatchSampler):
            return
        batch_sampler.seek(loop.iter)
        loop.dataloader_iterator = _SkipFirst(iter(loop.dataloader), loop.iter)
        print_log(
            f"resumed at iteration {loop.iter}: the data stream continues at batch {loop.iter} "
            f"(sampler indices only; the {loop.iter} batches before it are not loaded again)",
            logger="current",
            level=logging.INFO,
        )


def skip_trained_batches_on_resume(cfg) -> bool:
    """Wrap ``cfg.train_dataloader``'s batch sampler in ``ResumableBatchSampler`` and add the
    ``SkipTrainedBatches`` hook, in place, when its sampler is mmengine's ``InfiniteSampler`` (the
    only kind whose stream does not restart at epoch ends). Returns whether it did."""
    loader = cfg.get("train_dataloader")
    if not loader or (loader.get("sampler") or {}).get("type") != "InfiniteSampler":
        return False
    if (loader.get("batch_sampler") or {}).get("type") == "ResumableBatchSampler":
        return True
    loader["batch_sampler"] = dict(type="ResumableBatchSampler", batch_sampler=loader.get("batch_sampler"))
    loader.pop("drop_last", None)  # an endless stream has no last batch; DataLoader refuses it beside a batch sampler
    cfg["custom_hooks"] = list(cfg.get("custom_hooks") or []) + [dict(type="SkipTrainedBatches")]
    return True
