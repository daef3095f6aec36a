"""Process groups and cross-rank reductions for the shared engine (``bench pretrain``, ``bench cls``).

Launch with the standard launchers, never a home-made one:

* ``torchrun --nproc_per_node N -m bench.cli pretrain ...`` (or ``--nnodes M --node_rank R
  --rdzv-endpoint HOST:PORT`` across machines): torchrun sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
* Slurm: ``srun --ntasks-per-node G ... bench pretrain ...`` (one task per GPU): the rank, world
  size and local rank come from ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the master
  address from the first host of ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``, as mmengine
  does);
* submitit: ``submitit.helpers.TorchDistributedEnvironment().export()`` in the job function sets
  the torchrun variables, then this module picks them up.

``init_distributed()`` is a no-op for a single process, so the same entry points run unchanged.
Each process trains on ``local_device()``: GPU ``LOCAL_RANK % visible GPUs`` (Slurm may bind one GPU
per task, so every task sees its GPU as ``cuda:0``), with NCCL; ``--device cpu`` gives gloo.

Every collective has a bounded timeout: ``BENCH_DIST_TIMEOUT_S`` seconds (default 300), so a peer
that died or hangs ends the run on every surviving rank with one line (``peer_failure``) instead of
a wait of half an hour. Ranks started with other settings are refused at start
(``check_same_settings``), and a non-finite loss is agreed over ranks before any rank raises
(``all_ranks_finite``).
Metric helpers (``all_reduce_sum``, ``gather_objects``, ``shard_indices``, ``topk_counts``,
``gather_accuracy``) work with or without a process group: without one they return the local
values, so one code path gives the single-process numbers. So do the pieces that make a DDP run
equal one process with the global batch: ``all_gather_nograd`` (MoCo v3's keys of every rank) and
``convert_sync_batchnorm`` (BatchNorm statistics over the global batch, on CPU/gloo too).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from bench.core.errors import BenchError, first_line

DEFAULT_PORT = 29500
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "BENCH_DIST_TIMEOUT_S", 300.0
BACKEND_ENV = "BENCH_DIST_BACKEND"  # overrides the backend (gloo: several ranks on one GPU, which NCCL refuses)


def launch_env(environ=None) -> dict | None:
    """``{rank, world_size, local_rank, master_addr, master_port, source}`` from a torchrun or
    Slurm environment, or None outside one. torchrun wins over Slurm (torchrun inside an sbatch
    job sets its own variables)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return dict(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env:
        # tasks of this job step (srun); SLURM_NTASKS alone also counts an sbatch allocation that
        # runs the command once, without srun, which would wait forever for absent ranks
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1)))
        addr = env.get("MASTER_ADDR")
        if addr is None and world > 1:
            nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
            addr = _first_host(nodes)
        return dict(
            rank=int(env["SLURM_PROCID"]),
            world_size=world,
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=addr or "127.0.0.1",
            master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
            source="slurm",
        )
    return None


def _first_host(nodelist: str) -> str:
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        if "[" not in nodelist:  # a single plain host name, or "a,b"
            return nodelist.split(",")[0]
        raise RuntimeError(
            f"cannot resolve the master host of Slurm node list {nodelist!r}: "
            f"`scontrol` is not available; set MASTER_ADDR"
        ) from None


def launch_world_size(environ=None) -> int:
    """Processes of this launch (torchrun or Slurm), 1 outside one; needs no process group yet."""
    env = launch_env(environ)
    return 1 if env is None else int(env["world_size"])


