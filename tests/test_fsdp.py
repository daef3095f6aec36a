"""FSDP2 through the shared engine (``TrainConfig.fsdp`` / ``--fsdp``): 2 sharded processes equal one
process with the whole batch (accumulation and clipping included), checkpoints keep the unsharded
single-process format (load into a plain model, resume exactly), the per-rank parameter + AdamW
bytes are halved, MoCo's momentum update works on the shards, and ``fit`` hands back a plain module.

As in ``tests/test_distributed.py`` this file is also the torchrun worker: one launch
(``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_fsdp.py OUT``, gloo on
CPU, one thread per process) runs every scenario; the tests compare its outputs with
single-process runs done here.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # as a torchrun worker script
    sys.path.insert(0, str(REPO))

from dist_helpers import ARCH, N_SAMPLES, STEPS, Crash, ckpt, logged, mae_loss, rel, run_mae  # noqa: E402
from dist_helpers import without_zero_gradient as without_key_bias

from backbones.pretrainers.mae import build_mae  # noqa: E402
from backbones.vit import Block  # noqa: E402
from bench.core.data import pretrain_dataset  # noqa: E402
from bench.core.engine import TrainConfig, local_state_bytes  # noqa: E402

CLIP = 0.05  # below the gradient norm of every step here (~0.3-1.2), so clipping always acts
SGD_CLIP = dict(optimizer="sgd", lr=0.1, clip_grad=CLIP)  # with SGD clipping changes the trajectory a lot
MOCO = dict(epoch_size=32, dim=8, mlp_dim=16, steps=3, lr=1e-3, warmup_steps=1, progress=False, resume=False)


def fixed_batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.rand(n, 16, generator=g)


# ------------------------------------------------------------------------------------------------
# The worker (one process of the torchrun launch)
# ------------------------------------------------------------------------------------------------
def worker(out: Path):
    from torch.distributed.tensor import DTensor

    from backbones.pretrainers.mocov3 import pretrain_mocov3
    from bench.core.distributed import gather_objects, init_distributed
    from bench.core.engine import FSDPSharding, make_optimizer
    from bench.core.errors import NonFiniteLossError

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    assert world == 2
    report = {}

    # (a) the global batch 16 two ways: 2 x 8, and 2 x 4 x accumulation 2 with clipping
    torch.manual_seed(0)
    model = build_mae(ARCH)
    before = list(model.parameters())
    run_mae(out / "b8", 8, fsdp=True, model=model)
    # fit handed back the plain module: no FSDP class, hook or DTensor left, its own parameter
    # objects, holding rank 0's trained weights
    sd = ckpt(out / "b8")["model"]
    report["released"] = gather_objects(
        {
            "type": type(model).__name__,
            "same_objects": [id(p) for p in before] == [id(p) for p in model.parameters()],
            "dtensors": sum(isinstance(p, DTensor) for p in model.parameters()),
            "hooks": sum(
                len(d)
                for m in model.modules()
                for k, d in vars(m).items()
                if k.endswith("_hooks") and isinstance(d, dict)
            ),
            "max_diff_to_checkpoint": max((v - sd[k]).abs().max().item() for k, v in model.state_dict().items()),
        }
    )

    grads_seen = []

    def record(m, batch):  # any gradient reduce-scattered into the shards yet in this step?
        grads_seen.append(any(p.grad is not None for p in m.parameters()))
        assert all(isinstance(p, DTensor) for p in m.parameters()), "not sharded"
        return mae_loss(m, batch)

    run_mae(out / "b4_acc2_clip", 4, accum_iter=2, loss_fn=record, fsdp=True, **SGD_CLIP)
    report["grads_seen"] = grads_seen

    # the clipping norm on DTensor gradients is the norm of the whole model's gradient
    torch.manual_seed(0)
    m = build_mae(ARCH)
    FSDPSharding(m, Block)
    imgs, noise = fixed_batch()
    part = slice(8 * rank, 8 * rank + 8)
    m(imgs[part], 0.75, noise[part])[0].backward()
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP)
    report["clip_norm"] = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    # (b) resume repeats the uninterrupted run (masks from each rank's own RNG: RNG states restored)
    crops = pretrain_dataset("embedded", 32, N_SAMPLES)

    def rng_masks(m, x, crash_at=None, calls={"n": 0}):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash
        return m(x, 0.75)[0], {}

    run_mae(out / "whole", 4, accum_iter=2, loss_fn=rng_masks, dataset=crops, ckpt_every=3, fsdp=True)
    calls = {"n": 0}
    try:
        run_mae(
            out / "resumed",
            4,
            accum_iter=2,
            loss_fn=lambda m, x: rng_masks(m, x, 9, calls),
            dataset=crops,
            ckpt_every=3,
            fsdp=True,
        )
    except Crash:
        pass
    run_mae(out / "resumed", 4, accum_iter=2, loss_fn=rng_masks, dataset=crops, ckpt_every=3, fsdp=True)
    # the same run under DDP: its checkpoint is the format FSDP's must have
    run_mae(out / "ddp_whole", 4, accum_iter=2, loss_fn=rng_masks, dataset=crops, ckpt_every=3)

    # a NaN on rank 1 in the 2nd micro-batch of step 2: the step is skipped and the 1st micro-batch's
    # gradients (accumulated unsharded, not yet reduced) are dropped, as DDP drops them
    def nan_on_rank1(m, batch, calls):
        calls["n"] += 1
        loss, logs = mae_loss(m, batch)
        return (loss * float("nan") if rank == 1 and calls["n"] == 4 else loss), logs

    for name, fsdp in (("nan_fsdp", True), ("nan_ddp", False)):
        counter = {"n": 0}
        run_mae(
            out / name,
            4,
            accum_iter=2,
            steps=4,
            loss_fn=lambda m, b: nan_on_rank1(m, b, counter),
            max_nonfinite=1,
            fsdp=fsdp,
        )

    # ... or, with no skip allowed, every rank stops there with the state saved (right after a forward
    # without backward: the root still holds its gathered parameters)
    counter = {"n": 0}
    try:
        run_mae(out / "nan_stop", 4, accum_iter=2, steps=4, loss_fn=lambda m, b: nan_on_rank1(m, b, counter), fsdp=True)
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = str(e)
    report["nan_stop"] = gather_objects(outcome)

    # activation checkpointing and a compiled forward (eager backend) compose with the shards
    run_mae(out / "ckpt_compile", 8, steps=3, grad_checkpointing=True, compile="eager", fsdp=True)
    run_mae(out / "bf16", 8, steps=3, bf16=True, fsdp=True)

    # (c) bytes of parameters + AdamW state per rank, one step, DDP (unsharded) vs FSDP
    def one_step(m):
        opt = make_optimizer([{"params": list(m.parameters()), "weight_decay": 0.0}], TrainConfig(out_dir=""), 1e-3)
        m(imgs[part], 0.75, noise[part])[0].backward()
        opt.step()
        return local_state_bytes(m, opt)

    torch.manual_seed(0)
    plain = one_step(build_mae(ARCH))
    torch.manual_seed(0)
    m = build_mae(ARCH)
    FSDPSharding(m, Block)
    report["bytes"] = gather_objects({"ddp": plain, "fsdp": one_step(m)})
    report["fused_on_dtensors"] = make_optimizer(
        [{"params": list(m.parameters())}], TrainConfig(out_dir=""), 1e-3
    ).defaults["fused"]

    # MoCo v3: the momentum update (after_step) on sharded parameters equals DDP's
    pretrain_mocov3(ARCH, out / "moco_fsdp", batch_size=4, fsdp=True, **MOCO)
    pretrain_mocov3(ARCH, out / "moco_ddp", batch_size=4, **MOCO)
    report["moco_export"] = (
        isinstance(torch.load(out / "moco_fsdp" / "pretrain.pth", weights_only=False)["model"], dict)
        if rank == 0
        else None
    )

    # classification: partial fine-tuning (frozen blocks; the caller's layer-decay groups, made before
    # fit from the unsharded parameters) and evaluation on each rank's shard after fit
    from tasks.classification.datasets import make_image_folder
    from tasks.classification.run import run_classification

    if rank == 0:
        make_image_folder(
            out / "digits", n_train_per_class=16, n_val_per_class=5, num_classes=10, image_size=32, seed=0
        )
    torch.distributed.barrier()
    cfg = {
        "batch_size": 16,
        "warmup_epochs": 1,
        "blr": 0.01,
        "layer_decay": 0.75,
        "drop_path": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "auto_augment": None,
        "reprob": 0.0,
        "num_workers": 0,
        "eval_batch_size": 50,
    }
    report["cls"] = {}
    for name, f in (("cls_fsdp", True), ("cls_ddp", False)):
        row = run_classification(
            "partial",
            "folder",
            out / "digits",
            "random_vit_test_patch8",
            k=1,
            out_dir=out / name,
            config=cfg,
            epochs=2,
            progress=False,
            fsdp=f,
        )
        report["cls"][name] = row["metrics"]
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    from conftest import run_torchrun

    p = run_torchrun(Path(__file__).resolve(), out)
    return out, p.stdout, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, one_thread):
    """One process, batch 16: AdamW; SGD with and without clipping; --fsdp (ignored: one process)."""
    out = tmp_path_factory.mktemp("single")
    runs = {
        name: run_mae(out / name, 16, **kw)
        for name, kw in (
            ("plain", {}),
            ("clip", SGD_CLIP),
            ("sgd", {**SGD_CLIP, "clip_grad": None}),
            ("fsdp_flag", {"fsdp": True}),
        )
    }
    return out, runs


def test_fsdp_follows_one_process_with_the_global_batch(fsdp, single):
    out, _, _ = fsdp
    ref_dir, runs = single
    for run, ref_run in (("b8", "plain"), ("b4_acc2_clip", "clip")):
        got, ref = logged(out / run), logged(ref_dir / ref_run)
        assert [h["step"] for h in got] == [h["step"] for h in ref] == list(range(1, STEPS + 1))
        # measured: max relative loss difference 1e-7 (9.5e-8 AdamW, 4.8e-8 SGD + accumulation + clipping)
        assert max(rel(h["loss"], r["loss"]) for h, r in zip(got, ref)) < 1e-5, run
        assert max(rel(h["pix_mean"], r["pix_mean"]) for h, r in zip(got, ref)) < 1e-5, run
        assert [(h["lr"], h["epoch"]) for h in got] == [(h["lr"], h["epoch"]) for h in ref]
        # the final weights, loaded into a plain single-process model (strict): measured max 6e-8
        plain = build_mae(ARCH)
        plain.load_state_dict(ckpt(out / run)["model"], strict=True)
        got_sd, ref_sd = without_key_bias(plain.state_dict()), without_key_bias(runs[ref_run][0].state_dict())
        for k, v in ref_sd.items():
            torch.testing.assert_close(got_sd[k], v, rtol=1e-5, atol=2e-6, msg=f"{run} {k}")
    # clipping acts (measured: final loss 1.250 clipped vs 1.099 not) and training moves the loss
    sgd_l, clip_l = [h["loss"] for h in logged(ref_dir / "sgd")], [h["loss"] for h in logged(ref_dir / "clip")]
    assert clip_l[-1] - sgd_l[-1] > 0.05
    plain_l = [h["loss"] for h in logged(ref_dir / "plain")]
    assert plain_l[-1] < plain_l[0] - 0.02


def test_clip_norm_of_sharded_gradients_is_the_whole_models(fsdp, one_thread):
    _, _, rep = fsdp
    torch.manual_seed(0)
    m = build_mae(ARCH)
    imgs, noise = fixed_batch()
    m(imgs, 0.75, noise)[0].backward()
    ref = float(torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP))
    assert ref > 10 * CLIP
    assert rel(rep["clip_norm"], ref) < 1e-5, (rep["clip_norm"], ref)  # measured: equal (0.5770)


def test_accumulation_reduces_gradients_once_per_step(fsdp):
    _, _, rep = fsdp
    # with set_requires_gradient_sync(False) the 1st micro-batch's backward leaves the shards'
    # .grad unset (syncing every micro-batch would have set them before the 2nd)
    assert rep["grads_seen"] == [False, False] * STEPS


def test_fit_hands_back_the_plain_trained_module_on_every_rank(fsdp):
    _, _, rep = fsdp
    for r in rep["released"]:
        assert r == {
            "type": "MaskedAutoencoder",
            "same_objects": True,
            "dtensors": 0,
            "hooks": 0,
            "max_diff_to_checkpoint": 0.0,
        }, r


def test_checkpoint_format_is_the_single_process_one_and_resume_is_exact(fsdp):
    out, _, _ = fsdp
    whole, resumed = logged(out / "whole"), logged(out / "resumed")
    assert len(whole) == STEPS and whole == resumed  # bit for bit, RNG streams of both ranks restored
    a, b = ckpt(out / "resumed"), ckpt(out / "whole")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the same layout as the DDP run's checkpoint: model keys, shapes, optimizer ids and groups
    f, d = ckpt(out / "whole", 3), ckpt(out / "ddp_whole", 3)
    assert list(f) == list(d) and f["config"]["fsdp"] and not d["config"]["fsdp"]
    assert [(k, v.shape, v.dtype) for k, v in f["model"].items()] == [
        (k, v.shape, v.dtype) for k, v in d["model"].items()
    ]
    assert sorted(f["optimizer"]["state"]) == sorted(d["optimizer"]["state"])
    assert f["optimizer"]["param_groups"] == d["optimizer"]["param_groups"]
    for i, s in d["optimizer"]["state"].items():
        for k, v in s.items():
            assert f["optimizer"]["state"][i][k].shape == v.shape, (i, k)
            assert not hasattr(f["optimizer"]["state"][i][k], "to_local")  # plain tensors, not DTensors
    # and the FSDP run's numbers are the DDP run's (same per-rank RNG masks): measured equal
    ddp = logged(out / "ddp_whole")
    assert max(rel(h["loss"], r["loss"]) for h, r in zip(whole, ddp)) < 1e-5


def test_skipped_nonfinite_step_drops_the_accumulated_gradients(fsdp):
    out, _, _ = fsdp
    got, ref = logged(out / "nan_fsdp"), logged(out / "nan_ddp")
    assert len(got) == len(ref) == 4
    assert ckpt(out / "nan_fsdp", 4)["nonfinite"] == ckpt(out / "nan_ddp", 4)["nonfinite"] == 1  # step 2 skipped
    # the logged loss of step 2 is its finite micro-batches' mean; without dropping the 1st micro-batch's
    # unsharded gradient, steps 3 and 4 would differ from DDP's by 6e-5 (measured with the drop removed)
    assert max(rel(h["loss"], r["loss"]) for h, r in zip(got, ref)) < 1e-5  # measured: equal


def test_nonfinite_stop_saves_a_loadable_checkpoint_on_every_rank(fsdp):
    out, _, rep = fsdp
    for msg in rep["nan_stop"]:  # both ranks raise; none hangs
        assert msg.startswith("non-finite loss at step 1 (") and "'ranks': [1]" in msg, msg
    state = ckpt(out / "nan_stop", 1)
    assert state["step"] == 1 and len(state["optimizer"]["state"]) > 0
    build_mae(ARCH).load_state_dict(state["model"], strict=True)


def test_checkpointing_compile_and_bf16_under_fsdp(fsdp):
    out, _, _ = fsdp
    # 3 steps, all in the warmup shared with the 6-step run (lr_at depends on the warmup only there)
    ref = [h["loss"] for h in logged(out / "b8")][:3]
    got = [h["loss"] for h in logged(out / "ckpt_compile")]
    assert got == pytest.approx(ref, rel=1e-6)  # recomputed blocks, compiled forward: same numbers
    bf16 = [h["loss"] for h in logged(out / "bf16")]
    assert bf16 != ref and bf16 == pytest.approx(ref, rel=2e-2)  # autocast is on, and close (measured 5e-5)


def test_start_line_names_the_wrapper(fsdp, single, capsys):
    _, stdout, _ = fsdp
    assert "global batch 16; lr" in stdout
    assert stdout.count("; FSDP2 (3 blocks sharded)") == 9  # 2 encoder blocks + 1 decoder block; 9 FSDP MAE fits
    assert stdout.count("; DDP") == 4  # ddp_whole, nan_ddp, moco_ddp, cls_ddp
    assert "; FSDP2 (2 blocks sharded)" in stdout  # the classifier's 2 blocks
    assert "; FSDP2 (4 blocks sharded)" in stdout  # MoCo: 2 blocks in each of its two encoders
    ref_dir, runs = single
    assert logged(ref_dir / "fsdp_flag") == logged(ref_dir / "plain")  # one process: --fsdp changes nothing


def test_sharding_halves_parameter_and_adamw_bytes_per_rank(fsdp):
    _, _, rep = fsdp
    full = rep["bytes"][0]["ddp"]
    n_params = sum(p.numel() for p in build_mae(ARCH).parameters())
    # fp32 weights; exp_avg + exp_avg_sq (+ a step counter) for every parameter that gets a gradient
    assert full["params"] == 4 * n_params and 7 * n_params < full["optimizer"] < 8 * n_params + 1000
    assert rep["fused_on_dtensors"] is True  # the fused AdamW kernel runs on the DTensor shards (CPU)
    shards = [r["fsdp"] for r in rep["bytes"]]
    for key in ("params", "optimizer"):
        total = sum(s[key] for s in shards)
        assert 0.99 * full[key] <= total <= 1.01 * full[key] + 64, (key, shards, full)  # every element on one rank
        for s in shards:  # measured: params 0.511 / 0.489, AdamW 0.501 / 0.500 (dim 0 split; 1-row tensors on rank 0)
            assert 0.45 * full[key] <= s[key] <= 0.55 * full[key], (key, s, full)


def test_moco_momentum_update_on_shards_equals_ddp(fsdp):
    out, _, rep = fsdp
    got, ref = logged(out / "moco_fsdp"), logged(out / "moco_ddp")
    assert len(got) == MOCO["steps"]
    assert max(rel(h["loss"], r["loss"]) for h, r in zip(got, ref)) < 1e-5  # measured: equal
    f, d = ckpt(out / "moco_fsdp", MOCO["steps"])["model"], ckpt(out / "moco_ddp", MOCO["steps"])["model"]
    moved = 0.0
    for k in d:
        if k.startswith("momentum_encoder.") and d[k].is_floating_point():
            torch.testing.assert_close(f[k], d[k], rtol=1e-5, atol=1e-6, msg=k)  # measured: equal
            moved = max(moved, (d[k] - d[k.replace("momentum_encoder.", "base_encoder.")]).abs().max().item())
    assert moved > 0  # the momentum encoder is an EMA, not a copy, of the base encoder
    assert rep["moco_export"]  # pretrain.pth written from the handed-back plain module


def test_partial_finetuning_under_fsdp_equals_ddp(fsdp):
    out, _, rep = fsdp
    got, ref = logged(out / "cls_fsdp"), logged(out / "cls_ddp")
    assert len(got) == 20  # 2 epochs of 160 images at global batch 16
    assert max(rel(h["loss"], r["loss"]) for h, r in zip(got, ref)) < 1e-5  # measured: equal
    assert [h["lr"] for h in got] == [h["lr"] for h in ref]
    assert rep["cls"]["cls_fsdp"] == rep["cls"]["cls_ddp"]  # top-1 / top-5 over both ranks' shards
    f, d = ckpt(out / "cls_fsdp", 20), ckpt(out / "cls_ddp", 20)
    assert f["optimizer"]["param_groups"] == d["optimizer"]["param_groups"]  # the layer-decay groups, mapped
    assert len(f["optimizer"]["param_groups"]) > 2


def test_fsdp_flag_on_the_command_line():
    from bench.cli import _train_kwargs, build_parser

    argv = ["pretrain", "--method", "mae", "--out", "x", "--fsdp", "--grad-checkpointing"]
    kw = _train_kwargs(build_parser(argv).parse_args(argv))
    assert kw["fsdp"] is True and kw["grad_checkpointing"] is True
    assert "fsdp" not in _train_kwargs(build_parser(argv[:5]).parse_args(argv[:5]))  # unset: the engine's default
    argv = ["cls", "--protocol", "finetune", "--dataset", "folder", "--data-root", "d", "--backbone", "b"]
    assert build_parser(argv).parse_args(argv + ["--fsdp"]).fsdp is True
    assert build_parser(argv).parse_args(argv).fsdp is False


if __name__ == "__main__":
    from conftest import torchrun_worker_main

    torchrun_worker_main(worker)
