"""The training engine: loss goes down, resume is exact, checkpoints are safe, numerics guarded."""

import json
import os

import pytest
import torch

from backbones.pretrainers.mae import build_mae, pretrain_mae
from bench.core.data import pretrain_dataset
from bench.core.engine import EpochBatchSampler, RunBatchSampler, TrainConfig, fit, lr_at
from bench.core.errors import NonFiniteLossError


def _losses(d):
    return [json.loads(l)["loss"] for l in open(os.path.join(d, "log.jsonl"))]


def test_tiny_mae_pretraining_on_embedded_photos_decreases_loss(tmp_path):
    path = pretrain_mae(
        "vit_test_patch8", tmp_path, steps=60, batch_size=16, blr=5e-3, warmup_steps=5, epoch_size=256, progress=False
    )
    h = _losses(tmp_path)
    assert len(h) == 60
    first, last = sum(h[:10]) / 10, sum(h[-10:]) / 10
    # measured: ~1.23 -> ~0.98 (norm-pix MSE); require a clear drop
    assert last < first - 0.1, (first, last)
    assert path.exists()


class Crash(Exception):
    pass


def _run(out, crash_at=None, workers=0, steps=12):
    torch.manual_seed(0)
    model = build_mae("vit_test_patch8")
    calls = {"n": 0}

    def loss_fn(m, x):
        calls["n"] += 1
        if crash_at and calls["n"] == crash_at:
            raise Crash
        return m(x, 0.75)[0], {}

    cfg = TrainConfig(
        out_dir=str(out),
        steps=steps,
        batch_size=8,
        blr=1e-3,
        warmup_steps=2,
        ckpt_every=5,
        progress=False,
        num_workers=workers,
    )
    try:
        fit(model, pretrain_dataset("embedded", 32, 32), loss_fn, cfg)
    except Crash:
        return None
    return model


def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
    a = _run(tmp_path / "a")
    assert _run(tmp_path / "b", crash_at=8) is None  # dies in step 8; checkpoint of step 5 exists
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-0000005.pth"]
    b = _run(tmp_path / "b", workers=2)  # resume, with worker processes this time
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert len(list((tmp_path / "b").glob("checkpoint-*"))) == 2  # keep_last


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    _run(tmp_path / "a")
    original = _losses(tmp_path / "a")
    ckpts = sorted((tmp_path / "a").glob("checkpoint-*"))
    assert [p.name for p in ckpts] == ["checkpoint-0000010.pth", "checkpoint-0000012.pth"]
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="falling back"):
        _run(tmp_path / "a", steps=12)  # resumes from step 10 and redoes steps 11-12
    assert _losses(tmp_path / "a") == original


def test_nonfinite_loss_stops_with_state(tmp_path):
    model = build_mae("vit_test_patch8")

    def loss_fn(m, x):
        loss = m(x, 0.75)[0]
        return loss * float("nan"), {"recon": 1.0}

    cfg = TrainConfig(out_dir=str(tmp_path), steps=5, batch_size=8, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0 .*recon"):
        fit(model, pretrain_dataset("embedded", 32, 32), loss_fn, cfg)
    assert list(tmp_path.glob("checkpoint-*"))  # state saved for inspection

    cfg = TrainConfig(out_dir=str(tmp_path / "skip"), steps=3, batch_size=8, progress=False, max_nonfinite=5)
    with pytest.warns(UserWarning, match="step skipped"):
        fit(build_mae("vit_test_patch8"), pretrain_dataset("embedded", 32, 32), loss_fn, cfg)


def test_sampler_shards_global_batches_like_one_process():
    one = list(EpochBatchSampler(40, 8, seed=3, epoch=1, world=1))
    r0 = list(EpochBatchSampler(40, 4, seed=3, epoch=1, rank=0, world=2))
    r1 = list(EpochBatchSampler(40, 4, seed=3, epoch=1, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(EpochBatchSampler(40, 8, seed=3, epoch=1, start=2)) == one[2:]


def test_run_sampler_is_the_epochs_back_to_back_from_any_start():
    epochs = [b for e in range(4) for b in EpochBatchSampler(40, 4, seed=3, epoch=e, rank=1, world=2)]
    assert len(epochs) == 20  # 5 global batches per epoch
    assert list(RunBatchSampler(40, 4, seed=3, start=0, count=20, rank=1, world=2)) == epochs
    # a resumed run (start mid-epoch 1) sees exactly what the uninterrupted run saw from there
    assert list(RunBatchSampler(40, 4, seed=3, start=7, count=9, rank=1, world=2)) == epochs[7:16]
    assert len(RunBatchSampler(40, 4, seed=3, start=7, count=9, rank=1, world=2)) == 9
    assert list(RunBatchSampler(40, 4, seed=3, start=7, count=0, rank=1, world=2)) == []


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_global_batch_and_lr_printed(tmp_path, capsys):
    cfg = TrainConfig(out_dir=str(tmp_path), steps=1, batch_size=4, accum_iter=2, blr=1.0, progress=False)
    fit(build_mae("vit_test_patch8"), pretrain_dataset("embedded", 32, 16), lambda m, x: (m(x)[0], {}), cfg)
    out = capsys.readouterr().out
    assert "global batch 8" in out and "lr 0.0312" in out  # 1.0 x 8 / 256


def test_fused_adamw_matches_the_reference_loop():
    """The engine uses torch's fused AdamW (3x faster on CPU); it must give the same updates."""
    from bench.core.engine import make_optimizer, param_groups

    torch.manual_seed(0)
    a, b = build_mae("vit_test_patch8"), build_mae("vit_test_patch8")
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(out_dir="unused")
    opt_a = make_optimizer(param_groups(a, 0.05), cfg, 1e-3)
    opt_b = torch.optim.AdamW(param_groups(b, 0.05), lr=1e-3, betas=cfg.betas, foreach=False)
    assert opt_a.defaults["fused"] and not opt_b.defaults.get("fused")
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            torch.manual_seed(1)
            m(x)[0].backward()
            o.step()
            o.zero_grad()
    # Compare outputs, not raw weights: the key part of qkv.bias has a zero gradient up to float noise,
    # which Adam normalises to full-size steps that differ between implementations yet change nothing.
    a.eval(), b.eval()
    y = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    la, pa, _ = a(y, 0.75, noise)
    lb, pb, _ = b(y, 0.75, noise)
    torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=1e-5)
    changed = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k]) and "qkv.bias" not in k]
    for k in changed:
        torch.testing.assert_close(a.state_dict()[k], b.state_dict()[k], atol=1e-6, rtol=1e-5, msg=k)


