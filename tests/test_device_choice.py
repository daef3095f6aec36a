"""Device, backend and precision choice on CPU, with fake device counts where the logic needs GPUs:
LOCAL_RANK % visible GPUs, the backend from --device, conflicting requests refused in one line,
the RNG state of the training GPU only, per-sample seeding that leaves CUDA alone, bf16 / fp16
by hardware, the fp16 GradScaler path, the start line, bounded collective timeouts."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from bench.core import device as D
from bench.core import distributed as dd
from bench.core.errors import BenchError
from bench.core.samplers import SeededDataset
from bench.core.train_state import rng_state, set_rng_state
from bench.core.trainer import cap_workers


def fake_gpus(monkeypatch, n: int, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


@pytest.mark.parametrize(
    "gpus, local_rank, expected",
    [(8, 5, "cuda:5"), (1, 5, "cuda:0"), (4, 6, "cuda:2"), (2, 3, "cuda:1"), (0, 3, "cpu")],
)
def test_local_device_is_local_rank_modulo_visible_gpus(monkeypatch, gpus, local_rank, expected):
    # Slurm binding one GPU per task: every task sees one device, so LOCAL_RANK itself would not exist
    fake_gpus(monkeypatch, gpus)
    assert dd.local_device(local_rank) == torch.device(expected)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert dd.local_device() == torch.device(expected)
    assert D.pick_device("auto") == torch.device(expected)


def test_backend_and_device_requests(monkeypatch):
    assert dd.backend_for(torch.device("cpu")) == "gloo"
    assert dd.backend_for(torch.device("cuda", 3)) == "nccl"
    # two ranks on one GPU (NCCL refuses that): the backend can be set
    assert dd.backend_for(torch.device("cuda", 0), {dd.BACKEND_ENV: "gloo"}) == "gloo"
    with pytest.raises(BenchError, match=r"BENCH_DIST_BACKEND='mpi': use nccl or gloo"):
        dd.backend_for(torch.device("cpu"), {dd.BACKEND_ENV: "mpi"})
    with pytest.raises(BenchError, match=r"BENCH_DIST_BACKEND=nccl: NCCL needs CUDA devices"):
        dd.backend_for(torch.device("cpu"), {dd.BACKEND_ENV: "nccl"})
    dd.check_device_request("cuda:0", 1)  # one process: any GPU is fine
    dd.check_device_request("cuda", 8)
    with pytest.raises(BenchError, match=r"--device cuda:0: under a launcher with 2 processes every rank would use"):
        dd.check_device_request("cuda:0", 2)
    # pick_device reads the launch from the environment (torchrun's variables), before any group exists
    fake_gpus(monkeypatch, 2)
    assert D.pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(BenchError, match=r"--device cuda:1: under a launcher with 2 processes"):
        D.pick_device("cuda:1")
    assert D.pick_device("cuda") == D.pick_device("auto") == torch.device("cuda", 1)


@pytest.mark.parametrize("device, gpus, backend, gpu", [("cpu", 2, "gloo", None), ("auto", 2, "nccl", 1)])
def test_init_distributed_backend_follows_device(monkeypatch, device, gpus, backend, gpu):
    """--device cpu on a GPU node gets gloo (not NCCL) and selects no GPU; auto gets NCCL on
    LOCAL_RANK % visible GPUs (local rank 3 of a node with 2 visible: GPU 1)."""
    fake_gpus(monkeypatch, gpus)
    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.update(gpu=torch.device(d).index))
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(dd.TIMEOUT_ENV, "42")
    assert dd.init_distributed(device=device) == (3, 4, 3)
    assert calls["backend"] == backend and calls.get("gpu") == gpu
    assert calls["timeout"].total_seconds() == 42
    with pytest.raises(BenchError, match="--device cuda:1: under a launcher with 4 processes"):
        dd.init_distributed(device="cuda:1")


def test_collective_timeout_from_the_environment():
    assert dd.collective_timeout_s({}) == dd.DEFAULT_TIMEOUT_S == 300
    assert dd.collective_timeout_s({dd.TIMEOUT_ENV: "7.5"}) == 7.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(BenchError, match=rf"{dd.TIMEOUT_ENV}='{bad}': must be a positive number"):
            dd.collective_timeout_s({dd.TIMEOUT_ENV: bad})


def test_rng_state_saves_and_restores_the_training_gpu_only(monkeypatch):
    """A node with fewer visible GPUs than the one that saved must resume: only the training
    device's state is kept (get_rng_state_all would save every visible GPU's)."""
    fake_gpus(monkeypatch, 4)
    got, put = [], []
    state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": got.append(device) or state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": put.append((device, s)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    s = rng_state(torch.device("cuda", 2))
    assert got == [torch.device("cuda", 2)] and torch.equal(s["cuda"], state)
    set_rng_state(s, torch.device("cuda", 0))  # resumed on another node, where the GPU is cuda:0
    assert len(put) == 1 and put[0][0] == torch.device("cuda", 0) and torch.equal(put[0][1], state)
    # CPU: the torch / numpy / Python streams continue exactly where they were saved
    import random

    import numpy as np

    s = rng_state(torch.device("cpu"))
    assert s["cuda"] is None
    first = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_state(s, torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]


class Draw(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.rand(4)


def test_per_sample_seeding_never_touches_the_cuda_generator(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a CUDA generator was re-seeded")

    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    before = torch.get_rng_state()
    item = SeededDataset(Draw())[(3, 12345)]
    # the sample's values follow from its seed alone (reference: a fresh generator with that seed)
    assert torch.equal(item, torch.rand(4, generator=torch.Generator().manual_seed(12345)))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's CPU stream is untouched


def test_precision_by_hardware(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert D.amp_dtype(cpu, None) is None  # CPU: only when asked
    assert D.amp_dtype(cpu, True) is torch.bfloat16
    assert D.amp_dtype(cpu, True, "fp16") is torch.float16
    fake_gpus(monkeypatch, 1, bf16=True)
    assert D.amp_dtype(gpu, None) is torch.bfloat16  # on by default on CUDA
    assert D.amp_dtype(gpu, False) is None
    fake_gpus(monkeypatch, 1, bf16=False)  # e.g. a V100 / T4
    assert D.amp_dtype(gpu, True) is torch.float16
    assert D.grad_scaler(cpu, torch.bfloat16) is None
    assert isinstance(D.grad_scaler(cpu, torch.float16), torch.amp.GradScaler)
    with pytest.raises(BenchError, match="--amp-dtype 'fp8': use bf16 or fp16"):
        D.amp_dtype(cpu, True, "fp8")


def test_start_line_and_one_line_finite_check():
    line = D.start_line("mae x", torch.device("cpu"), torch.float16, 1)
    assert line == "[mae x] device cpu, dtype fp16, world 1, backend none"
    assert D.start_line("t", torch.device("cpu"), None, 1).endswith("dtype fp32, world 1, backend none")
    assert dd.all_ranks_finite(torch.tensor([1.0, 2.0])) is True
    assert dd.all_ranks_finite(torch.tensor(float("nan"))) is False
    assert dd.all_ranks_finite(float("inf")) is False


def test_workers_capped_at_the_cores(capsys):
    cores = os.cpu_count() or 1
    assert cap_workers(cores) == cores and capsys.readouterr().err == ""
    assert cap_workers(10_000) == cores
    assert capsys.readouterr().err == f"note: --workers 10000 capped at the {cores} cores of this machine\n"