def collective_timeout_s(environ=None) -> float:
    """Seconds any collective may wait for the other ranks: ``$BENCH_DIST_TIMEOUT_S`` or 300."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV, "")
    if not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BenchError(f"{TIMEOUT_ENV}={raw!r}: must be a positive number of seconds")
    return value


def local_device(local_rank: int | None = None) -> torch.device:
    """This process's training device: ``cuda:(local_rank % visible GPUs)`` with CUDA (``local_rank``
    defaults to ``LOCAL_RANK``), else the CPU. The modulo makes one-GPU-per-task Slurm bindings
    (each task sees one GPU) and torchrun (each sees all) both correct."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return torch.device("cpu")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def backend_for(device: torch.device, environ=None) -> str:
    """The process-group backend for tensors on ``device``: ``$BENCH_DIST_BACKEND`` when set (nccl
    or gloo), else NCCL for CUDA and gloo otherwise."""
    env = os.environ if environ is None else environ
    chosen = env.get(BACKEND_ENV, "").strip()
    if chosen:
        if chosen not in ("nccl", "gloo"):
            raise BenchError(f"{BACKEND_ENV}={chosen!r}: use nccl or gloo")
        if chosen == "nccl" and torch.device(device).type != "cuda":
            raise BenchError(f"{BACKEND_ENV}=nccl: NCCL needs CUDA devices, this run trains on {device}")
        return chosen
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def check_device_request(name: str, world: int) -> None:
    """Refuse a ``--device`` that contradicts the launch, in one line: an explicit GPU index under a
    launcher with several processes would put every rank on that one GPU."""
    name = str(name).strip()
    if world > 1 and name.startswith("cuda:"):
        raise BenchError(
            f"--device {name}: under a launcher with {world} processes every rank would use that one GPU; "
            f"use --device cuda (or auto): each rank takes GPU LOCAL_RANK % visible GPUs"
        )


def requested_device(name: str = "auto") -> torch.device:
    """The device a ``--device`` value asks for under this launch (before any check of the index)."""
    if name in ("auto", "cuda", None):
        dev = local_device()
        return dev if name != "cuda" or dev.type == "cuda" else torch.device("cuda", 0)
    return torch.device(name)


