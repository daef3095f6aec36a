"""Scale-out: DDP through the shared engine equals one process with the whole batch; metrics gathered
over ranks equal one process; non-finite steps and resume agree across ranks; activation
checkpointing changes no number.

The 2-process runs use the real launcher: this file is also the worker script, started once per
session with ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_distributed.py
OUT`` (gloo on CPU, one thread per process). Every scenario runs in that one launch; the tests
compare its outputs with single-process runs done here.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # as a torchrun worker script
    sys.path.insert(0, str(REPO))

from dist_helpers import ARCH, BLR, N_SAMPLES, STEPS, Crash, logged, mae_loss, rel, run_mae  # noqa: E402

from backbones.pretrainers.mae import build_mae  # noqa: E402
from backbones.vit import Block  # noqa: E402
from bench.core.data import pretrain_dataset  # noqa: E402
from bench.core.engine import enable_grad_checkpointing  # noqa: E402

N_EVAL, N_CLASSES = 103, 10  # 103: the two ranks' shards differ in size


def eval_logits():
    g = torch.Generator().manual_seed(7)
    return torch.randn(N_EVAL, N_CLASSES, generator=g), torch.randint(0, N_CLASSES, (N_EVAL,), generator=g)


# ------------------------------------------------------------------------------------------------
# The worker (one process of the torchrun launch)
# ------------------------------------------------------------------------------------------------
def worker(out: Path):
    from bench.core.distributed import (
        all_ranks_finite,
        all_reduce_sum,
        gather_accuracy,
        gather_objects,
        init_distributed,
        shard_indices,
        topk_counts,
    )
    from bench.core.errors import NonFiniteLossError

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    assert world == 2
    report = {}

    # same global batch 16 two ways: 2 x 8, and 2 x 4 x accumulation 2
    run_mae(out / "b8", 8)
    syncs = []

    def record_sync(m, batch):  # DDP all-reduces gradients in this micro-batch's backward?
        syncs.append(m.require_backward_grad_sync)
        return mae_loss(m, batch)

    run_mae(out / "b4_acc2", 4, accum_iter=2, loss_fn=record_sync)
    report["grad_sync"] = syncs

    # a NaN on rank 1 only (its 3rd micro-batch): both ranks skip that step, or both stop
    def nan_on_rank1(m, batch, calls={"n": 0}):
        calls["n"] += 1
        loss, logs = mae_loss(m, batch)
        return (loss * float("nan") if rank == 1 and calls["n"] == 3 else loss), logs

    m_skip, res = run_mae(out / "nan_skip", 8, steps=4, loss_fn=nan_on_rank1, max_nonfinite=1)
    report["nan_skip_params"] = gather_objects([p.detach().double().sum().item() for p in m_skip.parameters()])
    report["nan_skip_history"] = gather_objects(res.history)
    calls = {"n": 0}
    try:
        run_mae(out / "nan_stop", 8, steps=4, loss_fn=lambda m, b: nan_on_rank1(m, b, calls))
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = str(e)
    report["nan_stop"] = gather_objects(outcome)

    # resume under DDP repeats the uninterrupted run; the masks come from each rank's own RNG here
    crops = pretrain_dataset("embedded", 32, N_SAMPLES)

    def rng_masks(m, x, crash_at=None, calls={"n": 0}):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash
        return m(x, 0.75)[0], {}

    run_mae(out / "whole", 8, loss_fn=rng_masks, dataset=crops, ckpt_every=3)
    calls = {"n": 0}
    try:
        run_mae(out / "resumed", 8, loss_fn=lambda m, x: rng_masks(m, x, 5, calls), dataset=crops, ckpt_every=3)
    except Crash:
        pass
    run_mae(out / "resumed", 8, loss_fn=rng_masks, dataset=crops, ckpt_every=3)

    # evaluation: each rank scores its shard, counts are summed
    logits, labels = eval_logits()
    idx = list(shard_indices(N_EVAL))
    report["shard_sizes"] = gather_objects(len(idx))
    report["accuracy"] = gather_accuracy(topk_counts(logits[idx], labels[idx]))
    report["sums"] = [
        all_reduce_sum(rank + 1),
        all_reduce_sum([0.5, rank]),
        all_reduce_sum(torch.tensor([1.0, rank])).tolist(),
    ]
    # the dense engines' rank-agreed check: a NaN on one rank is a NaN on every rank
    nan = float("nan")
    report["all_finite"] = gather_objects(
        [
            all_ranks_finite(torch.tensor(1.0)),
            all_ranks_finite(torch.tensor([1.0, nan if rank == 1 else 2.0])),
            all_ranks_finite(float("inf") if rank == 0 else 0.5),
        ]
    )
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    from conftest import run_torchrun

    p = run_torchrun(Path(__file__).resolve(), out)
    return out, p.stdout, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("single")
    model, _ = run_mae(out, 16)
    return out, model


def test_two_ranks_follow_the_single_process_loss_trajectory(ddp, single):
    out, _, _ = ddp
    ref = logged(single[0])
    assert len(ref) == STEPS
    # measured: max relative loss difference ~1e-7 (gloo sum-then-divide vs one batch mean)
    for run in ("b8", "b4_acc2"):
        got = logged(out / run)
        assert [h["step"] for h in got] == list(range(1, STEPS + 1))
        for h, r in zip(got, ref):
            assert rel(h["loss"], r["loss"]) <= 1e-5, (run, h, r)
            assert rel(h["pix_mean"], r["pix_mean"]) <= 1e-5, (run, h, r)  # logged terms: global mean too
            assert h["lr"] == r["lr"] and h["epoch"] == r["epoch"]
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.02  # it is training, not a flat line
    # the DDP runs' final models are the single process's: same loss and predictions on a batch
    # (not raw weights: the key bias gets a zero gradient whose rounding noise Adam amplifies,
    # and the key bias changes no output)
    imgs, noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.rand(4, 16)
    with torch.no_grad():
        ref_loss, ref_pred, _ = single[1](imgs, 0.75, noise)
    for run in ("b8", "b4_acc2"):
        model = build_mae(ARCH)
        model.load_state_dict(torch.load(out / run / f"checkpoint-{STEPS:07d}.pth", weights_only=False)["model"])
        with torch.no_grad():
            loss, pred, _ = model(imgs, 0.75, noise)
        assert rel(float(loss), float(ref_loss)) <= 1e-5, run
        torch.testing.assert_close(pred, ref_pred, rtol=1e-4, atol=1e-5, msg=run)


def test_gradients_are_synchronised_once_per_accumulated_step(ddp):
    _, _, rep = ddp
    assert rep["grad_sync"] == [False, True] * STEPS  # no_sync on the first of 2 micro-batches


def test_global_batch_lr_and_epoch_length_are_printed_for_the_world(ddp):
    _, stdout, _ = ddp
    lr = BLR * 16 / 256  # 2 ranks x 8, and 2 ranks x 4 x accumulation 2
    assert f"world 2 x batch 8 x accum 1 = global batch 16; lr {lr:.3g}" in stdout
    assert f"world 2 x batch 4 x accum 2 = global batch 16; lr {lr:.3g}" in stdout
    assert f"{STEPS} steps, {N_SAMPLES // 16} per epoch" in stdout  # 64 samples / global batch 16
    assert stdout.count("global batch") == 7  # rank 0 only: 7 fit calls
    assert stdout.count("device cpu, dtype fp32, world 2, backend gloo") == 7  # the start line


def test_a_nonfinite_value_on_one_rank_is_nonfinite_on_all(ddp):
    _, _, rep = ddp
    assert rep["all_finite"] == [[True, False, False], [True, False, False]]


def test_nonfinite_on_one_rank_is_skipped_or_stops_on_every_rank(ddp):
    _, _, rep = ddp
    p0, p1 = rep["nan_skip_params"]
    assert p0 == p1  # the ranks did not diverge: both skipped step 2
    h0, h1 = rep["nan_skip_history"]
    assert [h["loss"] for h in h0] == [h["loss"] for h in h1] and len(h0) == 4
    assert h0[2]["loss"] == h0[1]["loss"]  # the skipped step logs the previous loss
    assert all(np.isfinite(h["loss"]) for h in h0)
    for msg in rep["nan_stop"]:  # both ranks raise (each with its own loss value); none hangs
        assert msg.startswith("non-finite loss at step 2 (") and "'ranks': [1]" in msg, msg


def test_resume_under_ddp_repeats_the_uninterrupted_run(ddp):
    out, _, _ = ddp
    whole, resumed = logged(out / "whole"), logged(out / "resumed")
    assert len(whole) == STEPS and whole == resumed
    ck = torch.load(out / "resumed" / f"checkpoint-{STEPS:07d}.pth", weights_only=False)
    assert len(ck["rng_ranks"]) == 2 and not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])


def test_accuracy_gathered_over_ranks_equals_one_process(ddp):
    from bench.core.distributed import gather_accuracy, topk_counts

    _, _, rep = ddp
    logits, labels = eval_logits()
    # reference computed independently: rank of the true class among the scores
    rank_of_true = (logits.numpy() > logits.numpy()[np.arange(N_EVAL), labels.numpy()][:, None]).sum(1)
    ref = {
        "top1": 100.0 * (rank_of_true < 1).sum() / N_EVAL,
        "top5": 100.0 * (rank_of_true < 5).sum() / N_EVAL,
        "n": N_EVAL,
    }
    assert 0 < ref["top1"] < ref["top5"] < 100
    assert rep["shard_sizes"] == [52, 51]
    assert rep["accuracy"] == pytest.approx(ref, abs=1e-12)
    assert gather_accuracy(topk_counts(logits, labels)) == pytest.approx(ref, abs=1e-12)  # no group: local
    assert rep["sums"] == [3, [1.0, 1.0], [2.0, 1.0]]


def test_launch_environment_detection(monkeypatch):
    from bench.core.distributed import init_distributed, launch_env

    assert launch_env({}) is None
    tr = launch_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "h0",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert tr == dict(rank=3, world_size=8, local_rank=1, master_addr="h0", master_port=1234, source="torchrun")
    sl = launch_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "16",
            "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu17,gpu18",
        }
    )
    assert (sl["rank"], sl["world_size"], sl["local_rank"], sl["source"]) == (5, 8, 1, "slurm")
    assert sl["master_addr"] == "gpu17" and sl["master_port"] == 29500
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed() == (0, 1, 0) and not torch.distributed.is_initialized()


EXIT_SCRIPT = """
import atexit, socket, sys, torch, torch.distributed as dist
from pathlib import Path
from bench.core.distributed import exit_distributed
out = Path(sys.argv[1])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
if sys.argv[2] == "group":
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    dist.all_reduce(torch.ones(3))
atexit.register(lambda: (out / "atexit_ran").write_text("1"))

