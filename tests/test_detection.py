"""COCO Mask R-CNN transfer (tasks/detection/run.py + configs + mmdet plugins), on CPU with the tiny
test ViT (dim 32, depth 2, patch 8) and 64 px generated COCO data.

That ``coco_evaluate`` equals pycocotools ``COCOeval`` run directly on a detections file is tested in
tests/test_coco_eval.py (test_perturbed_detections_equal_cocoeval_run_directly); here the model's
side: predictions -> COCO results (BenchCocoMetric) scored the same as by mmdet's ``CocoMetric``.
"""

import json
import math

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError, DataError
from tasks.detection.coco_data import make_coco_dataset
from tasks.detection.protocol import PROTOCOL_OF_VARIANT
from tasks.detection.task import run_coco
from tasks.spec import TransferRun

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

TINY = "random_vit_test_patch8"
SIZE = 64


@pytest.fixture(scope="module")
def mm():
    """Import mmdet, register its modules and ours (slow once: ~8 s)."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    from mmdet.registry import MODELS

    import tasks.dense.mm_backbone  # noqa: F401
    import tasks.detection.mmdet_plugins  # noqa: F401

    return MODELS


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_dataset(
        tmp_path_factory.mktemp("det") / "coco", n_train=4, n_val=3, image_size=(SIZE, SIZE), seed=0
    )


def det_run(backbone, checkpoint, data_root, *, work_dir, variant=None, config="smoke", seed=0, **kw) -> TransferRun:
    """The facts object ``bench det`` builds, for the engine's options by name."""
    opts = {k: kw.pop(k) for k in ("dets_out", "ckpt_interval", "channels_last") if kw.get(k) is not None}
    return TransferRun(
        task="coco",
        protocol=PROTOCOL_OF_VARIANT.get(variant or "fpn", "maskrcnn_fpn"),
        backbone=backbone,
        checkpoint=checkpoint,
        data_root=data_root,
        work_dir=work_dir,
        seed=seed,
        suite="adhoc",
        config=config,
        options=dict(variant=variant, **opts),
        **kw,
    )


def run_detection(*args, **kw):
    return run_coco(det_run(*args, **kw))


def smoke_model_cfg(variant, num_classes=5):
    from tasks.detection.run import load_config, resolve_config

    path, _ = resolve_config("smoke", variant, "vit_test_patch8")
    cfg = load_config(path)
    cfg.model.roi_head.bbox_head.num_classes = num_classes
    cfg.model.roi_head.mask_head.num_classes = num_classes
    return cfg.model


def build(mm, model_cfg):
    from mmengine.model import revert_sync_batchnorm

    model = revert_sync_batchnorm(mm.build(model_cfg))  # SyncBN -> BN off DDP, as mmengine's Runner does
    model.init_weights()
    return model


def fake_batch(n=2, size=SIZE):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
                batch_input_shape=(size, size),
            )
        )
        gt = InstanceData()
        gt.bboxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [36.0, 30.0, 60.0, 50.0]])
        gt.labels = torch.tensor([0, 3])
        masks = np.zeros((2, size, size), np.uint8)
        masks[0, 6:34, 4:30] = 1
        masks[1, 30:50, 36:60] = 1
        gt.masks = BitmapMasks(masks, size, size)
        s.gt_instances = gt
        samples.append(s)
    imgs = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=imgs, data_samples=samples)


