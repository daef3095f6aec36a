"""Dense-task evaluation gathered over ranks equals one process: ADE20K mIoU (mmseg ``IoUMetric``
behind mmengine's evaluator) and COCO box/mask AP (our ``BenchCocoMetric``), with the same weights,
once on one process and once on two (``torchrun``, gloo, mmengine launcher ``pytorch``).

The validation sets have an odd number of images, so mmengine's ``DefaultSampler`` pads the last
shard and ``collect_results`` must drop the padding: a duplicated or lost image would change the
numbers. Both runs load one fixed set of weights (``load_from``), written by the single process.

This file is also the worker script: ``python tests/test_dense_distributed.py OUT ADE COCO``, launched
with ``torch.distributed.run --nproc_per_node 1`` and then ``2``.
"""

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # as a torchrun worker script
    sys.path.insert(0, str(REPO))

BACKBONE = "random_vit_test_patch8"


def evaluate(cfg, weights: Path, loop: str) -> dict:
    """``runner.val()`` / ``.test()`` of ``cfg`` with ``weights``; the single process (which runs
    first) trains them briefly, so that predictions are not all one wrong class."""
    import copy

    import torch

    from tasks.dense.mm_runner import DenseRunner

    world = os.environ.get("WORLD_SIZE", "1")
    if not weights.exists():
        train = copy.deepcopy(cfg)
        train.experiment_name = f"{loop}_train"
        runner = DenseRunner.from_cfg(train)
        runner.train()
        torch.save({"state_dict": runner.model.state_dict()}, weights)
    cfg.resume, cfg.load_from, cfg.experiment_name = False, str(weights), f"{loop}{world}"
    runner = DenseRunner.from_cfg(cfg)
    return {k: float(v) for k, v in getattr(runner, loop)().items()}


def seg_metrics(out: Path, ade: Path, weights: Path) -> dict:
    from mmseg.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401
    from tasks.dense.mmengine_compat import enable_mmengine_checkpoints
    from tasks.segmentation.run import load_config

    register_all_modules(init_default_scope=True)
    enable_mmengine_checkpoints()
    cfg = load_config(
        "smoke", backbone=BACKBONE, data_root=ade, work_dir=out / "seg", crop_size=64, iters=30, resume=False
    )
    return evaluate(cfg, weights, "val")


def det_metrics(out: Path, coco: Path, weights: Path) -> dict:
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401
    import tasks.detection.mmdet_plugins  # noqa: F401
    from tasks.dense.mmengine_compat import enable_mmengine_checkpoints
    from tasks.detection.run import check_coco_root, load_config, prepare_config, resolve_config

    register_all_modules(init_default_scope=False)
    enable_mmengine_checkpoints()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    path, _ = resolve_config("smoke", "fpn", "vit_test_patch8")
    cfg = load_config(path)
    dets = out / f"dets{world}.json"
    prepare_config(
        cfg,
        path,
        backbone=BACKBONE,
        checkpoint=None,
        data=check_coco_root(coco),
        data_root=coco,
        work_dir=out / "det",
        seed=0,
        iters=1,
        batch_size=2,
        ckpt_interval=None,
        trust_checkpoint=False,
        dets_out=dets,
        world_size=world,
    )
    # every detection kept (one training step: scores are low): the gathered lists must match in full
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    metrics = evaluate(cfg, weights, "test")
    if int(os.environ.get("RANK", "0")) == 0:
        metrics["dets"] = json.loads(dets.read_text())
    return metrics