class Finalized:  # collected only by interpreter finalization
    def __del__(self):
        (out / "finalized").write_text("1")

keep = Finalized()
print("unflushed stdout line", end="")
code = exit_distributed(3)
print(" returned", code)
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["group", "none"])
def test_exit_distributed_skips_interpreter_finalization_only_under_a_process_group(tmp_path, mode):
    """The end of every command (see ``exit_distributed``'s docstring for the gloo-thread abort it
    avoids): with a process group the group is left, atexit handlers and buffered output still run,
    the exit code is kept and finalizers are never reached; without one it is a plain return."""
    import subprocess

    (tmp_path / "w.py").write_text(EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.run(
        [sys.executable, str(tmp_path / "w.py"), str(tmp_path), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 3, p.stderr[-2000:]
    assert (tmp_path / "atexit_ran").exists()
    if mode == "group":
        assert p.stdout == "unflushed stdout line"  # flushed before os._exit, nothing after it ran
        assert not (tmp_path / "finalized").exists()
    else:
        assert p.stdout == "unflushed stdout line returned 3\n"
        assert (tmp_path / "finalized").exists()


def _saved_bytes_and_grads(model, imgs, noise):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(imgs, 0.75, noise)[0]
    loss.backward()
    return total[0], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_saves_activations_and_changes_no_gradient(tmp_path, one_thread):
    torch.manual_seed(0)
    model = build_mae(ARCH)
    imgs, noise = torch.randn(8, 3, 32, 32), torch.rand(8, 16)
    plain_bytes, plain = _saved_bytes_and_grads(model, imgs, noise)
    assert enable_grad_checkpointing(model, Block) == 2 + 1  # 2 encoder blocks + 1 decoder block
    ckpt_bytes, ckpt = _saved_bytes_and_grads(model, imgs, noise)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=0, atol=1e-6, msg=n)
    assert ckpt_bytes < 0.5 * plain_bytes, (
        ckpt_bytes,
        plain_bytes,
    )  # measured 0.40 (saved weights of the other layers count too)
    # through the engine: same losses as without
    ref = run_mae(tmp_path / "plain", 16, steps=3)[1].history
    got = run_mae(tmp_path / "ckpt", 16, steps=3, grad_checkpointing=True)[1].history
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in ref], rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Faults between ranks: two processes started by hand (a launcher would kill the survivor)
# ------------------------------------------------------------------------------------------------
FAULT_SCRIPT = """
import os, sys
import torch
from bench.cli import main

rank = int(os.environ["RANK"])
torch.set_num_threads(1)
if sys.argv[1] == "steps":  # the same command, but --steps differs between the ranks
    sys.exit(main(["pretrain", "--arch", "vit_test_patch8", "--steps", str(2 + rank), "--epoch-size", "16",
                   "--batch-size", "4", "--no-progress", "--out", sys.argv[2]]))
from backbones.pretrainers.mae import build_mae
from bench.core.data import pretrain_dataset
from bench.core.distributed import init_distributed
from bench.core.engine import TrainConfig, fit
from bench.core.errors import BenchError

init_distributed()
calls = [0]

def loss(m, x):
    calls[0] += 1
    if rank == 1 and calls[0] == 3:
        os._exit(9)  # killed mid-run
    return m(x, 0.75)[0], {}

cfg = TrainConfig(out_dir=sys.argv[2], steps=6, batch_size=4, blr=1e-3, ckpt_every=1, progress=False)
try:
    fit(build_mae("vit_test_patch8"), pretrain_dataset("embedded", 32, 16), loss, cfg)
except BenchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def _two_ranks(tmp_path, mode):
    import socket
    import subprocess
    import time

    (tmp_path / "w.py").write_text(FAULT_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BENCH_DIST_TIMEOUT_S": "60"}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "w.py"), mode, str(tmp_path / "run")],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], [e for _, e in outs], time.monotonic() - t0


def test_ranks_started_with_other_settings_each_stop_with_one_line(tmp_path):
    codes, errs, wall = _two_ranks(tmp_path, "steps")
    assert codes == [2, 2], errs
    for err in errs:
        assert err.strip().splitlines() == [
            "error: ranks were started with other settings: rank 0 has steps 2, rank 1 has 3; "
            "start every rank with the same command"
        ], err
    assert wall < 280  # an import of torch under load, not gloo's 1800 s
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_a_dead_peer_is_one_line_on_the_surviving_rank(tmp_path):
    codes, errs, wall = _two_ranks(tmp_path, "dead")
    assert codes[1] == 9
    assert codes[0] == 2, errs[0][-3000:]
    lines = errs[0].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0: another process of this run stopped or stopped answering ("
    ), errs[0][-3000:]
    assert "the checkpoints written so far are intact" in lines[0]
    assert wall < 280


if __name__ == "__main__":
    from conftest import torchrun_worker_main

    torchrun_worker_main(worker)