# --------------------------------------------------------------------------------------------------
# the plugin in a plain mmdet config: structure, strides, shapes, loss + backward
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_plugin_builds_from_mmdet_config_with_right_strides(mm, variant):
    from mmdet.models.detectors import MaskRCNN
    from mmdet.models.necks import FPN

    from tasks.dense.mm_backbone import RegistryViT
    from tasks.detection.mmdet_plugins import LastLevelMaxPool

    model = build(mm, smoke_model_cfg(variant))
    assert isinstance(model, MaskRCNN) and isinstance(model.backbone, RegistryViT)
    pyr = model.backbone.pyramid
    assert pyr.variant == {"fpn": "fpn", "vitdet": "simple"}[variant]
    # patch 8: every stride is halved (4/8/16/32 x 8/16); a detectron2 wrapper could use these as is
    assert pyr.strides == [2, 4, 8, 16] and pyr.size_divisibility == 16
    ch = {"fpn": 32, "vitdet": 32}[variant]  # fpn: embed_dim; simple: out_channels (smoke: 32)
    assert pyr.output_shape() == {f"p{i + 2}": (ch, s) for i, s in enumerate([2, 4, 8, 16])}
    if variant == "fpn":  # Li et al.: ViT -> adapter -> FPN
        assert isinstance(model.neck, FPN) and model.neck.in_channels == [32] * 4
        assert pyr.out_indices == [0, 0, 1, 1]  # evenly spaced blocks of a depth-2 ViT
    else:  # ViTDet: simple pyramid from the last block, p6 by max-pool, no FPN
        assert isinstance(model.neck, LastLevelMaxPool)
        assert not any(isinstance(m, FPN) for m in model.modules())
        assert pyr.out_indices == [1]
    assert list(model.rpn_head.prior_generator.strides) == [(s, s) for s in (2, 4, 8, 16, 32)]
    assert model.roi_head.bbox_roi_extractor.featmap_strides == [2, 4, 8, 16]
    assert type(model.roi_head.bbox_head).__name__ == "Shared4Conv1FCBBoxHead"
    assert model.rpn_head.num_convs == 2

    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.eval().extract_feat(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, SIZE // s, SIZE // s) for s in (2, 4, 8, 16, 32)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_loss_forward_backward_on_cpu(mm, variant):
    model = build(mm, smoke_model_cfg(variant)).train()
    data = model.data_preprocessor(fake_batch(), True)
    losses = model(**data, mode="loss")
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    enc = model.backbone.encoder
    for p in (enc.patch_embed.proj.weight, enc.blocks[0].attn.qkv.weight, enc.blocks[-1].mlp.fc2.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # zero-initialised relative position (no checkpoint has one) gets a gradient too: BEiT's table for
    # the FPN protocol, ViTDet's decomposed rel_pos_h / rel_pos_w for ViTDet
    attn = enc.blocks[0].attn
    tables = [attn.relative_position_bias_table] if variant == "fpn" else [attn.rel_pos_h, attn.rel_pos_w]
    for t in tables:
        assert t.grad is not None and t.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_roi_features_are_read_from_nchw_maps(mm, variant):
    """mmcv's RoIAlign kernel indexes its input as NCHW whatever its strides; the ViT's maps (and
    everything computed from them) are NHWC-strided, so without the guard the RoI features are
    scrambled. ``contiguous_roi_inputs`` (applied by DenseRunner / bench perf) fixes that."""
    from tasks.dense.memory_format import contiguous_roi_inputs

    model = build(mm, smoke_model_cfg(variant)).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(2, 3, SIZE, SIZE))[:4]
    assert all(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in feats)
    rois = torch.tensor([[0, 1.0, 1.0, 30.0, 40.0], [1, 3.0, 2.0, 60.0, 29.0], [1, 20.0, 10.0, 50.0, 63.0]])
    ext = model.roi_head.bbox_roi_extractor
    with torch.no_grad():
        ref = ext(tuple(f.contiguous() for f in feats), rois)
        assert (ext(feats, rois) - ref).abs().max() > 0.1 * ref.abs().max()  # the bug, unguarded
        assert contiguous_roi_inputs(model) == 8 and contiguous_roi_inputs(model) == 8  # bbox + mask, 4 levels
        assert all(len(m._forward_pre_hooks) == 1 for m in ext.roi_layers)  # registered once
        torch.testing.assert_close(ext(feats, rois), ref, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# protocol configs: resolution and the values run.py fills in
# --------------------------------------------------------------------------------------------------
def test_protocol_configs_resolve_and_fill(coco):
    from tasks.detection.run import check_coco_root, load_config, prepare_config, resolve_config

    data = check_coco_root(coco)
    assert [c["id"] for c in data["categories"]] == [1, 3, 7, 18, 44]

    def filled(variant, config, backbone, arch, **kw):
        path, _ = resolve_config(config, variant, arch)
        cfg = load_config(path)
        facts = prepare_config(
            cfg,
            path,
            backbone=backbone,
            checkpoint=None,
            data=data,
            data_root=coco,
            work_dir="w",
            seed=3,
            iters=kw.get("iters"),
            batch_size=kw.get("batch_size"),
            ckpt_interval=None,
            trust_checkpoint=False,
            dets_out=None,
            world_size=1,
        )
        return cfg, facts

    cfg, facts = filled("fpn", "auto", "random_vit_base_patch16", "vit_base_patch16")
    bb = cfg.model.backbone
    assert (cfg.variant, cfg.protocol, bb.variant) == ("fpn", "maskrcnn_fpn", "fpn")
    assert (bb.window_size, tuple(bb.global_blocks), bb.drop_path_rate, bb.use_rel_pos) == (
        14,
        (2, 5, 8, 11),
        0.1,
        True,
    )
    assert cfg.model.neck.type == "FPN" and cfg.model.neck.in_channels == [768] * 4
    assert cfg.model.neck.norm_cfg.type == "SyncBN" and cfg.model.roi_head.bbox_head.norm_cfg.type == "SyncBN"
    assert facts["lr"] == 1.6e-4  # random init: Li et al.'s doubled lr
    assert cfg.model.roi_head.bbox_head.num_classes == 5 and cfg.model.roi_head.mask_head.num_classes == 5
    assert cfg.train_dataloader.dataset.metainfo.classes == ("disc", "box", "triangle", "ring", "star")
    assert cfg.train_cfg.max_iters == 184375 and cfg.train_dataloader.batch_size == 64
    assert cfg.param_scheduler[1].milestones == [163889, 177546]
    assert cfg.randomness.seed == 3 and cfg.test_evaluator.cat_ids == [1, 3, 7, 18, 44]

    cfg, facts = filled("fpn", "auto", "mae_vit_large_patch16", "vit_large_patch16")
    # ViTDet's ViT-L drop path (the detectron2 engine's too): tests/test_det_recipe.py
    assert tuple(cfg.model.backbone.global_blocks) == (5, 11, 17, 23) and cfg.model.backbone.drop_path_rate == 0.4
    assert cfg.model.neck.in_channels == [1024] * 4 and cfg.optim_wrapper.paramwise_cfg.num_layers == 24
    assert facts["lr"] == 8e-5

    cfg, facts = filled("vitdet", "vit_b", "mae_vit_base_patch16", "vit_base_patch16", iters=1000, batch_size=16)
    bb = cfg.model.backbone
    assert (cfg.protocol, bb.variant, bb.window_size, tuple(bb.global_blocks)) == (
        "maskrcnn_vitdet",
        "simple",
        14,
        (2, 5, 8, 11),
    )
    assert bb.use_rel_pos == "decomposed"  # ViTDet's rel_pos_h / rel_pos_w, as detectron2's ViT
    assert cfg.model.neck == {"type": "LastLevelMaxPool"} and cfg.model.roi_head.bbox_head.norm_cfg.type == "LN2d"
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.7 and facts["lr"] == 1e-4
    # a shorter schedule keeps its shape; a smaller batch scales lr linearly (mmengine auto_scale_lr)
    assert cfg.train_cfg.max_iters == 1000 and cfg.param_scheduler[1].milestones == [889, 963]
    assert cfg.param_scheduler[0].end == 1 and cfg.default_hooks.checkpoint.interval == 1000
    assert cfg.auto_scale_lr == {"enable": True, "base_batch_size": 64} and cfg.train_dataloader.batch_size == 16

    cfg, _ = filled("vitdet", "auto", "mae_vit_large_patch16", "vit_large_patch16")
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.8 and cfg.model.backbone.drop_path_rate == 0.4


def test_user_errors_are_one_line_and_write_nothing(coco, tmp_path):
    wd = tmp_path / "wd"
    cases = [
        (dict(data_root=tmp_path / "missing"), DataError, "data root not found"),
        (dict(config="nope"), BenchError, "neither a config name"),
        (dict(variant="vitdet", config=str(tmp_path.parent)), BenchError, "neither a config name"),
        (dict(config="vit_b"), BenchError, "global_blocks"),  # ViT-B blocks 2,5,8,11 on a depth-2 ViT
        (dict(variant="other"), BenchError, "--variant"),
        (dict(iters=0), BenchError, "--iters"),
    ]
    for kw, err, text in cases:
        args = dict(data_root=coco, variant="fpn", config="smoke", work_dir=wd) | kw
        with pytest.raises(err) as e:
            run_detection(TINY, None, args.pop("data_root"), **args)
        assert text in str(e.value) and "\n" not in str(e.value)
    bad_cfg = tmp_path / "bad.py"
    bad_cfg.write_text("_base_ = ['/work/main/tasks/detection/configs/smoke_vitdet.py']\n")
    with pytest.raises(BenchError, match="key 'variant' is 'vitdet' but --variant is 'fpn'"):
        run_detection(TINY, None, coco, variant="fpn", config=str(bad_cfg), work_dir=wd, trust_config=True)
    with pytest.raises(BenchError, match="checkpoint file not found"):
        run_detection("mae_vit_test_patch8", tmp_path / "none.pth", coco, config="smoke", work_dir=wd)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError) as e:  # read while mmengine builds the model: the work dir goes again
        run_detection("mae_vit_test_patch8", junk, coco, config="smoke", work_dir=wd)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    # a val file whose categories differ from train's
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    other = tmp_path / "other"
    for d in ("annotations", "train2017", "val2017"):
        (other / d).mkdir(parents=True)
    for split in ("train2017", "val2017"):
        for f in (coco / split).iterdir():
            (other / split / f.name).write_bytes(f.read_bytes())
    (other / "annotations" / "instances_train2017.json").write_bytes(
        (coco / "annotations" / "instances_train2017.json").read_bytes()
    )
    ann["categories"] = ann["categories"][:-1]
    ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] != 44]
    (other / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="only in train \\[44\\]"):
        run_detection(TINY, None, other, config="smoke", work_dir=wd)
    assert not wd.exists()


