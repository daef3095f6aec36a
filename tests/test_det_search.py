"""COCO's searchable keys (paper A.3: lr, weight decay, drop path rate, fine-tuning epochs; and
iterations): a suite search point reaches each engine's config, built by that engine's own
``prepare`` (the config it trains from), with the searched value. The held-out selection of a COCO
search end to end is in tests/test_paper_twin.py."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest

from bench.core.errors import BenchError
from tasks.detection.coco_data import make_coco_dataset
from tasks.detection.protocol import PROTOCOL_OF_VARIANT, SEARCH_CFG, SEARCH_KEYS
from tasks.detection.task import COCO, coco_run
from tasks.spec import TransferRun

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.skipif(
        importlib.util.find_spec("detectron2") is None or importlib.util.find_spec("mmdet") is None,
        reason="needs both mmdet and detectron2 (bash scripts/setup.sh)",
    ),
]
POINT = {"lr": 3.7e-4, "weight_decay": 0.031, "drop_path": 0.23, "iters": 7}
N_TRAIN = 6


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("det") / "coco", n_train=N_TRAIN, n_val=2, image_size=(64, 64))


def det_run(coco, tmp_path, *, variant, engine, overrides, backbone="random_vit_base_patch16", config="vit_b", **kw):
    return TransferRun(
        task="coco",
        protocol=PROTOCOL_OF_VARIANT[variant],
        backbone=backbone,
        checkpoint=None,
        data_root=coco,
        work_dir=tmp_path / "wd",
        seed=0,
        suite="t",
        config=config,
        engine=engine,
        overrides=overrides,
        **kw,
    )


def prepared(run: TransferRun, engine: str):
    """The engine's filled config for ``run`` after the task's search mapping (what it would train)."""
    if engine == "mmdet":
        from tasks.detection.mmdet_run import prepare

        return prepare(coco_run(run, engine))
    from tasks.detection.detectron2.run import prepare

    return prepare(coco_run(run, engine))


def test_coco_declares_the_papers_search_keys_for_both_engines():
    assert COCO.search_keys == SEARCH_KEYS == ("lr", "weight_decay", "drop_path", "epochs", "iters")
    for engine in ("mmdet", "detectron2"):
        for variant in ("fpn", "vitdet"):
            assert set(SEARCH_CFG[engine][variant]) == {"lr", "weight_decay", "drop_path"}


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_each_key_reaches_the_mmdet_config(coco, tmp_path, variant):
    # batch 2 against the config's 64: the searched lr is the config batch's lr, scaled by mmengine
    job = prepared(det_run(coco, tmp_path, variant=variant, engine="mmdet", overrides=POINT, batch_size=2), "mmdet")
    cfg = job.cfg
    assert cfg.optim_wrapper.optimizer.lr == POINT["lr"] and job.facts["lr"] == POINT["lr"]
    assert cfg.auto_scale_lr == {"enable": True, "base_batch_size": 64}
    assert cfg.optim_wrapper.optimizer.weight_decay == POINT["weight_decay"]
    assert cfg.model.backbone.drop_path_rate == POINT["drop_path"]
    assert cfg.train_cfg.max_iters == POINT["iters"] and cfg.param_scheduler[-1].end == POINT["iters"]
    # the run's own cfg_options still come last
    run = det_run(coco, tmp_path, variant=variant, engine="mmdet", overrides=POINT, batch_size=2)
    job = prepared(replace(run, cfg_options={"optim_wrapper.optimizer.weight_decay": 0.5}), "mmdet")
    assert job.cfg.optim_wrapper.optimizer.weight_decay == 0.5 and job.cfg.model.backbone.drop_path_rate == 0.23


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
@pytest.mark.parametrize("backbone", ["random_vit_base_patch16", "mae_vit_base_patch16"])
def test_each_key_reaches_the_detectron2_config(coco, tmp_path, variant, backbone):
    # random init is in the FPN config's lr_by_init (1.6e-4), which detectron2 reads after the
    # overrides: the searched lr must win over it too
    run = det_run(
        coco, tmp_path, variant=variant, engine="detectron2", overrides=POINT, batch_size=2, backbone=backbone
    )
    job = prepared(run, "detectron2")
    cfg = job.cfg
    scaled = POINT["lr"] * 2 / 64  # detectron2's linear scaling to the run's batch
    assert cfg.optimizer.lr == pytest.approx(scaled, rel=1e-12) and job.lr == pytest.approx(scaled, rel=1e-12)
    assert cfg.optimizer.weight_decay == POINT["weight_decay"]
    node = cfg.model.backbone.bottom_up if variant == "fpn" else cfg.model.backbone
    assert node.drop_path_rate == POINT["drop_path"]
    assert cfg.train.max_iter == POINT["iters"] and cfg.lr_multiplier.scheduler.num_updates == POINT["iters"]


@pytest.mark.parametrize("engine", ["mmdet", "detectron2"])
def test_epochs_are_passes_over_train2017_at_the_runs_batch(coco, tmp_path, engine):
    n = len(json.loads((coco / "annotations/instances_train2017.json").read_text())["images"])
    assert n == N_TRAIN
    # the smoke config's own batch (2), then a given one (3)
    for batch, expected in ((None, round(5 * n / 2)), (3, round(5 * n / 3))):
        run = det_run(
            coco, tmp_path, variant="fpn", engine=engine, overrides={"epochs": 5}, config="smoke",
            backbone="random_vit_test_patch8", batch_size=batch,
        )  # fmt: skip
        job = prepared(run, engine)
        iters = job.cfg.train_cfg.max_iters if engine == "mmdet" else job.cfg.train.max_iter
        assert iters == expected


def test_bad_search_points_are_one_line_errors(coco, tmp_path):
    for overrides, message in (
        ({"epochs": 2, "iters": 3}, r"search keys 'iters' and 'epochs' both set the schedule"),
        ({"iters": 0}, r"search key 'iters' is 0: must be a positive integer"),
        ({"epochs": -1.0}, r"search key 'epochs' is -1.0: must be a positive number"),
        ({"momentum": 0.9}, r"search key 'momentum': COCO searches lr, weight_decay, drop_path, epochs, iters"),
    ):
        run = det_run(coco, tmp_path, variant="fpn", engine="mmdet", overrides=overrides, config="smoke")
        with pytest.raises(BenchError, match=message):
            coco_run(run, "mmdet")
    assert not (tmp_path / "wd").exists()


def test_a_plain_lr_override_wins_over_detectron2s_lr_by_init(coco, tmp_path):
    """`bench det --engine detectron2 ... optimizer.lr=X` for an init listed in the config's lr_by_init
    (random: 1.6e-4) trains at X, not at the table's value; without the override the table's."""
    run = det_run(coco, tmp_path, variant="fpn", engine="detectron2", overrides={}, batch_size=2)
    scale = 2 / 64  # linear scaling from the config's batch
    assert prepared(run, "detectron2").cfg.optimizer.lr == pytest.approx(1.6e-4 * scale, rel=1e-12)
    job = prepared(replace(run, cfg_options={"optimizer.lr": 5.5e-4}), "detectron2")
    assert job.cfg.optimizer.lr == pytest.approx(5.5e-4 * scale, rel=1e-12) == job.lr
