"""The state of one ``fit`` run (``Trainer``): the wrapped model, optimizer, schedule and counters,
and the steps the loop in ``bench.core.engine.fit`` calls. Every method is called on every rank
(several contain collectives); only rank 0 writes files."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bench.core.checkpoint import load_checkpoint_file, save_atomic
from bench.core.device import amp_dtype, autocast, grad_scaler, start_line, training_device
from bench.core.distributed import all_reduce_sum, gather_objects, rank_world
from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError
from bench.core.fsdp import FSDPSharding
from bench.core.io import atomic_write_text
from bench.core.optim import enable_grad_checkpointing, lr_at, make_optimizer, param_groups
from bench.core.progress import progress_bar
from bench.core.samplers import RunBatchSampler, SeededDataset, micro_batches_per_epoch
from bench.core.train_config import FitResult, TrainConfig, check_total_steps
from bench.core.train_state import (
    CHECKPOINT_NAME,
    LOG,
    engine_workdir,
    rng_state,
    seed_rank,
    set_rng_state,
    unwrap,
)
from bench.core.workdir import check_checkpoint_settings

LossFn = Callable[[torch.nn.Module, object], tuple]


@dataclass
class _Window:
    """What the micro-batches of one optimizer step have produced so far (sums stay on the device:
    no host sync per micro-batch)."""

    bad: bool = False  # a non-finite loss on some rank: the step is skipped
    bad_logs: list = field(default_factory=list)
    loss: object = 0.0  # sums over the finite micro-batches
    n: int = 0
    terms: dict = field(default_factory=dict)
    last_logs: dict = field(default_factory=dict)  # the last micro-batch's terms as loss_fn returned them


def load_training_checkpoint(path) -> dict:
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (no 'step'/'model')")
    return state


def cap_workers(n: int, rank: int = 0) -> int:
    """``--workers`` at most the cores of this machine (more only fork idle processes); a note says so."""
    cores = os.cpu_count() or 1
    if n > cores:
        if rank == 0:
            print(f"note: --workers {n} capped at the {cores} cores of this machine", file=sys.stderr, flush=True)
        return cores
    return n


class Trainer:
    """See the module docstring."""

    def __init__(self, model, dataset: Dataset, cfg: TrainConfig, *, groups=None, block_type=None, extra_state=None):
        self.cfg, self.dataset, self.extra_state = cfg, dataset, extra_state or {}
        self.workdir = engine_workdir(cfg.out_dir)
        self.out = self.workdir.path
        self.rank, self.world = rank_world()
        self.ddp = self.world > 1  # several processes (DDP or FSDP): rank agreement, global logs, per-rank RNG
        self.device = training_device(cfg.device)
        self.dtype = amp_dtype(self.device, cfg.amp_on, cfg.amp_dtype)
        self.workers = cap_workers(cfg.num_workers, self.rank)
        seed_rank(cfg.seed, self.rank)
        model.to(self.device)
        if cfg.grad_checkpointing:
            if block_type is None:
                raise BenchError("grad_checkpointing needs the model's block type (fit(..., block_type=))")
            enable_grad_checkpointing(unwrap(model), block_type)
        if cfg.compile:  # the forward only: parameter names (and so checkpoints) stay those of the eager model
            core = unwrap(model)
            core.forward = torch.compile(core.forward, backend=cfg.compile)
        self.model, self.sharding, self.wrapper, groups = self._wrap(model, groups, block_type)
        self.scaler = grad_scaler(self.device, self.dtype, sharded=self.sharding is not None)
        if groups is None:
            groups = param_groups(unwrap(self.model), cfg.weight_decay)
        for g in groups:
            g.setdefault("lr_scale", 1.0)
        self._schedule(groups)
        self.step, self.micro, self.nonfinite, self.history = 0, 0, 0, []
        self.resumed_from = None
        self.window, self.last_loss, self.seen = _Window(), float("nan"), 0
        self.log = self.bar = None

    def _schedule(self, groups):
        cfg = self.cfg
        self.global_batch = cfg.batch_size * cfg.accum_iter * self.world
        self.lr = cfg.lr if cfg.lr is not None else cfg.blr * self.global_batch / 256
        self.opt = make_optimizer(groups, cfg, self.lr)
        if self.sharding is not None:  # optimizer parameter ids -> names, for the unsharded checkpoint format
            names = {p: n for n, p in self.model.named_parameters()}
            self.order = [names[p] for g in self.opt.param_groups for p in g["params"]]
        self.bpe = micro_batches_per_epoch(len(self.dataset), cfg.batch_size, self.world)
        self.steps_per_epoch = max(1, self.bpe // cfg.accum_iter)
        self.total = cfg.steps or check_total_steps(max(1, int(round(cfg.epochs * self.steps_per_epoch))), cfg)
        self.warmup = (
            cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * self.steps_per_epoch))
        )

    def _wrap(self, model, groups, block_type):
        """(model, FSDP sharding or None, start-line note, groups) for this world size."""
        if self.ddp and self.cfg.fsdp:
            names = {p: n for n, p in model.named_parameters()}
            sharding = FSDPSharding(model, block_type, amp_dtype=self.dtype)  # in place: parameters become shards
            if groups is not None:  # the caller's groups hold the replaced parameters: map them by name
                new = dict(model.named_parameters())
                groups = [{**g, "params": [new[names[p]] for p in g["params"]]} for g in groups]
            return model, sharding, f"; FSDP2 ({sharding.n_blocks} blocks sharded)", groups
        if self.ddp:  # broadcasts rank 0's parameters and buffers; averages gradients over ranks
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids), None, "; DDP", groups
        return model, None, "; --fsdp ignored: single process" if self.cfg.fsdp else "", groups

    # -- resume --------------------------------------------------------------------------------
    def resume(self, record: dict):
        """Continue from the newest readable checkpoint in the output folder, if any: weights,
        optimizer, counters, every rank's RNG state, ``extra_state`` and the logged history. A
        checkpoint of a longer run, or one recorded with other settings, is refused."""
        found = self.workdir.newest_readable(load_training_checkpoint, max_step=self.total)
        if found is None:
            return
        path, state = found
        check_checkpoint_settings(path, state.get("settings"), record)
        if self.sharding is not None:
            self.sharding.load(state["model"], self.opt, state["optimizer"], self.order)
        else:
            unwrap(self.model).load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro, self.nonfinite = state["step"], state["micro"], state.get("nonfinite", 0)
        rngs = state.get("rng_ranks") or [state["rng"]]
        if len(rngs) != self.world and self.rank == 0:
            warnings.warn(
                f"resuming a {len(rngs)}-process run with {self.world} processes: data order is "
                f"unchanged, random streams inside the model (e.g. masks) differ"
            )
        if self.rank < len(rngs):  # another world size: data order is still exact (by position), model RNG is not
            set_rng_state(rngs[self.rank], self.device)
        for k, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][k])
        self.history = [h for h in state.get("history", []) if h["step"] <= self.step]
        self.resumed_from = path

    # -- start ---------------------------------------------------------------------------------
    def start(self, record: dict):
        """Rank 0: the run record, ``log.jsonl`` rewritten to the history we continue from, the start
        lines. Every rank: the progress bar (shown on rank 0) and train mode."""
        cfg = self.cfg
        self.record = record
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self.workdir.clean_temps()  # temp files of this folder's own files, left by a killed run
            self.workdir.write_settings(record)
            print(start_line(cfg.desc, self.device, self.dtype, self.world), flush=True)
            print(
                f"[{cfg.desc}] world {self.world} x batch {cfg.batch_size} x accum {cfg.accum_iter} = global batch "
                f"{self.global_batch}; lr {self.lr:.3g} (blr {cfg.blr:g} x {self.global_batch}/256)"
                f"{' [given]' if cfg.lr is not None else ''}; {self.total} steps, {self.steps_per_epoch} per epoch, "
                f"warmup {self.warmup}{self.wrapper}"
                + (f"; resumed at step {self.step} from {self.resumed_from.name}" if self.resumed_from else ""),
                flush=True,
            )
            self._write(lambda: atomic_write_text(self.out / LOG, "".join(json.dumps(h) + "\n" for h in self.history)))
            self.log = open(self.out / LOG, "a")
        self.bar = progress_bar(
            total=self.total, initial=self.step, desc=cfg.desc, enabled=cfg.progress and self.rank == 0
        )
        self.model.train()
        self.t0 = time.perf_counter()

    def _write(self, fn):
        """Run a write of ``log.jsonl``; a full disk (any OSError) is one line, the checkpoints kept."""
        try:
            fn()
        except OSError as e:
            raise BenchError(
                f"{self.out / LOG}: cannot write ({e.strerror or e}); the checkpoints in {self.out} are intact "
                f"and the same command resumes once there is room"
            ) from None

    def batches(self, collate_fn=None):
        """Every remaining micro-batch of the run, on the device (a skipped step still counts). One
        DataLoader serves them all, so its workers start once."""
        cfg = self.cfg
        count = self.total * cfg.accum_iter - self.micro
        sampler = RunBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, self.micro, count, self.rank, self.world)
        loader = DataLoader(
            SeededDataset(self.dataset),
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
            # its own generator: creating a loader must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        if self.step >= self.total:
            return
        if isinstance(self.dataset, TensorDataset) and collate_fn is None:
            yield from self._tensor_batches(sampler)
            return
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except BenchError as e:  # raised in a worker: DataLoader puts its traceback in the message
                raise worker_error(e) from None
            yield to_device(batch, self.device)

    def _tensor_batches(self, sampler):
        """Micro-batches of a ``TensorDataset`` (e.g. cached features): nothing in it is random per
        sample, so each batch indexes the tensors at once, in the sampler's order (resume stays exact),
        instead of per-sample seeding and collation."""
        tensors = self.dataset.tensors
        for keys in sampler:
            index = torch.tensor([i for i, _ in keys], dtype=torch.long)
            yield to_device(tuple(t[index] for t in tensors), self.device)

    # -- step ----------------------------------------------------------------------------------
    def forward_backward(self, loss_fn: LossFn, batch):
        """One micro-batch: forward, and backward unless the loss is non-finite on some rank (one
        host sync: that decision). Gradients are all-reduced (DDP) / reduce-scattered (FSDP) only in
        the step's last backward."""
        cfg, w = self.cfg, self.window
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.total, self.warmup, self.lr, cfg.min_lr) * g["lr_scale"]
        last_micro = (self.micro + 1) % cfg.accum_iter == 0
        if self.sharding is not None:
            self.model.set_requires_gradient_sync(last_micro)
        no_sync = self.ddp and self.sharding is None and not last_micro
        with self.model.no_sync() if no_sync else _null():
            with autocast(self.device, self.dtype):
                loss, logs = loss_fn(self.model, batch)
            w.last_logs = logs
            bad_ranks = self._bad_ranks(loss)
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
                scaled = loss / cfg.accum_iter
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                w.loss = w.loss + loss.detach().double()
                w.n += 1
                for k, v in logs.items():
                    v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                    w.terms[k] = w.terms.get(k, 0.0) + v
        self.micro += 1
        self.seen += batch_len(batch) * self.world

    def _bad_ranks(self, loss) -> list[int]:
        """The ranks whose loss is not finite, agreed by all (a rank that skipped backward alone
        would hang the others)."""
        bad = (~torch.isfinite(loss.detach())).any().to(torch.int64)
        if not self.ddp:
            return [0] if bool(bad) else []
        flags = torch.zeros(self.world, dtype=torch.int64, device=loss.device)
        flags[self.rank] = bad
        return [r for r, f in enumerate(all_reduce_sum(flags).tolist()) if f]

    def optimizer_step(self):
        """End of an accumulation window: the optimizer step (clipped), or a skipped step after a
        non-finite loss; past ``max_nonfinite`` skips the state is saved and the run stops."""
        cfg, w = self.cfg, self.window
        if not w.n:
            self.terms = {k: float(v) for k, v in w.last_logs.items()}
        else:  # the step's mean loss and terms over all its micro-batches on all ranks: one sync
            keys = sorted(w.terms)
            sums = torch.stack(
                [
                    torch.as_tensor(v, dtype=torch.float64).to(self.device)
                    for v in (w.loss, w.n, *(w.terms[k] for k in keys))
                ]
            )
            sums = (all_reduce_sum(sums) if self.ddp else sums).tolist()
            self.last_loss = sums[0] / sums[1]
            self.terms = {k: v / sums[1] for k, v in zip(keys, sums[2:])}
        if w.bad:
            self._skip_step()
        else:
            if self.scaler is not None:
                self.scaler.unscale_(self.opt)
            if cfg.clip_grad:  # FSDP: DTensor gradients, the norm is over the whole model (tested)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            if self.scaler is not None:  # skips the step itself when fp16 gradients overflowed
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.window = _Window()
        self.step += 1

    def _skip_step(self):
        cfg, w = self.cfg, self.window
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
                f"step {self.step}: non-finite loss {w.bad_logs[-1]}, step skipped ({self.nonfinite}/{cfg.max_nonfinite})"
            )

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

            def append():
                self.log.write(json.dumps(rec) + "\n")
                self.log.flush()

            self._write(append)
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
        """``checkpoint-<step>.pth`` (atomic, its sha256 in the manifest), then all but the newest
        ``keep_last`` listed ones pruned. Collective: every rank calls it, rank 0 writes."""
        rngs = gather_objects(rng_state(self.device)) if self.ddp else None
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
            "rng": rngs[0] if self.ddp else rng_state(self.device),
            "config": self.cfg.to_json(),
            "settings": self.record,
            "history": self.history,
            **({"rng_ranks": rngs} if self.ddp else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            "arch": getattr(unwrap(self.model), "arch", None),
            "extra": {k: obj.state_dict() for k, obj in self.extra_state.items()},
        }
        save_atomic(ckpt, self.out / CHECKPOINT_NAME.format(self.step), checksums=self.workdir.manifest_path)
        self.workdir.prune(self.cfg.keep_last)

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


def worker_error(e: BenchError) -> BenchError:
    """``e`` with its original one-line message when a DataLoader re-raised it from a worker
    (``'Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\n<type>: <message>'``)."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        prefix, sep, message = lines[-1].partition(": ")
        return type(e)(message if sep and prefix.split(".")[-1] == type(e).__name__ else lines[-1])
    return e


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_len(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_len(next(iter(batch.values())))
    return 0


def _null():
    return contextlib.nullcontext()