def test_cli_parses_and_reports_one_line_errors(coco, tmp_path, capsys):
    import argparse

    from tasks.detection.run import add_det_arguments

    args = add_det_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--backbone",
            TINY,
            "--data-root",
            str(coco),
            "--variant",
            "vitdet",
            "--iters",
            "5",
            "--no-resume",
            "--dets-out",
            "d.json",
            "--results",
            "r",
            "--batch-size",
            "4",
        ]
    )
    assert (args.variant, args.iters, args.resume, args.config, args.batch_size) == ("vitdet", 5, False, "auto", 4)
    try:
        from bench.cli import main
    except ImportError:
        pytest.skip("bench.cli not available")
    rc = main(["det", "--backbone", TINY, "--data-root", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "data root not found" in err and "\n" not in err


# --------------------------------------------------------------------------------------------------
# evaluation: BenchCocoMetric (ours) == mmdet CocoMetric on the same predictions
# --------------------------------------------------------------------------------------------------
def test_bench_metric_equals_mmdet_cocometric(mm, coco):
    from mmdet.evaluation import CocoMetric
    from mmengine.structures import InstanceData
    from pycocotools.coco import COCO

    from tasks.detection.mmdet_plugins import BenchCocoMetric

    ann_file = str(coco / "annotations" / "instances_val2017.json")
    gt = COCO(ann_file)
    cat_ids = [c["id"] for c in json.loads(open(ann_file).read())["categories"]]
    rng = np.random.default_rng(0)
    samples = []
    for img in gt.dataset["images"]:
        h, w = img["height"], img["width"]
        boxes, scores, labels, masks = [], [], [], []
        for a in gt.loadAnns(gt.getAnnIds(imgIds=img["id"], iscrowd=False)):
            x, y, bw, bh = a["bbox"]
            dx, dy = rng.integers(-2, 3, 2)
            boxes.append([x + dx, y + dy, x + dx + bw * rng.uniform(0.8, 1.2), y + dy + bh * rng.uniform(0.8, 1.2)])
            scores.append(rng.uniform(0.1, 1.0))
            labels.append(cat_ids.index(a["category_id"]) if rng.random() > 0.2 else int(rng.integers(len(cat_ids))))
            masks.append(np.roll(gt.annToMask(a), (int(dy), int(dx)), axis=(0, 1)).astype(bool))
        boxes.append([1.0, 2.0, 20.0, 22.0]), scores.append(0.95), labels.append(0)  # a false positive
        masks.append(np.zeros((h, w), bool))
        masks[-1][2:22, 1:20] = True
        pred = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(labels),
            masks=torch.from_numpy(np.stack(masks)),
        )
        samples.append(dict(img_id=img["id"], ori_shape=(h, w), pred_instances=pred))

    ours = BenchCocoMetric(ann_file=ann_file, cat_ids=cat_ids)
    theirs = CocoMetric(ann_file=ann_file, metric=["bbox", "segm"])
    theirs.dataset_meta = ours.dataset_meta = dict(classes=tuple(c["name"] for c in gt.dataset["categories"]))
    for m in (ours, theirs):
        m.process({}, samples)
    a = ours.evaluate(len(samples))
    b = theirs.evaluate(len(samples))
    assert 10 < a["bench/APbox"] < 95 and 10 < a["bench/APmask"] < 95  # a non-trivial case
    pairs = {
        "bbox_mAP": "APbox",
        "bbox_mAP_50": "APbox50",
        "bbox_mAP_75": "APbox75",
        "bbox_mAP_s": "APbox_s",
        "bbox_mAP_m": "APbox_m",
        "bbox_mAP_l": "APbox_l",
    }
    pairs |= {k.replace("bbox", "segm"): v.replace("box", "mask") for k, v in pairs.items()}
    for k, v in pairs.items():
        mine = a[f"bench/{v}"]
        if math.isnan(mine):  # COCOeval's -1 (no ground truth of that size); CocoMetric keeps -1
            assert b[f"coco/{k}"] == -1.0
        else:  # CocoMetric rounds to 3 decimals of a fraction
            assert round(mine / 100, 3) == b[f"coco/{k}"], (k, mine, b[f"coco/{k}"])
    assert len(ours.detections) == sum(len(s["pred_instances"]) for s in samples)


# --------------------------------------------------------------------------------------------------
# end to end: train (interrupted, resumed), evaluate, detections file, results row
# --------------------------------------------------------------------------------------------------
def test_smoke_run_resumes_from_saved_iteration_and_writes_row(coco, tmp_path, monkeypatch):
    import tasks.dense.mm_runner as mm_runner
    from bench.core.results import ResultsStore
    from tasks.detection.evaluation import coco_evaluate

    wd, results, dets = tmp_path / "wd", tmp_path / "results", tmp_path / "dets.json"
    kw = dict(variant="fpn", config="smoke", iters=4, ckpt_interval=2, work_dir=wd, results=results, dets_out=dets)

    class Interrupted(mm_runner.RunWatch):  # the process "dies" during iteration 3 (after the iteration-2 checkpoint)
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)
            if runner.iter + 1 == 3:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(mm_runner, "RunWatch", Interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_detection(TINY, None, coco, **kw)
    assert (wd / "iter_2.pth").is_file() and not (wd / "iter_4.pth").exists()
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    assert not dets.exists() and not results.exists()  # nothing written for a run that did not finish

    # another backbone must not resume these checkpoints
    with pytest.raises(
        BenchError,
        match=r"bench_dense_run.json: this folder holds a run with other settings "
        r"\(backbone 'random_vit_test_patch8' -> 'random_vit_demo_patch8'",
    ):
        run_detection("random_vit_demo_patch8", None, coco, **kw)

    row = run_detection(TINY, None, coco, **kw)
    assert row["extra"]["start_iter"] == 2 and row["iterations"] == 4  # continued from the checkpoint
    assert (wd / "iter_4.pth").is_file()
    assert (row["task"], row["protocol"], row["init"], row["backbone"], row["seed"]) == (
        "coco",
        "maskrcnn_fpn",
        "random",
        "vit_test_patch8",
        0,
    )
    m = row["metrics"]
    for k in ("APbox", "APmask", "APbox50", "APbox75", "APbox_s", "APmask50"):
        assert math.isfinite(m[k]) and 0.0 <= m[k] <= 100.0
    assert row["wall_time_s"] > 0 and len(row["config_hash"]) == 12
    assert row["extra"]["img_size"] == SIZE and row["extra"]["num_val_images"] == 3
    assert set(row["extra"]["nan_metrics"]).isdisjoint(m)
    assert ResultsStore(results).rows() == [row]

    # the detections file: COCO results of every val image, scoring exactly the row's metrics
    det_list = json.loads(dets.read_text())
    assert det_list and {d["category_id"] for d in det_list} <= {1, 3, 7, 18, 44}
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(det_list[0])
    again = coco_evaluate(coco / "annotations" / "instances_val2017.json", dets)
    assert {k: v for k, v in again.items() if math.isfinite(v)} == m


def test_vitdet_smoke_run_end_to_end(coco, tmp_path, monkeypatch):
    import tasks.dense.memory_format as mf

    built = []
    real = mf.prepare_dense_model

    def recording(model, channels_last):  # what DenseRunner does to the model it builds
        built.append((channels_last, real(model, channels_last)))
        return built[-1][1]

    monkeypatch.setattr(mf, "prepare_dense_model", recording)
    # channels-last forced on CPU (the default there is NCHW): trains and evaluates the same way
    row = run_detection(
        TINY,
        None,
        coco,
        variant="vitdet",
        config="smoke",
        iters=2,
        seed=1,
        work_dir=tmp_path / "wd",
        channels_last=True,
    )
    [(flag, model)] = built
    assert flag is True
    assert model.roi_head.mask_head.convs[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(getattr(m, "_bench_nchw_guard", False) for m in model.roi_head.bbox_roi_extractor.roi_layers)
    assert (row["protocol"], row["iterations"], row["seed"]) == ("maskrcnn_vitdet", 2, 1)
    assert row["extra"]["layer_decay"] == 0.7 and row["extra"]["start_iter"] == 0
    assert math.isfinite(row["metrics"]["APbox"]) and math.isfinite(row["metrics"]["APmask"])


# --------------------------------------------------------------------------------------------------
# per_example.npz: per-image box matches that reproduce COCOeval's APbox, also on a resample
# --------------------------------------------------------------------------------------------------
def test_per_image_box_matches_give_cocoeval_apbox_of_any_resample(tmp_path):
    """box_ap of the per-image matches equals pycocotools on all images, and on a bootstrap resample
    equals pycocotools run on a ground truth where the drawn images really are repeated (new ids),
    crowd boxes included."""
    from tasks.detection.evaluation import box_ap, coco_evaluate, per_image_box_matches

    root = make_coco_dataset(tmp_path / "coco", n_train=1, n_val=6, image_size=(SIZE, SIZE), seed=3)
    gt = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    gt["annotations"][0]["iscrowd"] = 1  # a crowd box: matches to it are neither TP nor FP
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:  # perturbed true boxes, some with the wrong class, plus random boxes
        for _ in range(2):
            x, y, w, h = a["bbox"]
            box = [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)]
            cat = (
                a["category_id"] if rng.random() < 0.8 else gt["categories"][rng.integers(len(gt["categories"]))]["id"]
            )
            dets.append(dict(image_id=a["image_id"], category_id=cat, bbox=box, score=float(rng.random())))
    for img in gt["images"]:
        for _ in range(5):
            dets.append(
                dict(
                    image_id=img["id"],
                    category_id=gt["categories"][rng.integers(5)]["id"],
                    bbox=list(rng.uniform(0, SIZE / 2, 4)),
                    score=float(rng.random()),
                )
            )
    arrays = per_image_box_matches(gt, dets)
    assert box_ap(arrays) == pytest.approx(coco_evaluate(gt, dets, ("bbox",))["APbox"], abs=1e-9)
    assert arrays["gt_count"].sum() == sum(not a.get("iscrowd", 0) for a in gt["annotations"])
    assert arrays["det_tp"].shape == (len(dets), 10) and arrays["det_ignore"].any()

    draw = rng.integers(0, len(arrays["ids"]), len(arrays["ids"]))  # with repeats
    images, anns, rdets = [], [], []
    for new_id, i in enumerate(draw, start=1000):
        old = int(arrays["ids"][i])
        images.append(dict(next(im for im in gt["images"] if im["id"] == old), id=new_id))
        anns += [
            dict(a, id=len(anns) + len(rdets) + 10_000 + k, image_id=new_id)
            for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)
        ]
        rdets += [dict(d, image_id=new_id) for d in dets if d["image_id"] == old]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    resampled = dict(gt, images=images, annotations=anns)
    assert box_ap(arrays, draw) == pytest.approx(coco_evaluate(resampled, rdets, ("bbox",))["APbox"], abs=1e-9)


