"""The convergence curve of a classification run: every ``eval_every`` epochs (and after the last step)
the model is evaluated on the reported split and one JSON line is appended to ``<out>/curve.jsonl``:

    {"epoch": 10.0, "step": 40, "train_loss": 0.61, "eval_top1": 83.5, "eval_top5": 98.9}

``train_loss`` is the mean training loss of this process's micro-batches since the previous line.
The evaluation runs under saved and restored RNG states (torch, numpy, random), so a run with a curve
trains exactly as one without (same checkpoints, same final top-1). ``read_curve`` reads the file back,
one entry per step (the last written wins: a resumed run rewrites the steps after its checkpoint).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from bench.core.distributed import rank_world
from tasks.classification import protocols as P

CURVE = "curve.jsonl"


class CurveWriter:
    def __init__(self, out: Path, model, val_set, every: int, cfg: dict, amp: bool):
        self.path, self.model, self.val_set, self.every = Path(out) / CURVE, model, val_set, every
        self.batch, self.amp, self.losses = cfg["eval_batch_size"], amp, []
        self.rank = rank_world()[0]  # a fresh run (--no-resume): the engine moves the old curve aside

    def wrap(self, loss_fn):
        """``loss_fn`` that also remembers each micro-batch's loss."""

        def recorded(model, batch):
            loss, logs = loss_fn(model, batch)
            self.losses.append(float(loss.detach()))
            return loss, logs

        return recorded

    def after_step(self, n: int, tc, world: int):
        """The engine's ``after_step(step, total)``: a curve point at every ``every``-th epoch end."""
        steps_per_epoch = max(1, (n // (tc.batch_size * world)) // tc.accum_iter)

        def point(step: int, total: int) -> None:
            if step % (steps_per_epoch * self.every) and step != total:
                return
            metrics = self.measure()
            entry = {
                "epoch": step / steps_per_epoch,
                "step": step,
                "train_loss": float(np.mean(self.losses)) if self.losses else None,
                "eval_top1": metrics["top1"],
                "eval_top5": metrics["top5"],
            }
            self.losses = []
            if self.rank == 0:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")

        return point

    def measure(self) -> dict:
        """Top-1 / top-5 now, leaving the training RNG streams and train/eval modes as they were."""
        modes = {m: m.training for m in self.model.modules()}
        py_state, np_state = random.getstate(), np.random.get_state()
        device = next(self.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                return P.evaluate(self.model, self.val_set, self.batch, bf16=self.amp)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
                for m, training in modes.items():
                    m.train(training)


def read_curve(path: str | Path) -> list[dict]:
    """The entries of a ``curve.jsonl`` (or of the run folder holding one), one per step, by step."""
    path = Path(path)
    if path.is_dir():
        path = path / CURVE
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return [by_step[s] for s in sorted(by_step)]
