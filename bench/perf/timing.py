"""Timing primitives shared by every ``bench perf`` measurement: step times, matmul peaks, FLOPs.

On CUDA, work is timed with CUDA events (kernel time on the device, not the host's view of a
queue); on CPU with ``time.perf_counter``. The matmul peak on CUDA comes from >= 8192^2 products:
a small product cannot fill a large GPU and would inflate the "% of peak" of the model it is set
against. On CPU the product's size is chosen to fit a time budget instead, because a CPU without
bf16 matmul units runs bf16 so slowly that a large product would take minutes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

CUDA_PEAK_SIZE = 8192
CPU_PEAK_SIZE = 2048
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceTimer:
    """Seconds of timed regions on one device: CUDA events on CUDA, the host clock elsewhere.
    ``start()`` / ``stop()`` around each region; ``seconds()`` waits for the device once and
    returns one duration per region, in order."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def start(self) -> None:
        self.marks.append([self._mark(), None])

    def stop(self) -> None:
        self.marks[-1][1] = self._mark()

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in self.marks]
        return [b - a for a, b in self.marks]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_peak_size(dtype: torch.dtype, device: torch.device, n: int, budget_s: float) -> int:
    """The largest power-of-two size from 256 up to ``n`` whose product takes under ``budget_s`` / 8."""
    size = 256
    while size < n:
        a = torch.randn(size, size, device=device, dtype=dtype)
        a @ a  # warm-up: first-call allocation and library initialisation
        t = time.perf_counter()
        a @ a
        if (time.perf_counter() - t) * 8 > budget_s:
            break
        size *= 2
    return size


def peak_size(dtype: torch.dtype, device: torch.device, n: int | None = None, budget_s: float = 1.0) -> int:
    """The side of the product ``matmul_peak`` times: on CUDA ``n`` but never under
    ``CUDA_PEAK_SIZE``; on CPU the time-budgeted size up to ``n`` (default ``CPU_PEAK_SIZE``)."""
    if device.type == "cuda":
        return max(n or CUDA_PEAK_SIZE, CUDA_PEAK_SIZE)
    return _cpu_peak_size(dtype, device, n or CPU_PEAK_SIZE, budget_s)


def matmul_peak(
    dtype: torch.dtype, device: torch.device, n: int | None = None, reps: int = 5, budget_s: float = 1.0
) -> float:
    """Best-of-``reps`` GFLOP/s of a size x size x size product (``peak_size``), timed with
    ``DeviceTimer`` (CUDA events on CUDA)."""
    size = peak_size(dtype, device, n, budget_s)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    timer = DeviceTimer(device)
    for _ in range(reps):
        timer.start()
        a @ b
        timer.stop()
    return max(2 * size**3 / t / 1e9 for t in timer.seconds())


def matmul_peaks(device: torch.device, names=("fp32", "bf16")) -> dict[str, float]:
    """{precision name: matmul peak GFLOP/s} for ``names`` (keys of ``PRECISIONS``)."""
    return {name: matmul_peak(PRECISIONS[name], device) for name in names}


def step_flops(model, imgs) -> float:
    """FLOPs of one MAE forward + backward at mask ratio 0.75 (``torch.utils.flop_counter``)."""
    return loss_flops(model, lambda m: m(imgs, mask_ratio=0.75)[0])


def loss_flops(model, loss_of) -> float:
    """FLOPs of one forward + backward of ``loss_of(model)``; gradients are cleared after."""
    with FlopCounterMode(display=False) as fc:
        loss_of(model).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def step_times(model, loss_of, amp, iters: int, device, timer: DeviceTimer | None = None) -> list[float]:
    """Seconds of each of ``iters`` training steps (forward under autocast, backward, fused AdamW)
    after one warm-up step. ``amp``: False / None (fp32), True or 'bf16', or 'fp16' (with a
    GradScaler, as fp16 training needs). ``loss_of(model) -> loss``."""
    dtype = {True: torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    timer = timer or DeviceTimer(device)
    first = len(timer.marks)
    for i in range(iters + 1):
        if i:
            timer.start()
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            loss = loss_of(model)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        if i:
            timer.stop()
        else:
            sync(device)
    return timer.seconds()[first:]


def median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def median_step_time(model, loss_of, amp, iters: int, device) -> float:
    """Median seconds of a training step (``step_times``)."""
    return median(step_times(model, loss_of, amp, iters, device))


def time_steps(model, imgs, amp, iters: int, device) -> float:
    """Seconds per MAE training step at mask ratio 0.75."""
    return median_step_time(model, lambda m: m(imgs, mask_ratio=0.75)[0], amp, iters, device)