def test_malloc_tuning_is_applied_on_glibc():
    """bench.core.cpu_tuning keeps multi-MB tensors on the heap (+14% bf16 img/s for the MAE step here)."""
    import platform

    from bench.core.cpu_tuning import tune_malloc

    ok = tune_malloc()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok


def test_compiled_forward_trains_like_eager_and_keeps_checkpoint_names(tmp_path):
    """--compile wraps only the forward: same losses (eager backend: same kernels), same state-dict keys."""

    def run(out, backend):
        torch.manual_seed(0)
        model = build_mae("vit_test_patch8")
        cfg = TrainConfig(out_dir=str(out), steps=3, batch_size=4, progress=False, compile=backend)
        fit(model, pretrain_dataset("embedded", 32, 16), lambda m, x: (m(x, 0.75)[0], {}), cfg)
        return _losses(out), torch.load(sorted(out.glob("checkpoint-*"))[-1], weights_only=True)["model"]

    eager_losses, eager_sd = run(tmp_path / "eager", None)
    comp_losses, comp_sd = run(tmp_path / "compiled", "eager")
    assert comp_losses == eager_losses
    assert list(comp_sd) == list(eager_sd)


def _amp_run(out, resume=True, crash_at=None, **kw):
    torch.manual_seed(0)
    model = build_mae("vit_test_patch8")
    calls = {"n": 0}

    def loss_fn(m, x):
        calls["n"] += 1
        if crash_at and calls["n"] == crash_at:
            raise Crash
        return m(x, 0.75)[0], {"mean": x.mean()}

    cfg = TrainConfig(
        out_dir=str(out), steps=6, batch_size=8, blr=1e-3, warmup_steps=1, ckpt_every=3, progress=False, **kw
    )
    try:
        return fit(model, pretrain_dataset("embedded", 32, 32), loss_fn, cfg, resume=resume)
    except Crash:
        return None


def test_fp16_with_grad_scaler_trains_and_resumes_exactly(tmp_path, capsys):
    """The fp16 path (GPUs without bf16): autocast in fp16, the loss scaled by a GradScaler whose
    state is checkpointed; on CPU its numbers stay close to fp32, and a resumed run repeats the
    uninterrupted one."""
    _amp_run(tmp_path / "fp32", amp=False)
    res = _amp_run(tmp_path / "fp16", amp=True, amp_dtype="fp16")
    out = capsys.readouterr().out
    assert "device cpu, dtype fp16, world 1, backend none" in out
    assert "device cpu, dtype fp32, world 1, backend none" in out
    ref, half = _losses(tmp_path / "fp32"), _losses(tmp_path / "fp16")
    assert res.steps == 6 and half != ref and half == pytest.approx(ref, rel=2e-2)
    state = torch.load(tmp_path / "fp16" / "checkpoint-0000006.pth", weights_only=False)
    assert state["scaler"]["scale"] == 65536.0  # no overflow at this scale, so never lowered
    assert state["scaler"]["_growth_tracker"] == 6
    assert _amp_run(tmp_path / "cut", amp=True, amp_dtype="fp16", crash_at=5) is None
    _amp_run(tmp_path / "cut", amp=True, amp_dtype="fp16")
    assert _losses(tmp_path / "cut") == half


def test_bf16_alias_and_cpu_default(tmp_path, capsys):
    _amp_run(tmp_path / "a", bf16=True)
    _amp_run(tmp_path / "b", amp=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert capsys.readouterr().out.count("dtype bf16") == 2


class _Rows(torch.utils.data.Dataset):
    """The same rows as a TensorDataset, but not one: the DataLoader path (per-sample seeding)."""

    def __init__(self, *tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)


def test_tensor_datasets_take_the_plain_indexing_path_with_the_same_result(tmp_path, monkeypatch):
    from bench.core import samplers

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))

    def loss_fn(m, batch):
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(m(inputs), labels), {}

    def train(dataset, out):
        torch.manual_seed(1)
        head = torch.nn.Linear(8, 4)
        cfg = TrainConfig(out_dir=str(out), batch_size=16, steps=12, blr=0.1, progress=False)
        fit(head, dataset, loss_fn, cfg)
        return head.weight.detach().clone()

    seeded = []
    real = samplers.SeededDataset.__getitem__
    monkeypatch.setattr(samplers.SeededDataset, "__getitem__", lambda self, key: seeded.append(key) or real(self, key))
    plain = train(torch.utils.data.TensorDataset(x, y), tmp_path / "tensor")
    assert seeded == []  # no per-sample seeding for a TensorDataset
    wrapped = train(_Rows(x, y), tmp_path / "rows")
    assert len(seeded) == 12 * 16  # the DataLoader path seeds every sample
    torch.testing.assert_close(plain, wrapped, rtol=0, atol=0)  # same batches, same order, same weights