def worker(out: Path, ade: Path, coco: Path):
    import torch

    from bench.core.distributed import gather_objects

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    report = {
        "out": str(out),
        "seg": seg_metrics(out / f"w{world}", ade, out / "seg_weights.pth"),
        "det": det_metrics(out / f"w{world}", coco, out / "det_weights.pth"),
    }
    if world == 2:  # `bench seg` / `bench det` end to end under torchrun: DDP training, one row each
        from tasks.detection.task import run_coco
        from tasks.segmentation.run import run_segmentation, seg_run
        from tasks.spec import TransferRun

        rows = out / "rows.jsonl"
        report["seg_row"] = (
            run_segmentation(
                seg_run(
                    BACKBONE, None, ade, config="smoke", iters=2, crop_size=64, work_dir=out / "seg_run", results=rows
                )
            )
            is not None
        )
        report["det_row"] = (
            run_coco(
                TransferRun(
                    task="coco",
                    protocol="maskrcnn_fpn",
                    backbone=BACKBONE,
                    checkpoint=None,
                    data_root=coco,
                    work_dir=out / "det_run",
                    seed=0,
                    suite="adhoc",
                    config="smoke",
                    iters=2,
                    batch_size=2,
                    results=rows,
                    options={"variant": "fpn"},
                )
            )
            is not None
        )
        report["rows"] = gather_objects((report["seg_row"], report["det_row"]))
    if int(os.environ.get("RANK", "0")) == 0:
        (out / f"report{world}.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from tasks.detection.coco_data import make_coco_dataset
    from tasks.segmentation.ade_data import make_ade20k_dataset

    out = tmp_path_factory.mktemp("dense_ddp")
    ade, coco = out / "ade", out / "coco"
    make_ade20k_dataset(ade, n_train=4, n_val=5, image_size=(64, 64), seed=0)
    ade = ade / "ADEChallengeData2016"
    make_coco_dataset(coco, n_train=4, n_val=5, image_size=(64, 64), seed=0)
    from conftest import run_torchrun

    script = Path(__file__).resolve()
    run_torchrun(script, out, ade, coco, nproc=1, timeout=600)  # first: it writes the weights both runs load
    run_torchrun(script, out, ade, coco, timeout=600)
    return [json.loads((out / f"report{w}.json").read_text()) for w in (1, 2)]


def test_miou_gathered_over_two_ranks_equals_one_process(reports):
    one, two = (r["seg"] for r in reports)
    assert "mIoU" in one and one["aAcc"] > 0  # a real confusion matrix, not an empty one
    assert two == one


def test_coco_ap_gathered_over_two_ranks_equals_one_process(reports):
    one, two = (r["det"] for r in reports)
    # every image's detections once: nothing lost with the padded shard, nothing counted twice
    key = lambda d: (d["image_id"], -d["score"], d["category_id"], d["bbox"])  # noqa: E731
    d1, d2 = sorted(one.pop("dets"), key=key), sorted(two.pop("dets"), key=key)
    assert len({d["image_id"] for d in d1}) == 5 and len(d1) > 100
    assert d2 == d1
    assert json.dumps(two) == json.dumps(one)  # every AP / AR (NaN where an area range is empty)


def test_seg_and_det_train_under_torchrun_on_cpu_and_rank_0_alone_writes_the_row(reports, tmp_path_factory):
    two = reports[1]
    assert two["rows"] == [[True, True], [False, False]]  # the row comes back on rank 0 only
    out = Path(two["out"])
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["task"] for r in rows) == ["ade20k", "coco"]
    det = next(r for r in rows if r["task"] == "coco")
    assert det["extra"]["world_size"] == 2 and det["iterations"] == 2


# ------------------------------------------------------------------------------------------------
# A non-finite loss on one rank stops every rank at the same iteration (no rank left waiting)
# ------------------------------------------------------------------------------------------------
def nonfinite_worker(out: Path):
    """A toy mmengine run under DDP (gloo) whose loss is NaN on rank 1 only, at iteration 2: each
    rank writes the one line the CLI would print, then leaves with the CLI's exit code."""
    import torch
    import torch.nn as nn
    from mmengine.config import Config
    from mmengine.model import BaseModel
    from mmengine.registry import DATASETS, MODELS

    from bench.core.distributed import exit_distributed
    from bench.core.errors import BenchError, first_line
    from tasks.dense.mm_runner import run_dense

    rank = int(os.environ["RANK"])

    @MODELS.register_module(name="BenchNaNOnRank1", force=True)
    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear, self.calls = nn.Linear(4, 1), 0

        def forward(self, inputs, labels, mode="tensor"):
            self.calls += 1
            loss = ((self.linear(inputs).squeeze(1) - labels) ** 2).mean()
            return {"loss": loss * (float("nan") if rank == 1 and self.calls == 2 else 1.0)}

    @DATASETS.register_module(name="BenchNaNData", force=True)
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"inputs": torch.full((4,), float(i)), "labels": torch.tensor(float(i % 2))}

    cfg = Config(
        dict(
            model=dict(type="BenchNaNOnRank1"),
            work_dir=str(out / "work"),
            launcher="pytorch",
            train_dataloader=dict(
                dataset=dict(type="BenchNaNData"),
                sampler=dict(type="InfiniteSampler", shuffle=False),
                batch_size=2,
                num_workers=0,
                collate_fn=dict(type="default_collate"),
            ),
            train_cfg=dict(type="IterBasedTrainLoop", max_iters=5),
            optim_wrapper=dict(optimizer=dict(type="SGD", lr=1e-3)),
            default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=10)),
            log_processor=dict(by_epoch=False),
        )
    )
    try:
        run_dense(cfg, name="nan", record={}, resume=False, register=lambda: None, evaluate=lambda runner: {})
        line, code = "finished", 0
    except BenchError as e:
        line, code = f"error: {first_line(e)}", e.exit_code
    (out / f"rank{rank}.txt").write_text(line)
    exit_distributed(code)


def test_a_non_finite_loss_on_one_rank_stops_both_ranks_at_the_same_iteration(tmp_path):
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "BENCH_DIST_TIMEOUT_S": "120"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    t0 = time.time()
    p = subprocess.run(
        [*cmd, __file__, "nonfinite", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert time.time() - t0 < 110, "a rank waited for a peer that had stopped"
    assert p.returncode != 0
    lines = {r: (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    for r, line in lines.items():
        assert "\n" not in line and line.startswith("error: "), (r, p.stderr[-3000:])
        assert "non-finite loss at iteration 2" in line, line
    assert "loss=nan" in lines[1] and "loss=nan" not in lines[0]  # rank 0's own loss was finite


if __name__ == "__main__":
    from conftest import torchrun_worker_main

    if sys.argv[1] == "nonfinite":
        nonfinite_worker(Path(sys.argv[2]))
    else:
        torchrun_worker_main(worker)
