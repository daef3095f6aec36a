"""Scale-out of the pretrainers: under DDP, MoCo v3 (keys gathered over ranks, BatchNorm synchronised)
and MAE (mask noise drawn per sample in the data pipeline) give the numbers of one process with the
global batch; the CPU/gloo SyncBatchNorm equals ``nn.BatchNorm`` on the concatenated batch.

As in ``tests/test_distributed.py`` this file is also the torchrun worker: one launch
(``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_distributed_pretrain.py
OUT``, gloo, one thread per process) runs every scenario with the real ``pretrain_mocov3`` and
``pretrain_mae``; the tests compare its outputs with single-process runs done here.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # as a torchrun worker script
    sys.path.insert(0, str(REPO))

from dist_helpers import logged, without_zero_gradient  # noqa: E402
from dist_helpers import rel as rel_diff  # noqa: E402

from backbones.pretrainers.mae import build_mae, pretrain_mae  # noqa: E402
from backbones.pretrainers.mocov3 import pretrain_mocov3  # noqa: E402

ARCH = "vit_test_patch8"  # 32 px, 16 patches, width 32
B, STEPS = 8, 6  # per-rank batch (the single process gets 2 B); 6 steps cross an epoch (64 / 16 = 4 per epoch)
MOCO = dict(epoch_size=64, dim=8, mlp_dim=16, steps=STEPS, lr=1e-3, warmup_steps=2, progress=False, resume=False)
MAE = dict(epoch_size=64, steps=STEPS, lr=2e-3, warmup_steps=2, progress=False, resume=False)
BN_STEPS = 2


def bn_modules():
    """A BatchNorm1d with affine parameters (momentum 0.1) and a BatchNorm2d without (cumulative
    average: momentum None), with non-trivial affine values."""
    torch.manual_seed(3)
    mods = nn.ModuleList([nn.BatchNorm1d(6), nn.BatchNorm2d(3, affine=False, momentum=None)])
    with torch.no_grad():
        mods[0].weight.copy_(torch.randn(6))
        mods[0].bias.copy_(torch.randn(6))
    return mods


def bn_data():
    """Per step: inputs of both modules (global batch 2 B, not centred) and the weights of a linear loss."""
    g = torch.Generator().manual_seed(11)
    return [
        (
            torch.randn(2 * B, 6, generator=g) * 3 + 2,
            torch.randn(2 * B, 3, 4, 4, generator=g) - 1,
            torch.randn(2 * B, 6, generator=g),
            torch.randn(2 * B, 3, 4, 4, generator=g),
        )
        for _ in range(BN_STEPS)
    ]


def bn_run(mods, rows):
    """Train-mode forward + backward of ``sum(y * w)`` on the batch rows ``rows`` for every step, then
    an eval-mode forward; returns outputs, input gradients, affine gradients and the buffers."""
    res = {"y": [], "dx": [], "dw": [], "db": []}
    for x1, x2, w1, w2 in bn_data():
        x1, x2 = x1[rows].requires_grad_(), x2[rows].requires_grad_()
        mods.train().zero_grad()
        y1, y2 = mods[0](x1), mods[1](x2)
        ((y1 * w1[rows]).sum() + (y2 * w2[rows]).sum()).backward()
        res["y"].append([y1.detach(), y2.detach()])
        res["dx"].append([x1.grad, x2.grad])
        res["dw"].append(mods[0].weight.grad.clone())
        res["db"].append(mods[0].bias.grad.clone())
    x1, x2 = bn_data()[0][:2]
    with torch.no_grad():
        res["eval"] = [mods.eval()[0](x1[rows]), mods[1](x2[rows])]
    res["state"] = {k: v.clone() for k, v in mods.state_dict().items()}
    return res


# ------------------------------------------------------------------------------------------------
# The worker (one process of the torchrun launch)
# ------------------------------------------------------------------------------------------------
def worker(out: Path):
    from bench.core.distributed import convert_sync_batchnorm, gather_objects, init_distributed

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    assert world == 2

    mods = convert_sync_batchnorm(bn_modules())
    bn = bn_run(mods, slice(rank * B, (rank + 1) * B))
    bn["types"] = [type(m).__name__ for m in mods]
    bn = gather_objects(bn)

    pretrain_mocov3(ARCH, out / "moco", batch_size=B, **MOCO)
    pretrain_mae(ARCH, out / "mae", batch_size=B, **MAE)
    if rank == 0:
        torch.save(bn, out / "bn.pth")


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_pretrain")
    from conftest import run_torchrun

    run_torchrun(Path(__file__).resolve(), out)
    return out


def final_state(out):
    return torch.load(Path(out) / f"checkpoint-{STEPS:07d}.pth", weights_only=False)["model"]


def assert_same_trajectory(got, ref, rel=1e-5):
    assert [h["step"] for h in got] == [h["step"] for h in ref] == list(range(1, STEPS + 1))
    for h, r in zip(got, ref):
        assert rel_diff(h["loss"], r["loss"]) <= rel, (h, r)
        assert h["lr"] == r["lr"] and h["epoch"] == r["epoch"]


def assert_same_states(got, ref):
    assert got.keys() == ref.keys()
    for k in ref:  # measured: max difference 5e-7 (MoCo v3 and MAE)
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=5e-6, msg=k)


def test_sync_batchnorm_on_gloo_equals_batchnorm_on_the_whole_batch(ddp):
    r0, r1 = torch.load(ddp / "bn.pth", weights_only=False)
    assert r0["types"] == r1["types"] == ["GlooSyncBatchNorm1d", "GlooSyncBatchNorm2d"]
    ref = bn_run(bn_modules(), slice(None))  # plain BatchNorm, one process, the concatenated batch
    for s in range(BN_STEPS):
        for i in range(2):
            torch.testing.assert_close(torch.cat([r0["y"][s][i], r1["y"][s][i]]), ref["y"][s][i], rtol=0, atol=2e-6)
            torch.testing.assert_close(torch.cat([r0["dx"][s][i], r1["dx"][s][i]]), ref["dx"][s][i], rtol=0, atol=2e-6)
        # the affine gradient of the summed loss: each rank holds its rows' part, DDP would average
        torch.testing.assert_close(r0["dw"][s] + r1["dw"][s], ref["dw"][s], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r0["db"][s] + r1["db"][s], ref["db"][s], rtol=1e-5, atol=1e-5)
    assert r0["state"].keys() == r1["state"].keys() == ref["state"].keys()  # state-dict keys unchanged
    for k, v in ref["state"].items():  # running mean / unbiased var with the global count, batches tracked
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-6, atol=1e-6, msg=k)
        torch.testing.assert_close(r1["state"][k], v, rtol=1e-6, atol=1e-6, msg=k)
    assert int(ref["state"]["1.num_batches_tracked"]) == BN_STEPS
    for i in range(2):  # eval mode: plain BatchNorm with the (global) running statistics
        torch.testing.assert_close(torch.cat([r0["eval"][i], r1["eval"][i]]), ref["eval"][i], rtol=0, atol=2e-6)
    # the check has teeth: per-rank statistics are far from the global ones here
    local = bn_run(bn_modules(), slice(0, B))
    assert (local["y"][0][0] - ref["y"][0][0][:B]).abs().max() > 0.05


@pytest.fixture(scope="module")
def single_moco(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("moco_single")
    pretrain_mocov3(ARCH, out, batch_size=2 * B, **MOCO)
    return out


def test_mocov3_two_ranks_equal_one_process_with_the_global_batch(ddp, single_moco):
    from backbones.pretrainers.common import encoder_config
    from backbones.pretrainers.mocov3 import MoCoV3

    ref, got = logged(single_moco), logged(ddp / "moco")
    # the same 16 keys per query on both sides (the ranks' 8 each, gathered), BN over all 16
    assert_same_trajectory(got, ref)
    assert ref[-1]["loss"] < ref[0]["loss"]

    # the whole final model: both encoders, projectors, predictor and the BN running statistics.
    # The final LayerNorm bias only shifts the input of a bias-free Linear followed by BatchNorm,
    # which removes the shift: zero gradient (and the projector's first BN running mean follows it).
    models, grads = [], None
    for state in (final_state(single_moco), final_state(ddp / "moco")):
        m = MoCoV3(encoder_config("mocov3", ARCH), dim=MOCO["dim"], mlp_dim=MOCO["mlp_dim"])
        m.load_state_dict(state)
        models.append(m)
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(2 * B, 3, 32, 32, generator=g), torch.randn(2 * B, 3, 32, 32, generator=g)
    losses = [m(x1, x2) for m in models]  # training mode, as in pretraining
    losses[0].backward()
    grads = {n: p.grad.abs().max() for n, p in models[0].named_parameters() if p.grad is not None}
    key_grads = [
        p.grad[32:64].abs().max()
        for n, p in models[0].named_parameters()
        if n.startswith("base_encoder.") and n.endswith("qkv.bias")
    ]
    # measured: 7e-8 and 4e-8 against a largest gradient of 6
    assert max(grads["base_encoder.norm.bias"], *key_grads) < 1e-6 * max(grads.values())
    assert rel_diff(losses[0].item(), losses[1].detach().item()) < 1e-5  # same training-mode loss on a fixed batch
    drop = {
        "base_encoder.norm.bias",
        "momentum_encoder.norm.bias",
        "base_encoder.head.1.running_mean",
        "momentum_encoder.head.1.running_mean",
    }
    assert_same_states(
        without_zero_gradient(final_state(ddp / "moco"), drop), without_zero_gradient(final_state(single_moco), drop)
    )
    exported = torch.load(ddp / "moco" / "pretrain.pth", weights_only=True)["model"]  # rank 0 wrote it
    torch.testing.assert_close(
        exported["blocks.0.mlp.fc1.weight"],
        final_state(single_moco)["base_encoder.blocks.0.mlp.fc1.weight"],
        rtol=1e-5,
        atol=5e-6,
    )


@pytest.fixture(scope="module")
def single_mae(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("mae_single")
    pretrain_mae(ARCH, out, batch_size=2 * B, **MAE)
    return out


def test_mae_two_ranks_equal_one_process_with_the_global_batch(ddp, single_mae):
    # no masks passed in by hand: pretrain_mae's data pipeline draws each sample's mask noise
    ref, got = logged(single_mae), logged(ddp / "mae")
    assert_same_trajectory(got, ref)
    assert ref[-1]["loss"] < ref[0]["loss"]
    assert_same_states(without_zero_gradient(final_state(ddp / "mae")), without_zero_gradient(final_state(single_mae)))


def test_without_a_process_group_nothing_changes(one_thread):
    from backbones.pretrainers.mae import MaskNoise
    from bench.core.distributed import all_gather_nograd, convert_sync_batchnorm
    from bench.core.engine import SeededDataset

    assert not torch.distributed.is_initialized()
    mods = bn_modules()
    assert convert_sync_batchnorm(mods) is mods and [type(m) for m in mods] == [nn.BatchNorm1d, nn.BatchNorm2d]
    x = torch.randn(4, 3, requires_grad=True)
    g = all_gather_nograd(x)
    assert torch.equal(g, x) and not g.requires_grad
    # a sample's mask noise follows from its (seed, epoch, position) seed only
    ds = SeededDataset(MaskNoise([torch.zeros(3, 32, 32)] * 4, build_mae(ARCH).pos_grid[0] ** 2))
    (_, n1), (_, n2), (_, n3) = ds[(1, 42)], ds[(1, 42)], ds[(2, 43)]
    assert n1.shape == (16,) and torch.equal(n1, n2) and not torch.equal(n1, n3)


if __name__ == "__main__":
    from conftest import torchrun_worker_main

    torchrun_worker_main(worker)