def init_distributed(
    backend: str | None = None, timeout_s: float | None = None, device: str = "auto"
) -> tuple[int, int, int]:
    """Initialise the default process group when launched by torchrun / Slurm with more than one
    process: the backend follows ``device`` (``--device``; ``cpu`` gives gloo, CUDA NCCL), and the
    GPU ``local_device()`` is selected. ``timeout_s``: bound of every collective (default
    ``collective_timeout_s()``). Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` and
    nothing done for a single process. Idempotent; the group is destroyed at interpreter exit."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    env = launch_env()
    if env is None or env["world_size"] <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise RuntimeError("launched with several processes but this torch build has no torch.distributed")
    check_device_request(device, env["world_size"])
    # env:// reads these; torchrun has set them already, Slurm has not
    os.environ.update(
        RANK=str(env["rank"]),
        WORLD_SIZE=str(env["world_size"]),
        LOCAL_RANK=str(env["local_rank"]),
        MASTER_ADDR=str(env["master_addr"]),
        MASTER_PORT=str(env["master_port"]),
    )
    dev = requested_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local_device(env["local_rank"]))
    dist.init_process_group(
        backend or backend_for(dev),
        init_method="env://",
        rank=env["rank"],
        world_size=env["world_size"],
        timeout=datetime.timedelta(seconds=timeout_s if timeout_s is not None else collective_timeout_s()),
    )
    atexit.register(_destroy)
    return env["rank"], env["world_size"], env["local_rank"]


def _destroy():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_process_group() -> bool:
    """Every rank waits until all have finished their collectives (while it waits, with the GIL
    released, gloo's threads can drop the finished work objects), then the process groups are
    destroyed on all ranks. Returns whether a process group existed. For callers that must return
    afterwards (a submitit job function); commands end with ``exit_distributed``, which also avoids
    the exit race described there."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
    return True


def exit_distributed(code: int = 0) -> int:
    """End of a successful command. One process without a process group: returns ``code``. Under
    torchrun / srun (also with one process, e.g. mmengine's group in ``bench det``): leaves the
    process group together with the other ranks, runs the ``atexit`` handlers, flushes, and ends the
    process with ``os._exit(code)``, i.e. *without* interpreter finalization.

    Why: since torch's PyObject rework (2.10+), a C++ thread that drops the last C++ reference to a
    tensor that has a Python object must take the GIL. gloo's worker threads do exactly that when
    they destroy a finished collective's work object, a moment *after* the caller's ``wait()`` has
    returned. If that moment falls into ``Py_FinalizeEx``, CPython makes the thread ``pthread_exit``;
    the forced unwind meets a ``noexcept`` frame and the whole rank dies with SIGABRT ("terminate
    called without an active exception") after its work is done, so torchrun reports a failed
    launch. The stack of such a rank:
    ``ProcessGroupGloo::runLoop -> ~AsyncAllgatherWork -> TensorImpl::decref_pyobject ->
    gil_scoped_acquire -> take_gil -> PyThread_exit_thread -> std::terminate`` while the main thread
    was in ``Py_FinalizeEx -> PyGC_Collect``. ``destroy_process_group`` does not stop those threads
    (gloo's ``shutdown`` is a no-op; the threads are joined only when the last reference to the
    group dies, which DDP modules and device meshes keep until finalization), and a barrier only
    narrows the window, so the process skips finalization. Failed commands keep the normal exit
    (their exit code is non-zero anyway)."""
    if not leave_process_group():
        return code
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing children, tqdm, ours: all still run
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written anyway
            pass
    os._exit(code)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files, logs and results rows."""
    return rank_world()[0] == 0


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x):
    """Sum over ranks of a tensor, a number or a sequence of numbers (same type back; tensors come
    back on the device they were given on). Integers are summed exactly (int64), floats in float64.
    Without a process group: ``x`` itself."""
    if not is_distributed():
        return x
    if isinstance(x, torch.Tensor):
        t = x.detach().to(_comm_device(), copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(x.device)
    seq = isinstance(x, (list, tuple))
    vals = list(x) if seq else [x]
    exact = all(isinstance(v, (int, bool)) for v in vals)
    t = torch.tensor(vals, dtype=torch.int64 if exact else torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = [int(v) if exact else float(v) for v in t.tolist()]
    return type(x)(out) if seq else out[0]


def gather_objects(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled); ``[obj]`` without a group."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_indices(n: int, rank: int | None = None, world: int | None = None) -> range:
    """This rank's evaluation samples: ``rank, rank + world, ...``. Every sample is on exactly one
    rank (no padding, unlike ``DistributedSampler``), so summed counts equal one process's."""
    if rank is None or world is None:
        rank, world = rank_world()
    return range(rank, n, world)


def topk_counts(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> list[int]:
    """``[top-1 hits, top-k hits, samples]`` of one batch (k is capped at the number of classes)."""
    labels = torch.as_tensor(labels, device=logits.device)
    ranked = logits.float().topk(min(k, logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return [int(hits[:, 0].sum()), int(hits.any(dim=1).sum()), int(labels.numel())]


def gather_accuracy(counts: Sequence[int]) -> dict:
    """Top-1 / top-5 in percent from this rank's ``[top1 hits, top5 hits, samples]``, summed over
    ranks first: with ``shard_indices`` the result equals a single process on the whole set."""
    top1, top5, n = all_reduce_sum([int(c) for c in counts])
    if n == 0:
        raise ValueError("gather_accuracy: no samples on any rank")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}


def barrier():
    if is_distributed():
        dist.barrier()


def all_ranks_finite(loss) -> bool:
    """Whether ``loss`` (a tensor or a number) is finite on *every* rank: one all-reduce, so all
    ranks take the same branch (a rank that raised alone would leave the others waiting)."""
    if isinstance(loss, torch.Tensor):
        ok = bool(torch.isfinite(loss.detach()).all())
    else:
        ok = math.isfinite(float(loss))
    return all_reduce_sum(0 if ok else 1) == 0 if is_distributed() else ok


def settings_hash(settings) -> str:
    """A short digest of JSON-able ``settings`` (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_settings(settings: dict, what: str = "settings") -> None:
    """All ranks must have been started with the same ``settings``: every rank gathers every rank's
    digest (and its settings, to name the first differing key) and raises the same one-line
    BenchError on a mismatch. Without a process group: nothing to check."""
    if not is_distributed():
        return
    mine = json.loads(json.dumps(settings, sort_keys=True, default=str))
    hashes = gather_objects(settings_hash(mine))
    if len(set(hashes)) == 1:
        return
    other = next(r for r, h in enumerate(hashes) if h != hashes[0])
    theirs = gather_objects(mine)
    keys = sorted(set(theirs[0]) | set(theirs[other]), key=str)
    key = next((k for k in keys if theirs[0].get(k) != theirs[other].get(k)), "?")
    raise BenchError(
        f"ranks were started with other {what}: rank 0 has {key} {theirs[0].get(key)!r}, rank {other} has "
        f"{theirs[other].get(key)!r}; start every rank with the same command"
    )


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank died or stopped answering."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text
        for s in (
            "Connection reset by peer",
            "Connection closed by peer",
            "Broken pipe",
            "Timed out",
            "timed out",
            "[gloo",
            "NCCL",
        )
    )


def peer_failure(e: BaseException) -> BenchError:
    """The one line a surviving rank prints when a collective failed (``is_peer_failure``)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return BenchError(
        f"rank {rank}: another process of this run stopped or stopped answering ({first_line(e, limit=160)}); "
        f"the checkpoints written so far are intact; {TIMEOUT_ENV} bounds each wait"
    )


# ------------------------------------------------------------------------------------------------
# Global-batch pieces for training: gathered keys (MoCo v3) and synchronised BatchNorm
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, without gradient (moco-v3
    ``concat_all_gather``); ``x.detach()`` without a process group. Shapes must agree over ranks."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: every rank's input feeds every rank's output, so the
    gradient of an input is the sum of all ranks' output gradients (another all-reduce)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class _GlooSyncBatchNorm:
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks), for
    CPU/gloo runs: ``torch.nn.SyncBatchNorm`` refuses CPU tensors ("expected input tensor to be on
    GPU"). One differentiable all-reduce of (count, sum, sum of squares) per forward, in float64;
    running statistics are updated exactly as ``nn.BatchNorm`` does (unbiased variance with the
    global count). Eval mode, or no process group: plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        xd = x.double()
        local = torch.cat([xd.new_full((1,), x.numel() // c), xd.sum(dims), (xd * xd).sum(dims)])
        n, s, ss = _AllReduceSum.apply(local).split([1, c, c])
        if n.item() <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(x.shape)} "
                f"on each of {dist.get_world_size()} ranks"
            )
        mean = s / n
        var = (ss / n - mean * mean).clamp(min=0)  # biased, as BatchNorm normalises with
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_((var * n / (n - 1)).to(self.running_var.dtype), alpha=f)
        return y.to(x.dtype)


class GlooSyncBatchNorm1d(_GlooSyncBatchNorm, nn.BatchNorm1d):
    pass


class GlooSyncBatchNorm2d(_GlooSyncBatchNorm, nn.BatchNorm2d):
    pass


_GLOO_SYNC = {nn.BatchNorm1d: GlooSyncBatchNorm1d, nn.BatchNorm2d: GlooSyncBatchNorm2d}


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm over the global batch under DDP, as the official MoCo v3 code does. Without a
    process group: ``model`` unchanged. NCCL (CUDA): ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    gloo (CPU): every ``BatchNorm1d`` / ``BatchNorm2d`` becomes ``GlooSyncBatchNorm1d`` / ``2d`` in
    place (same parameters, buffers and state-dict keys), and so does every ``nn.SyncBatchNorm``
    (a detection / segmentation config's ``SyncBN``, which DDP refuses on CPU). Returns the model
    to use."""
    if not is_distributed():
        return model
    if _comm_device().type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        cls = _GLOO_SYNC.get(type(m))
        if cls is None and isinstance(m, nn.SyncBatchNorm):  # also mmengine's subclass ('SyncBN'), on (N, C, H, W) maps
            cls = GlooSyncBatchNorm2d
        if cls is not None:
            m.__class__ = cls
    return model
