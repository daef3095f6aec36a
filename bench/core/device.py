"""Device and precision of a training run.

``pick_device`` turns ``--device`` into the device of this process (``auto``: this rank's GPU,
``local_device()``, else the CPU). ``amp_dtype`` chooses the autocast precision by hardware: bf16
where the GPU supports it, fp16 with a ``GradScaler`` on other GPUs; on the CPU autocast runs only
when asked for, in bf16. ``start_line`` is the one line every training run prints first.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from bench.core.distributed import (
    check_device_request,
    is_distributed,
    launch_world_size,
    local_device,
    rank_world,
)
from bench.core.errors import BenchError, first_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


def pick_device(name: str = "auto") -> torch.device:
    """The device ``--device name`` means for this process (one-line BenchError for what is not one
    here). ``auto``: this rank's GPU, else the CPU; ``cuda`` under a launcher: this rank's GPU; an
    explicit ``cuda:N`` under a launcher with several processes is refused (``check_device_request``)."""
    check_device_request(name, launch_world_size())
    if name == "auto":
        return local_device()
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
    if device.type == "cuda" and device.index is None:
        return local_device()
    return device


def training_device(name: str = "auto") -> torch.device:
    """``pick_device`` checked against the launch: an explicit GPU index with several processes, or
    a CPU run in an NCCL process group (which carries CUDA tensors only), is refused."""
    check_device_request(name, rank_world()[1])
    device = pick_device(name)
    if is_distributed() and dist.get_backend() == "nccl" and device.type != "cuda":
        raise BenchError(
            f"--device {name}: the process group uses {dist.get_backend()}, which cannot carry {device.type} "
            f"tensors; start the processes with the same --device (it picks the backend)"
        )
    return device


def amp_dtype(device: torch.device, amp: bool | None, dtype: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a run, None for fp32. ``amp`` None: on for CUDA, off for the CPU.
    ``dtype`` ('bf16' / 'fp16'): that one; None: bf16 where the hardware has it (every CPU, CUDA
    devices that support it), else fp16."""
    if dtype is not None and dtype not in DTYPES:
        raise BenchError(f"--amp-dtype {dtype!r}: use bf16 or fp16")
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if dtype is not None:
        return DTYPES[dtype]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled):
    """Autocast on ``device``: ``enabled`` False/None for none, True for bf16, or a dtype."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if enabled is True else enabled
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None, sharded: bool = False):
    """A ``GradScaler`` for fp16 autocast (its small range needs loss scaling), else None."""
    if dtype != torch.float16:
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def start_line(desc: str, device: torch.device, dtype: torch.dtype | None, world: int) -> str:
    """``[desc] device cuda:0 (NVIDIA H100), dtype bf16, world 2, backend nccl``: said at every start."""
    name = device.type if device.index is None else f"{device.type}:{device.index}"
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    backend = dist.get_backend() if is_distributed() else "none"
    return f"[{desc}] device {name}, dtype {DTYPE_NAMES.get(dtype, str(dtype))}, world {world}, backend {backend}"
