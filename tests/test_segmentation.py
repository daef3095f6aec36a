"""ADE20K UperNet on mmseg: the RegistryViT plugin, layer decay, the configs, a short run on
generated ADE20K-layout data with IoUMetric, mmengine resume, and input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, init_default_scope
from PIL import Image

import tasks.dense.mm_backbone  # noqa: F401  registers RegistryViT
from bench.core.errors import BenchError, DataError
from bench.core.results import ResultsStore, config_hash
from tasks.segmentation.ade_data import ADE20K_CLASSES, confusion_miou, make_ade20k_dataset
from tasks.segmentation.cli import add_seg_arguments
from tasks.segmentation.per_image import miou_percent
from tasks.segmentation.run import (
    CONFIGS,
    PER_EXAMPLE,
    RUN_RECORD,
    hashed_config,
    load_config,
    run_from_args,
    run_segmentation,
    seg_main,
    seg_run,
)

TINY = "random_vit_test_patch8"  # dim 32, depth 2, patch 8


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_ade20k_dataset(root, n_train=16, n_val=4, image_size=(64, 64), seed=0)
    return root  # the parent of ADEChallengeData2016, as a user may pass it


def tiny_segmentor_cfg(num_classes=150):
    norm = dict(type="BN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            size=(64, 64),
        ),
        backbone=dict(type="RegistryViT", name=TINY, img_size=64, variant="fpn", drop_path_rate=0.1, use_rel_pos=True),
        decode_head=dict(
            type="UPerHead",
            in_channels=[32] * 4,
            in_index=[0, 1, 2, 3],
            pool_scales=(1, 2, 3, 6),
            channels=32,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        auxiliary_head=dict(
            type="FCNHead",
            in_channels=32,
            in_index=2,
            channels=16,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def build_segmentor(cfg):
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS.build(cfg)


# ------------------------------------------------------------------------------------------------
# plugin + layer decay
# ------------------------------------------------------------------------------------------------


def test_registry_vit_in_a_plain_mmseg_config_trains_on_cpu():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    model = build_segmentor(tiny_segmentor_cfg())
    x = torch.randn(2, 3, 64, 64)
    feats = model.extract_feat(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    assert tuple(model(x, mode="tensor").shape) == (2, 150, 32, 32)  # UPerHead at stride 4 (patch 8)

    samples = []
    for i in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        label = torch.full((1, 64, 64), 255, dtype=torch.long)
        label[:, 8:40, 8:40] = 3 + i
        s.gt_sem_seg = PixelData(data=label)
        samples.append(s)
    losses = model.loss(x, samples)
    assert set(losses) >= {"decode.loss_ce", "aux.loss_ce"}
    total = losses["decode.loss_ce"] + losses["aux.loss_ce"]
    assert torch.isfinite(total)
    total.backward()
    enc = model.backbone.encoder
    for blk in enc.blocks:
        assert blk.attn.qkv.weight.grad.abs().sum() > 0
        assert blk.attn.relative_position_bias_table.grad is not None
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0


def test_with_cp_recomputes_the_encoder_blocks_and_changes_no_gradient():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    x = torch.randn(2, 3, 64, 64)
    samples = []
    for i in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 64, 64)))
        samples.append(s)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        cfg = tiny_segmentor_cfg()
        cfg["backbone"].update(with_cp=with_cp, drop_path_rate=0.0)
        model = build_segmentor(cfg)
        model.decode_head.dropout.p = model.auxiliary_head.dropout.p = 0.0
        assert all(getattr(b, "_grad_checkpointing", False) == with_cp for b in model.backbone.encoder.blocks)
        sum(v for k, v in model.loss(x, samples).items() if "loss" in k).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def _lr_by_param(optim_wrapper, model):
    by_id = {}
    for g in optim_wrapper.optimizer.param_groups:
        for p in g["params"]:
            by_id[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_layer_decay_gives_block_i_rate_to_the_depth_plus_one_minus_i_plus_one():
    from mmengine.optim import build_optim_wrapper

    model = build_segmentor(tiny_segmentor_cfg())
    base, rate, depth = 1e-3, 0.65, 2
    ow = build_optim_wrapper(
        model,
        dict(
            type="OptimWrapper",
            optimizer=dict(type="AdamW", lr=base, weight_decay=0.05),
            constructor="ViTLayerDecayOptimizerConstructor",
            paramwise_cfg=dict(num_layers=depth, layer_decay_rate=rate),
        ),
    )
    lrs = _lr_by_param(ow, model)
    for i in range(depth):
        lr, wd = lrs[f"backbone.pyramid.encoder.blocks.{i}.attn.qkv.weight"]
        assert lr == pytest.approx(base * rate ** (depth + 1 - (i + 1)))
        assert wd == 0.05
        assert lrs[f"backbone.pyramid.encoder.blocks.{i}.norm1.weight"] == (pytest.approx(lr), 0.0)  # 1-D: no decay
    assert lrs["backbone.pyramid.encoder.patch_embed.proj.weight"][0] == pytest.approx(base * rate ** (depth + 1))
    assert lrs["backbone.pyramid.encoder.pos_embed"] == (pytest.approx(base * rate ** (depth + 1)), 0.0)
    assert lrs["decode_head.conv_seg.weight"] == (pytest.approx(base), 0.05)
    assert lrs["backbone.pyramid.fpn1.0.weight"][0] == pytest.approx(base)  # the adapter trains at full lr


def test_paper_config_builds_vit_base_with_twelve_decayed_blocks():
    """The paper config as written (ViT-B/16 at 512, 768-channel UperNet): model + optimiser."""
    from mmengine.optim import build_optim_wrapper

    cfg = load_config(
        "paper_vit_base", backbone="random_vit_base_patch16", data_root="/nonexistent", work_dir="/nonexistent/work"
    )
    model = build_segmentor(cfg.model)
    enc = model.backbone.encoder
    assert (enc.depth, enc.embed_dim, tuple(enc.pos_grid)) == (12, 768, (32, 32))
    assert model.backbone.pyramid.out_indices == [3, 5, 7, 11]
    assert model.decode_head.channels == 768 and model.auxiliary_head.in_index == 2
    cfg.optim_wrapper.type = "OptimWrapper"
    cfg.optim_wrapper.pop("loss_scale")
    lrs = _lr_by_param(build_optim_wrapper(model, cfg.optim_wrapper), model)
    for i in range(12):
        assert lrs[f"backbone.pyramid.encoder.blocks.{i}.mlp.fc1.weight"][0] == pytest.approx(1e-4 * 0.65 ** (12 - i))


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------


def test_paper_configs_hold_the_protocol_values():
    cfg = load_config("paper_vit_base", backbone="random_vit_base_patch16", data_root="d", work_dir="w", seed=3)
    assert cfg.crop_size == (512, 512) and cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.train_dataloader.batch_size == 16
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.optim_wrapper.paramwise_cfg == dict(num_layers=12, layer_decay_rate=0.65)
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.end, warm.start_factor) == ("LinearLR", 1500, 1e-6)
    assert (poly.type, poly.power, poly.begin, poly.end, poly.eta_min) == ("PolyLR", 1.0, 1500, 160000, 0.0)
    bb = cfg.model.backbone
    assert (bb.drop_path_rate, bb.use_rel_pos, bb.variant, bb.img_size) == (0.1, True, "fpn", (512, 512))
    aux = cfg.model.auxiliary_head
    assert (aux.type, aux.in_index, aux.loss_decode.loss_weight) == ("FCNHead", 2, 0.4)
    assert cfg.model.decode_head.type == "UPerHead" and cfg.model.decode_head.num_classes == 150
    assert dict(cfg.model.test_cfg) == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert dict(type="LoadAnnotations", reduce_zero_label=True) in cfg.train_dataloader.dataset.pipeline
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset" and cfg.val_evaluator.type == "IoUMetric"
    assert cfg.randomness.seed == 3

    large = load_config("paper_vit_large", backbone="random_vit_large_patch16", data_root="d", work_dir="w")
    assert large.model.backbone.out_indices == [7, 11, 15, 23]
    assert large.optim_wrapper.paramwise_cfg.num_layers == 24
    assert large.model.decode_head.in_channels == [1024] * 4 and large.model.auxiliary_head.in_channels == 1024
    with pytest.raises(BenchError, match="key 'arch' is 'vit_base_patch16'.*vit_large_patch16"):
        load_config("paper_vit_base", backbone="random_vit_large_patch16", data_root="d", work_dir="w")


def test_iteration_and_crop_overrides_rescale_the_schedule_and_the_crop():
    cfg = load_config(
        "paper_vit_base", backbone="random_vit_base_patch16", data_root="d", work_dir="w", iters=1600, crop_size=256
    )
    warm, poly = cfg.param_scheduler
    assert (warm.end, poly.begin, poly.end) == (15, 15, 1600)  # warmup stays 1500/160000 of training
    assert cfg.train_cfg.val_interval == 1600 and cfg.default_hooks.checkpoint.interval == 1600
    crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t["type"] == "RandomCrop")
    resize = next(t for t in cfg.train_dataloader.dataset.pipeline if t["type"] == "RandomResize")
    assert crop["crop_size"] == (256, 256) and resize["scale"] == (1024, 256)
    assert cfg.model.test_cfg.stride == (170, 170) and cfg.model.backbone.img_size == (256, 256)


def test_channels_last_key_flag_and_auto_default(tmp_path):
    from tasks.dense.memory_format import resolve_channels_last

    kw = dict(backbone=TINY, data_root="d", work_dir="w")
    assert load_config("smoke", **kw).channels_last is None  # auto: the configs leave it to the device
    assert resolve_channels_last(None, "cuda") is True and resolve_channels_last(None, "cpu") is False
    assert resolve_channels_last(True, "cpu") is True and resolve_channels_last(False, "cuda") is False
    assert load_config("smoke", channels_last=True, **kw).channels_last is True
    assert _args(backbone=TINY, data_root="d").channels_last is None
    import argparse

    p = argparse.ArgumentParser()
    add_seg_arguments(p)
    assert p.parse_args(["--backbone", TINY, "--data-root", "d", "--no-channels-last"]).channels_last is False
    bad = tmp_path / "bad.py"
    bad.write_text(
        "_base_ = ['%s']\nchannels_last = 'yes'\n" % (Path(__file__).parents[1] / "tasks/segmentation/configs/smoke.py")
    )
    with pytest.raises(BenchError, match="key 'channels_last' must be true, false or null"):
        load_config(str(bad), trust_config=True, **kw)
    # not part of the protocol: the config hash is the same either way
    assert hashed_config(load_config("smoke", channels_last=True, **kw)) == hashed_config(load_config("smoke", **kw))


# ------------------------------------------------------------------------------------------------
# metric
# ------------------------------------------------------------------------------------------------


def test_confusion_miou_equals_mmseg_iou_metric():
    from mmseg.evaluation import IoUMetric

    rng = np.random.default_rng(0)
    preds, labels = [], []
    for i in range(3):
        label = rng.choice([0, 1, 3, 4, 13, 20], size=(24, 32)).astype(np.uint8)  # as on disk: 0 = other
        pred = np.where(
            rng.random((24, 32)) < 0.6,
            np.maximum(label.astype(int) - 1, 0),
            rng.choice([0, 2, 12, 19, 36, 149], size=(24, 32)),
        )  # some classes absent from gt
        preds.append(pred)
        labels.append(label)
    ours = confusion_miou(preds, labels)

    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=ADE20K_CLASSES)
    samples = []
    for pred, label in zip(preds, labels):
        reduced = np.where(label == 0, 255, label.astype(np.int64) - 1)  # what LoadAnnotations does
        samples.append(
            dict(
                pred_sem_seg=dict(data=torch.from_numpy(pred)[None]),
                gt_sem_seg=dict(data=torch.from_numpy(reduced)[None]),
            )
        )
    metric.process({}, samples)
    theirs = metric.compute_metrics(metric.results)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert abs(float(theirs[key]) - ours[key]) <= 0.01, key  # mmseg rounds to 2 decimals
    assert 0 < ours["mIoU"] < 100 and ours["aAcc"] > ours["mIoU"]


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------


def test_smoke_run_trains_evaluates_and_appends_a_row(ade_root, tmp_path):
    store = tmp_path / "results"
    work = tmp_path / "work"
    row = run_segmentation(
        seg_run(TINY, None, ade_root, config="smoke", seed=0, work_dir=work, results=store, suite="test")
    )
    assert (row["task"], row["protocol"], row["init"], row["backbone"]) == (
        "ade20k",
        "upernet",
        "random",
        "vit_test_patch8",
    )
    assert row["iterations"] == 30 and row["seed"] == 0 and row["suite"] == "test"
    m = row["metrics"]
    assert 0 < m["mIoU"] <= 100 and 0 < m["aAcc"] <= 100
    log = next(work.glob("*/*.log")).read_text()
    last_val = re.findall(r"Iter\(val\) \[4/4\]\s+aAcc: ([\d.]+)\s+mIoU: ([\d.]+)", log)[-1]
    assert (m["aAcc"], m["mIoU"]) == (float(last_val[0]), float(last_val[1]))  # IoUMetric's numbers
    assert "Iter(train) [30/30]" in log and (work / "iter_30.pth").is_file()
    assert row["extra"]["img_size"] == 64 and row["extra"]["start_iter"] == 0
    cfg = load_config("smoke", backbone=TINY, data_root=ade_root / "ADEChallengeData2016", work_dir=work)
    assert row["config_hash"] == config_hash(hashed_config(cfg))
    assert row["wall_time_s"] > 0
    assert ResultsStore(store).rows() == [row]
    assert row["deviations"] == [
        "smoke config (tiny head, 64 px)",
        "iterations 30 < paper 126313",
        "batch 4 < paper 16",
        "crop 64 != paper 512",
        "training images 16 != ADE20K 20210",
        "validation images 4 != ADE20K 2000",
        "fp32 instead of AMP",
    ]

    # per_example.npz: IoUMetric's per-image areas; summed, they give the row's mIoU exactly
    assert row["extra"]["per_example"] == str((work / PER_EXAMPLE).resolve())
    pe = np.load(row["extra"]["per_example"])
    val = ade_root / "ADEChallengeData2016" / "annotations" / "validation"
    labels = {p.stem: np.array(Image.open(p)) for p in sorted(val.glob("*.png"))}
    assert sorted(pe["ids"].tolist()) == sorted(labels)
    assert pe["intersect"].dtype == pe["union"].dtype == np.int64 and pe["intersect"].shape == pe["union"].shape == (
        4,
        150,
    )
    assert miou_percent(pe["intersect"], pe["union"]) == m["mIoU"]
    for i, name in enumerate(pe["ids"].tolist()):
        # per image, sum over classes of intersect + union = pred + label = 2 x labelled pixels (0 is ignored)
        assert int(pe["intersect"][i].sum() + pe["union"][i].sum()) == 2 * int((labels[name] != 0).sum())
        assert (pe["intersect"][i] <= pe["union"][i]).all()
        present = np.unique(labels[name][labels[name] != 0]) - 1  # reduce_zero_label: value v is class v - 1
        assert set(np.flatnonzero(pe["union"][i])) >= set(present.tolist())


class Preempted(Exception):
    pass


@HOOKS.register_module(force=True)
class PreemptAt(Hook):
    """Test hook: stops training like a preemption, after the checkpoint of iteration ``at``."""

    priority = "LOWEST"  # after CheckpointHook (VERY_LOW)

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise Preempted(f"preempted after iteration {self.at}")


def test_resume_continues_from_the_last_checkpoint(ade_root, tmp_path):
    smoke = CONFIGS["smoke"]
    every5 = tmp_path / "every5.py"
    every5.write_text(
        f"_base_ = [{str(smoke)!r}]\ndefault_hooks = dict(checkpoint=dict(interval=5), logger=dict(interval=1))\n"
    )
    preempted = tmp_path / "preempted.py"
    preempted.write_text(f"_base_ = [{str(every5)!r}]\ncustom_hooks = [dict(type='PreemptAt', at=10)]\n")
    work, store = tmp_path / "work", tmp_path / "results.jsonl"

    with pytest.raises(Preempted):
        run_segmentation(
            seg_run(TINY, None, ade_root, config=preempted, iters=15, work_dir=work, results=store, trust_config=True)
        )
    assert (work / "iter_10.pth").is_file() and not (work / "iter_15.pth").exists()
    assert not store.exists()  # no row for an unfinished run

    row = run_segmentation(
        seg_run(TINY, None, ade_root, config=every5, iters=15, work_dir=work, results=store, trust_config=True)
    )
    assert row["iterations"] == 15 and row["extra"]["start_iter"] == 10
    log_dir = Path(row["extra"]["log_dir"])
    log = (log_dir / f"{log_dir.name}.log").read_text()  # this run's log only
    assert "resumed epoch: 0, iter: 10" in log
    trained = [int(i) for i in re.findall(r"Iter\(train\) \[\s*(\d+)/15\]", log)]
    assert trained == [11, 12, 13, 14, 15]
    assert len(ResultsStore(store).rows()) == 1

    # resuming a finished run trains nothing and evaluates the restored model: same numbers
    again = run_segmentation(
        seg_run(TINY, None, ade_root, config=every5, iters=15, work_dir=work, results=store, trust_config=True)
    )
    assert again["extra"]["start_iter"] == 15 and again["metrics"] == row["metrics"]
    assert len(ResultsStore(store).rows()) == 2

    # the same work dir with another schedule would restore the old one: refused
    with pytest.raises(
        BenchError, match=f"{RUN_RECORD}: this folder holds a run with other settings \\(iterations 15 -> 20"
    ):
        run_segmentation(
            seg_run(TINY, None, ade_root, config=every5, iters=20, work_dir=work, results=store, trust_config=True)
        )
    assert json.loads((work / RUN_RECORD).read_text())["iterations"] == 15


# ------------------------------------------------------------------------------------------------
# bad input: one line, nothing written
# ------------------------------------------------------------------------------------------------


def _args(**kw):
    import argparse

    p = argparse.ArgumentParser()
    add_seg_arguments(p)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_bad_inputs_fail_with_one_line_and_write_nothing(ade_root, tmp_path):
    work, store = tmp_path / "work", tmp_path / "results"

    def fails(exc, pattern, **kw):
        args = _args(work_dir=work, results=store, **kw)
        with pytest.raises(exc, match=pattern) as e:
            seg_main(args)
        assert "\n" not in str(e.value)
        assert not work.exists() and not store.exists()

    no_images = tmp_path / "no_images" / "ADEChallengeData2016"
    (no_images / "annotations" / "training").mkdir(parents=True)
    fails(DataError, r"images/training: missing folder", backbone=TINY, data_root=no_images)
    no_ann = tmp_path / "no_ann" / "ADEChallengeData2016"
    (no_ann / "images" / "training").mkdir(parents=True)
    fails(DataError, r"annotations/training: missing folder", backbone=TINY, data_root=no_ann)
    fails(
        BenchError, r"crop 60x60 is not a multiple of the patch size 8", backbone=TINY, data_root=ade_root, crop_size=60
    )
    fails(
        BenchError,
        r"--crop-size: crop 100000x100000 is larger than 4096 px",
        backbone=TINY,
        data_root=ade_root,
        crop_size=100000,
    )
    fails(
        BenchError,
        r"unknown backbone 'random_vit_tset_patch8'.*did you mean random_vit_test_patch8",
        backbone="random_vit_tset_patch8",
        data_root=ade_root,
    )
    fails(BenchError, r"needs --checkpoint", backbone="mae_vit_test_patch8", data_root=ade_root)
    fails(
        BenchError,
        r"config 'paper_vit_huge': not one of smoke, paper_vit_base, paper_vit_large",
        backbone=TINY,
        data_root=ade_root,
        config="paper_vit_huge",
    )


# ------------------------------------------------------------------------------------------------
# run identity: what the run was trained from
# ------------------------------------------------------------------------------------------------
def _mae_file(path: Path, seed: int) -> Path:
    """A checkpoint in facebookresearch/mae's layout (``{'model': encoder + decoder}``), random weights."""
    from backbones.registry import build_backbone

    torch.manual_seed(seed)
    sd = build_backbone("random_vit_test_patch8").state_dict()
    sd["decoder_embed.weight"] = torch.randn(16, sd["cls_token"].shape[-1])
    torch.save({"model": sd}, path)
    return path