def test_heldout_selection_trains_without_the_heldout_images_and_evaluates_on_them(coco, tmp_path):
    """select='heldout' (a search candidate): train2017 minus its fixed held-out part, scored on that
    part (val2017 is not read); the row says so."""
    from tasks.detection.coco_data import heldout_split

    row = run_detection(TINY, None, coco, variant="fpn", iters=1, work_dir=tmp_path / "wd", select="heldout")
    train_ids, held_ids = heldout_split(coco / "annotations/instances_train2017.json")
    assert row["extra"]["select"] == "heldout"
    assert (row["extra"]["num_train_images"], row["extra"]["num_val_images"]) == (len(train_ids), len(held_ids))
    per_example = np.load(row["extra"]["per_example"])
    assert sorted(int(i) for i in per_example["ids"]) == sorted(held_ids)


def _mae_file(path, seed: int):
    """A checkpoint in facebookresearch/mae's layout, random weights of the test ViT."""
    from backbones.registry import build_backbone

    torch.manual_seed(seed)
    torch.save({"model": build_backbone(TINY).state_dict()}, path)
    return path


def test_two_checkpoints_of_one_method_are_two_runs_never_a_copy(coco, tmp_path):
    a, b = _mae_file(tmp_path / "a.pth", 0), _mae_file(tmp_path / "b.pth", 1)
    first = run_detection("mae_vit_test_patch8", a, coco, variant="fpn", iters=1, work_dir=tmp_path / "w")
    with pytest.raises(BenchError, match=r"this folder holds a run with other settings \(checkpoint"):
        run_detection("mae_vit_test_patch8", b, coco, variant="fpn", iters=1, work_dir=tmp_path / "w")
    second = run_detection(
        "mae_vit_test_patch8", b, coco, variant="fpn", iters=1, work_dir=tmp_path / "w2", label="mae-b"
    )
    assert (first["label"], second["label"]) == ("mae", "mae-b") and first["init"] == second["init"] == "mae"
    assert first["checkpoint_sha256"] != second["checkpoint_sha256"] and first["run_id"] != second["run_id"]