def test_two_checkpoints_of_one_method_are_two_runs_never_a_copy(ade_root, tmp_path):
    a, b = _mae_file(tmp_path / "a.pth", 0), _mae_file(tmp_path / "b.pth", 1)
    kw = dict(iters=2, crop_size=64)
    # the default folder names the label (or backbone), not the file: the second checkpoint is refused there
    first = run_from_args(_args(backbone="mae_vit_test_patch8", checkpoint=a, data_root=ade_root))
    assert str(first.work_dir) == "work_dirs/seg/ade20k-upernet-mae_vit_test_patch8-s0"
    first = run_segmentation(seg_run("mae_vit_test_patch8", a, ade_root, work_dir=tmp_path / "w", **kw))
    with pytest.raises(BenchError, match=r"this folder holds a run with other settings \(checkpoint_sha256 '"):
        run_segmentation(seg_run("mae_vit_test_patch8", b, ade_root, work_dir=tmp_path / "w", **kw))
    # labelled, in their own folders: two rows, each with its checkpoint, label and own metrics
    second = run_segmentation(
        seg_run("mae_vit_test_patch8", b, ade_root, work_dir=tmp_path / "w2", label="mae-b", **kw)
    )
    assert (first["label"], second["label"]) == ("mae", "mae-b") and first["init"] == second["init"] == "mae"
    assert first["checkpoint_sha256"] != second["checkpoint_sha256"] and first["run_id"] != second["run_id"]
    assert first["metrics"] != second["metrics"]  # trained from other weights: measured, not copied
    assert json.loads((tmp_path / "w2" / RUN_RECORD).read_text())["label"] == "mae-b"
