"""detectron2 engine (tasks/detection/detectron2): our ViT against detectron2's own ViT on the same
weights, the plugin against SimpleFeaturePyramid, our LazyConfigs against the official ViTDet ones,
COCOEvaluator against our coco_evaluate, the unmodified ViTDet config training with only
model.backbone replaced, and the bad inputs."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from tasks.detection.protocol import PROTOCOL_OF_VARIANT
from tasks.spec import TransferRun

HAVE_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAVE_D2, reason="detectron2 is not installed (bash scripts/setup.sh installs it)")
REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO.parent / "shared" / "vendor" / "detectron2-02b5c4e.tar.gz"
TEST_ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)  # = vit_test_patch8


def d2_run(backbone, checkpoint, data_root, *, work_dir, variant="vitdet", config="smoke", overrides=(), **kw):
    """``bench det --engine detectron2``'s facts object; ``overrides``: detectron2 ``KEY=VALUE`` strings."""
    from tasks.detection.run import trailing_overrides

    return TransferRun(
        task="coco",
        protocol=PROTOCOL_OF_VARIANT.get(variant, "maskrcnn_vitdet"),
        backbone=backbone,
        checkpoint=checkpoint,
        data_root=data_root,
        work_dir=work_dir,
        seed=kw.pop("seed", 0),
        suite="adhoc",
        config=config,
        engine="detectron2",
        cfg_options=trailing_overrides(overrides),
        options={"variant": variant, **{k: kw.pop(k) for k in ("dets_out", "ckpt_interval") if k in kw}},
        **kw,
    )


def run_detectron2(*args, **kw):
    from tasks.detection.detectron2.run import run_detectron2

    return run_detectron2(d2_run(*args, **kw))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def d2_source(tmp_path_factory):
    """The official source (projects/ViTDet/configs) from the vendored archive."""
    if not VENDORED.is_file():
        pytest.skip(f"{VENDORED} not present (the official ViTDet project configs come from it)")
    out = tmp_path_factory.mktemp("d2src")
    with tarfile.open(VENDORED) as t:
        members = [m for m in t.getmembers() if "/projects/ViTDet/configs/" in m.name]
        t.extractall(out, members=members, filter="data")
    return next(out.iterdir())


def test_missing_detectron2_is_one_line_with_the_install_command(monkeypatch):
    """Importing the engine without detectron2: one line with the install command."""
    import importlib

    for name in [
        n for n in sys.modules if n == "detectron2" or n.startswith(("detectron2.", "tasks.detection.detectron2"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "detectron2", None)
    with pytest.raises(BenchError, match=r"detectron2 is not installed.*bash scripts/setup.sh") as e:
        importlib.import_module("tasks.detection.detectron2")
    assert "\n" not in str(e.value)


@needs_d2
def test_detectron2_without_compiled_ops_is_one_line(monkeypatch):
    from tasks.detection.detectron2.install import require_detectron2

    require_detectron2()  # this build has its ops
    monkeypatch.setitem(sys.modules, "detectron2._C", None)
    with pytest.raises(BenchError, match=r"built without its compiled ops.*reinstall.*setup.sh"):
        require_detectron2()


# --------------------------------------------------------------------------------------------------
# Our encoder == detectron2's ViT (modeling/backbone/vit.py) on the same weights
# --------------------------------------------------------------------------------------------------
def _d2_vit(window_blocks, use_rel_pos, img_size=32):
    from detectron2.modeling.backbone.vit import ViT

    return ViT(
        img_size=img_size,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_size=2 if window_blocks else 0,
        window_block_indexes=window_blocks,
        use_rel_pos=use_rel_pos,
        pretrain_img_size=32,
        pretrain_use_cls_token=True,
    ).eval()


def _d2_block_outputs(vit, x):
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.permute(0, 3, 1, 2))) for b in vit.blocks]
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    return outs


def _random_mae_file(path, seed=0):
    """An MAE-layout checkpoint ({'model': timm names}, decoder keys included) with random weights."""
    from backbones.mae import MaskedAutoencoder

    torch.manual_seed(seed)
    mae = MaskedAutoencoder(**TEST_ARCH, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    torch.save({"model": mae.state_dict()}, path)
    return path


@needs_d2
@pytest.mark.parametrize("window_blocks", [[], [0]], ids=["global", "windowed+global"])
def test_encoder_blocks_equal_detectron2_vit_on_mae_weights(tmp_path, window_blocks):
    from backbones import build_backbone

    ckpt = _random_mae_file(tmp_path / "mae.pth")
    ours = build_backbone(
        "mae_vit_test_patch8",
        ckpt,
        window_size=2 if window_blocks else 0,
        global_blocks=[i for i in range(2) if i not in window_blocks],
    ).eval()
    theirs = _d2_vit(window_blocks, use_rel_pos=False)
    sd = torch.load(ckpt, weights_only=True)["model"]
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    assert missing == [] and {k.split(".")[0] for k in unexpected} <= {
        "cls_token",
        "norm",
        "mask_token",
        "decoder_embed",
        "decoder_pos_embed",
        "decoder_blocks",
        "decoder_norm",
        "decoder_pred",
    }
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mine = ours.forward_intermediates(x, [0, 1], with_cls=False)
    for a, b in zip(mine, _d2_block_outputs(theirs, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@needs_d2
@pytest.mark.parametrize("size,abs_pos", [(32, True), (48, False)], ids=["pretrain-grid", "interpolated-rel-pos"])
def test_encoder_with_decomposed_rel_pos_equals_detectron2_vit_and_loads_its_checkpoint(tmp_path, size, abs_pos):
    """Random rel_pos_h / rel_pos_w in detectron2's ViT, saved as a trained ViTDet detector
    (backbone.net.*), loaded through the registry (vitdet_ init): same block outputs, on the
    pretraining grid and at an input size where the global block's tables are interpolated.
    (Absolute position embeddings at another size are resampled differently, see docs/detectron2.md.)"""
    from backbones import build_backbone

    theirs = _d2_vit([0], use_rel_pos=True)
    if not abs_pos:
        theirs.pos_embed = None
    theirs.load_state_dict(torch.load(_random_mae_file(tmp_path / "mae.pth"), weights_only=True)["model"], strict=False)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "rel_pos" in n:
                p.normal_(0, 0.5)
    torch.save(
        {"model": {f"backbone.net.{k}": v for k, v in theirs.state_dict().items()}, "iteration": 9},
        tmp_path / "model_final.pth",
    )
    ours = build_backbone(
        "vitdet_vit_test_patch8", tmp_path / "model_final.pth", window_size=2, global_blocks=[1], use_abs_pos=abs_pos
    ).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        mine = ours.forward_intermediates(x, [0, 1])
    for a, b in zip(mine, _d2_block_outputs(theirs, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------------
@needs_d2
def test_plugin_equals_detectron2_simple_feature_pyramid():
    """RegistryBackbone(variant='simple') vs detectron2's SimpleFeaturePyramid(ViT) with the same
    weights: names, channels, strides, padding constraints and every output map."""
    from detectron2.modeling import BACKBONE_REGISTRY
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

    from tasks.detection.detectron2 import RegistryBackbone

    assert "build_registry_backbone" in BACKBONE_REGISTRY
    ours = RegistryBackbone(
        "random_vit_test_patch8",
        img_size=32,
        window_size=2,
        global_blocks=[1],
        out_channels=16,
        square_pad=32,
        drop_path_rate=0.0,
    ).eval()
    top = LastLevelMaxPool()
    top.in_feature = "p4"  # patch 8: the stride-16 map is p4
    theirs = SimpleFeaturePyramid(
        net=_d2_vit([0], use_rel_pos=True),
        in_feature="last_feat",
        out_channels=16,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=top,
        norm="LN",
        square_pad=32,
    ).eval()
    assert ours.output_shape() == theirs.output_shape()
    # detectron2's SFP means the coarsest stride (its padding_constraints spell it "size_divisiblity",
    # which ImageList does not read); ours pads to it
    assert ours.size_divisibility == theirs._size_divisibility == 16
    assert ours.padding_constraints == {"size_divisibility": 16, "square_size": 32}
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    sd = {f"net.{k}": v for k, v in ours.encoder.state_dict().items() if not k.startswith(("cls_token", "norm."))}
    # our Sequential indices -> detectron2's (its Conv2d holds its norm as .norm)
    for i, stage in enumerate(ours.pyramid.simple):
        name = f"simfp_{int(np.log2(ours.pyramid.strides[i]))}"
        layers = list(stage)
        d2_index = {}
        j = 0
        for k, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d) and not isinstance(layer, nn.ConvTranspose2d):
                d2_index[k] = f"{j}"
                d2_index[k + 1] = f"{j}.norm"
                j += 1
            elif k not in d2_index:
                d2_index[k] = f"{j}"
                j += 1
        for k, layer in enumerate(layers):
            for pn, p in layer.named_parameters():
                sd[f"{name}.{d2_index[k]}.{pn}"] = p.detach()
    assert set(sd) == set(theirs.state_dict())
    theirs.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b) == ["p1", "p2", "p3", "p4", "p5"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


@needs_d2
def test_unknown_backbone_in_a_lazyconfig_gives_the_registry_message():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    from tasks.detection.detectron2 import RegistryBackbone

    with pytest.raises(BenchError, match="unknown backbone 'mae_vit_bse_patch16'.*did you mean mae_vit_base_patch16"):
        instantiate(L(RegistryBackbone)(name="mae_vit_bse_patch16"))


@needs_d2
def test_heads_that_do_not_fit_the_backbone_strides_are_refused():
    from detectron2.config import instantiate

    from tasks.detection.detectron2 import check_model
    from tasks.detection.detectron2.config import CONFIG_DIR, load_lazy_config

    cfg = load_lazy_config(CONFIG_DIR / "smoke_vitdet.py")
    cfg.model.roi_heads.num_classes = 3
    check_model(instantiate(cfg.model))  # the smoke config itself fits
    # three mismatches, one message, each with the value to set
    cfg.model.proposal_generator.anchor_generator.strides = [4, 8, 16, 32, 64]
    cfg.model.roi_heads.box_pooler.scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    cfg.model.proposal_generator.head.in_channels = 16
    with pytest.raises(BenchError) as e:
        check_model(instantiate(cfg.model))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("the heads do not fit the backbone, which outputs p1 (stride 2, 32 ch)")
    assert "anchor_generator.strides [4, 8, 16, 32, 64]: set [2, 4, 8, 16, 32]" in msg
    assert "box_pooler.scales [0.25, 0.125, 0.0625, 0.03125]: set (1/2, 1/4, 1/8, 1/16)" in msg
    assert "proposal_generator.head.in_channels 16: set 32" in msg
    cfg = load_lazy_config(CONFIG_DIR / "smoke_vitdet.py")
    cfg.model.backbone.name = "random_vit_tiny_patch16"  # patch 16: p2..p6, the heads ask for p1
    with pytest.raises(
        BenchError,
        match=r"in_features \['p1', 'p2', 'p3', 'p4', 'p5'\]: no \['p1'\]; set "
        r"\['p2', 'p3', 'p4', 'p5', 'p6'\] with anchor_generator.strides=\[4, 8, 16, 32, 64\]",
    ):
        check_model(instantiate(cfg.model))


@needs_d2
def test_vitdet_config_on_a_patch8_vit_is_one_line_at_the_first_forward_not_a_bare_keyerror():
    """detectron2's own path (instantiate + forward, no check of ours): a patch-8 ViT under ViTDet's
    heads (p2..p6) fails at the head that asks for p6 with a line naming the features there are."""
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from tasks.detection.detectron2.config import CONFIG_DIR, load_lazy_config

    cfg = load_lazy_config(CONFIG_DIR / "mask_rcnn_vitdet_b_100ep.py")
    cfg.model.backbone.update(
        name="random_vit_test_patch8", img_size=64, square_pad=64, window_size=4, global_blocks=(1,)
    )
    cfg.model.roi_heads.num_classes = 2
    model = instantiate(cfg.model).eval()
    with pytest.raises(
        BenchError,
        match=r"a head asks for feature 'p6', which RegistryBackbone does not output "
        r"\(it has p1 \(stride 2\), p2 \(stride 4\)",
    ):
        with torch.no_grad(), EventStorage(0):
            model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])


# --------------------------------------------------------------------------------------------------
# LazyConfigs: ours == the official ViTDet ones, backbone aside
# --------------------------------------------------------------------------------------------------
@needs_d2
@pytest.mark.parametrize("size", ["b", "l"])
def test_vitdet_lazyconfig_equals_the_official_one(d2_source, size):
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    from tasks.detection.detectron2.config import CONFIG_DIR, config_dict

    official = LazyConfig.load(str(d2_source / f"projects/ViTDet/configs/COCO/mask_rcnn_vitdet_{size}_100ep.py"))
    ours = LazyConfig.load(str(CONFIG_DIR / f"mask_rcnn_vitdet_{size}_100ep.py"))
    net = OmegaConf.to_container(official.model.backbone.net)
    sfp = official.model.backbone
    bb = ours.model.backbone
    depth = net["depth"]
    assert bb.name == {"b": "mae_vit_base_patch16", "l": "mae_vit_large_patch16"}[size]
    assert (bb.img_size, bb.window_size, bb.drop_path_rate, bb.out_channels, bb.square_pad) == (
        net["img_size"],
        net["window_size"],
        net["drop_path_rate"],
        sfp.out_channels,
        sfp.square_pad,
    )
    assert tuple(bb.global_blocks) == tuple(i for i in range(depth) if i not in net["window_block_indexes"])
    assert net["use_rel_pos"] and bb.use_rel_pos == "decomposed" and tuple(sfp.scale_factors) == (4.0, 2.0, 1.0, 0.5)
    a, b = config_dict(official), config_dict(ours)
    for d in (a, b):
        d["model"].pop("backbone")
        d["train"].pop("init_checkpoint")  # ours: the registry loads the weights
    assert a == b


# --------------------------------------------------------------------------------------------------
# COCOEvaluator == coco_evaluate
# --------------------------------------------------------------------------------------------------
@needs_d2
@pytest.mark.parametrize("fast", [True, False], ids=["fast_impl", "pycocotools"])
def test_coco_evaluator_equals_our_coco_evaluate(tmp_path, fast):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from tasks.detection.coco_data import make_coco_dataset
    from tasks.detection.detectron2.data import register
    from tasks.detection.detectron2.run import metrics_from_coco_evaluator
    from tasks.detection.evaluation import coco_evaluate

    root = make_coco_dataset(tmp_path / "coco", n_train=1, n_val=8, image_size=(96, 96), seed=3)
    ann = root / "annotations/instances_val2017.json"
    register("bench_test_eval_val", str(ann), str(root / "val2017"))
    DatasetCatalog.get("bench_test_eval_val")  # loading sets the category id mapping
    id_map = MetadataCatalog.get("bench_test_eval_val").thing_dataset_id_to_contiguous_id
    gt = COCO(str(ann))
    rng = np.random.default_rng(0)
    ev = COCOEvaluator(
        "bench_test_eval_val",
        output_dir=str(tmp_path / "eval"),
        tasks=("bbox", "segm"),
        use_fast_impl=fast,
        distributed=False,
    )
    ev.reset()
    for img in gt.dataset["images"]:
        h, w = img["height"], img["width"]
        boxes, scores, classes, masks = [], [], [], []
        for a in gt.loadAnns(gt.getAnnIds(imgIds=img["id"], iscrowd=False)):
            x, y, bw, bh = a["bbox"]
            jit = rng.normal(0, 2, 4)
            boxes.append([x + jit[0], y + jit[1], x + bw + jit[2], y + bh + jit[3]])
            scores.append(rng.uniform(0.3, 1))
            classes.append(id_map[a["category_id"]] if rng.uniform() < 0.8 else int(rng.integers(len(id_map))))
            m = gt.annToMask(a).astype(bool)
            masks.append(np.roll(m, int(rng.integers(-2, 3)), axis=1))
        for _ in range(3):  # false positives
            x0, y0 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            boxes.append([x0, y0, x0 + 20, y0 + 20])
            scores.append(rng.uniform(0, 0.5))
            classes.append(int(rng.integers(len(id_map))))
            m = np.zeros((h, w), bool)
            m[int(y0) : int(y0) + 20, int(x0) : int(x0) + 20] = True
            masks.append(m)
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_classes=torch.tensor(classes),
            pred_masks=torch.from_numpy(np.stack(masks)),
        )
        ev.process([{"image_id": img["id"]}], [{"instances": inst}])
    d2 = metrics_from_coco_evaluator(ev.evaluate())
    dets = json.loads((tmp_path / "eval/coco_instances_results.json").read_text())
    assert {d["category_id"] for d in dets} <= {c["id"] for c in gt.dataset["categories"]}
    ours = coco_evaluate(ann, dets)
    assert len(d2) == 12 and 5 < d2["APbox"] < 95 and 5 < d2["APmask"] < 95
    for k, v in d2.items():
        assert v == ours[k] or (np.isnan(v) and np.isnan(ours[k])), (k, v, ours[k])
    del mask_utils


# --------------------------------------------------------------------------------------------------
# Acceptance: the unmodified official ViTDet config, only model.backbone replaced, trains + evaluates
# --------------------------------------------------------------------------------------------------
USER_CONFIG = """\
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from tasks.detection.detectron2 import RegistryBackbone

_vitdet = LazyConfig.load("{vitdet}")
dataloader, lr_multiplier, optimizer, train = _vitdet.dataloader, _vitdet.lr_multiplier, _vitdet.optimizer, _vitdet.train
model = _vitdet.model
model.backbone = L(RegistryBackbone)(name="mae_vit_base_patch16", checkpoint="mae_pretrain_vit_base.pth")
"""
# CPU sizes only: a patch-16 ViT-Tiny at 128 px (same strides, so the official heads fit unchanged)
SHRINK = [
    "model.backbone.img_size=128",
    "model.backbone.square_pad=128",
    "model.backbone.window_size=4",
    "model.backbone.drop_path_rate=0.0",
    "dataloader.train.mapper.augmentations.1.target_height=128",
    "dataloader.train.mapper.augmentations.1.target_width=128",
    "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "model.proposal_generator.pre_nms_topk=[300,300]",
    "model.proposal_generator.post_nms_topk=[100,100]",
    "model.roi_heads.batch_size_per_image=64",
]


@needs_d2
def test_official_vitdet_config_with_only_the_backbone_replaced_trains_and_evaluates(tmp_path, d2_source):
    from backbones import build_backbone
    from tasks.detection.coco_data import make_coco_dataset

    root = make_coco_dataset(tmp_path / "coco", n_train=4, n_val=3, image_size=(128, 128))
    enc = build_backbone("random_vit_tiny_patch16")
    torch.save({"model": enc.state_dict()}, tmp_path / "mae_tiny.pth")
    user = tmp_path / "my_vitdet.py"
    user.write_text(USER_CONFIG.format(vitdet=d2_source / "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"))
    work = tmp_path / "work"
    kw = dict(variant="vitdet", config=user, iters=3, batch_size=2, work_dir=work, overrides=SHRINK)
    with pytest.raises(BenchError, match="runs arbitrary code when loaded; if you trust it, pass --trust-config"):
        run_detectron2("mae_vit_tiny_patch16", tmp_path / "mae_tiny.pth", root, **kw)
    assert not work.exists()
    out = run_detectron2("mae_vit_tiny_patch16", tmp_path / "mae_tiny.pth", root, trust_config=True, **kw)
    m = out["metrics"]
    assert {"APbox", "APbox50", "APmask", "ARbox100", "ARmask100"} <= set(m)
    assert all(0 <= v <= 100 for v in m.values())
    assert out["iterations"] == 3 and out["extra"]["engine"] == "detectron2" and out["extra"]["start_iter"] == 0
    assert out["protocol"] == "maskrcnn_vitdet"
    assert "instance_mask_format: bitmask" in (work / "config.yaml").read_text()  # the generated set has RLE masks
    assert (work / "model_final.pth").is_file() and (work / "model_0000002.pth").is_file()
    # resume: a truncated newest checkpoint is skipped, the previous one (iteration 2 = the last) is used
    data = (work / "model_final.pth").read_bytes()
    (work / "model_final.pth").write_bytes(data[: len(data) // 2])
    again = run_detectron2("mae_vit_tiny_patch16", tmp_path / "mae_tiny.pth", root, trust_config=True, **kw)
    assert again["extra"]["start_iter"] == 3 and again["metrics"]["APbox"] == pytest.approx(m["APbox"], abs=1e-9)
    # the same folder with other settings is refused before anything is built
    with pytest.raises(
        BenchError, match=r"bench_d2_run.json: this folder holds a run with other settings \(config_hash"
    ):
        run_detectron2("mae_vit_tiny_patch16", tmp_path / "mae_tiny.pth", root, trust_config=True, **dict(kw, iters=5))


@needs_d2
def test_bad_inputs_of_run_detectron2(tmp_path):
    from tasks.detection.coco_data import make_coco_dataset

    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1, image_size=(64, 64))
    work = tmp_path / "work"
    with pytest.raises(BenchError, match="unknown backbone 'mae_vit_tst_patch8'"):
        run_detectron2("mae_vit_tst_patch8", None, root, config="smoke", work_dir=work)
    with pytest.raises(BenchError, match="--variant 'cascade'"):
        run_detectron2("random_vit_test_patch8", None, root, variant="cascade", config="smoke", work_dir=work)
    with pytest.raises(BenchError, match=r"in_features .*: no \['p1'\]"):  # patch 16 under the patch-8 smoke heads
        run_detectron2("random_vit_tiny_patch16", None, root, config="smoke", work_dir=work)
    with pytest.raises(BenchError, match=r"building model failed .*no_such_key"):
        run_detectron2(
            "random_vit_test_patch8",
            None,
            root,
            config="smoke",
            work_dir=work,
            overrides=["model.backbone.no_such_key.x=1"],
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model: {backbone: {_target_: detectron2.modeling.ViT}}\ndataloader: {}\noptimizer: {}\n"
        "lr_multiplier: {}\ntrain: {}\n"
    )
    with pytest.raises(BenchError, match=r"key 'model.backbone' must be L\(RegistryBackbone\)"):
        run_detectron2("random_vit_test_patch8", None, root, config=bad, work_dir=work, trust_config=True)
    assert not work.exists()


@needs_d2
def test_training_mask_format_follows_the_annotations_unless_an_override_gives_one(tmp_path):
    """polygon for polygon-only sets, bitmask where a non-crowd instance is RLE (polygons cannot hold
    it); an override of the format is kept (bitmask: mask targets cropped from image-size bitmaps,
    as mmdet's), but one that cannot hold the annotations is one line naming the key."""
    from tasks.detection.coco_data import make_coco_dataset
    from tasks.detection.detectron2.config import MASK_FORMAT_KEY, load_lazy_config, set_data
    from tasks.detection.protocol import resolve_config

    root = make_coco_dataset(tmp_path / "coco", n_train=6, n_val=1, image_size=(64, 64))
    rle_ann = root / "annotations" / "instances_train2017.json"
    coco = json.loads(rle_ann.read_text())
    assert any(isinstance(a["segmentation"], dict) and not a["iscrowd"] for a in coco["annotations"])
    coco["annotations"] = [a for a in coco["annotations"] if isinstance(a["segmentation"], list)]
    poly_ann = tmp_path / "polygons.json"
    poly_ann.write_text(json.dumps(coco))
    images = root / "train2017"
    path, _ = resolve_config("smoke", "fpn", "vit_test_patch8", "detectron2")

    def mask_format(ann, given=None):
        cfg = load_lazy_config(path)
        if given is not None:
            cfg.dataloader.train.mapper.instance_mask_format = given
        data = dict(splits=dict(train=(ann, images), val=(ann, images)), train_ann=ann)
        set_data(cfg, data, tmp_path / "work", mask_format_given=given is not None)
        return cfg.dataloader.train.mapper.instance_mask_format

    assert mask_format(poly_ann) == "polygon" and mask_format(rle_ann) == "bitmask"
    assert mask_format(poly_ann, "bitmask") == "bitmask"
    with pytest.raises(BenchError, match=f"{MASK_FORMAT_KEY}='polygon': .*has RLE instance masks"):
        mask_format(rle_ann, "polygon")
    with pytest.raises(BenchError, match="choose 'polygon' or 'bitmask'"):
        mask_format(poly_ann, "bitmap")


@needs_d2
@pytest.mark.parametrize("variant", ["vitdet", "fpn"])
def test_smoke_configs_train_one_step_and_perf_counts_flops(variant):
    """Both protocols' CPU smoke configs build, fit their backbone's strides (p1..p5 for patch 8) and
    take a training step with gradients reaching the encoder; perf_step reports FLOPs and img/s."""
    from tasks.detection.detectron2.perf import build_step, perf_step

    model, loss_of, title = build_step("smoke", variant, "random_vit_test_patch8", img_size=64, batch_size=2, boxes=3)
    assert "smoke" in title
    loss = loss_of(model)
    assert torch.isfinite(loss)
    loss.backward()
    bb = model.backbone.bottom_up if variant == "fpn" else model.backbone
    assert bb.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    r = perf_step("smoke", variant, "random_vit_test_patch8", img_size=64, batch_size=1, boxes=3, iters=1)
    assert r["img_s"] > 0 and r["gflop_img"] > 0.01


@needs_d2
def test_bench_det_engine_detectron2_trains_evaluates_writes_the_mmdet_row_schema_and_resumes(tmp_path, capsys):
    """``bench det --engine detectron2``: a smoke train + eval, a results row with exactly the keys of
    the mmdet engine's row (``extra.engine`` names the engine), per-example box matches whose APbox
    is the row's, and a rerun that resumes from the newest readable checkpoint without training."""
    from bench.cli import main
    from bench.core.results import ResultsStore
    from tasks.detection.coco_data import make_coco_dataset
    from tasks.detection.evaluation import box_ap

    root = make_coco_dataset(tmp_path / "coco", n_train=4, n_val=3, image_size=(64, 64), seed=0)
    common = ["det", "--backbone", "random_vit_test_patch8", "--data-root", str(root), "--config", "smoke"]
    d2_dir, mm_dir = tmp_path / "d2", tmp_path / "mm"
    d2 = common + [
        "--engine",
        "detectron2",
        "--iters",
        "3",
        "--ckpt-interval",
        "1",
        "--out",
        str(d2_dir),
        "--results",
        str(tmp_path / "d2.jsonl"),
    ]
    assert main(d2) == 0
    assert "(detectron2)" in capsys.readouterr().out
    assert main(common + ["--iters", "2", "--out", str(mm_dir), "--results", str(tmp_path / "mm.jsonl")]) == 0
    [row] = ResultsStore(tmp_path / "d2.jsonl").rows()
    [mm_row] = ResultsStore(tmp_path / "mm.jsonl").rows()
    assert set(row) == set(mm_row) and set(row["extra"]) == set(mm_row["extra"])
    assert row["extra"]["engine"] == "detectron2" and mm_row["extra"]["engine"] == "mmdet"
    assert (row["task"], row["protocol"], row["init"], row["backbone"]) == (
        "coco",
        "maskrcnn_fpn",
        "random",
        "vit_test_patch8",
    )
    assert row["iterations"] == 3 and row["extra"]["start_iter"] == 0 and row["extra"]["config"] == "d2:fpn:smoke"
    m = row["metrics"]
    assert {"APbox", "APbox50", "APmask", "ARbox100"} <= set(m) and all(
        math.isfinite(v) and 0 <= v <= 100 for v in m.values()
    )
    assert row["deviations"] == [
        "smoke config (tiny pyramid and heads)",
        "iterations 3 < paper 184375",
        "batch 2 < paper 64",
        "img_size 64 != paper 1024",
    ]
    assert mm_row["deviations"] == [
        "mmdet engine: RPN low-quality anchors regress to the box they are best for (ViTDet: their highest-IoU box)",
        "smoke config (tiny pyramid and heads)",
        "iterations 2 < paper 184375",
        "batch 2 < paper 64",
        "img_size 64 != paper 1024",
    ]
    for r in (row, mm_row):  # the per-example matches reproduce each row's APbox
        arrays = np.load(r["extra"]["per_example"])
        assert list(arrays["ids"]) == sorted(arrays["ids"], key=int) and len(arrays["ids"]) == 3
        assert box_ap(arrays) == pytest.approx(r["metrics"]["APbox"], abs=1e-9)

    # a truncated newest checkpoint is skipped; the rerun loads iteration 2 (the last) and trains nothing
    final = d2_dir / "model_final.pth"
    final.write_bytes(final.read_bytes()[:100])
    before = {p.name: p.stat().st_mtime_ns for p in d2_dir.glob("model_0*.pth")}
    assert main(d2) == 0
    again = ResultsStore(tmp_path / "d2.jsonl").rows()[-1]
    assert again["extra"]["start_iter"] == 3 and again["metrics"]["APbox"] == pytest.approx(m["APbox"], abs=1e-9)
    assert {p.name: p.stat().st_mtime_ns for p in d2_dir.glob("model_0*.pth")} == before
    assert sorted(before) == ["model_0000000.pth", "model_0000001.pth", "model_0000002.pth"]

    # an mmdet-only option is refused in one line
    assert main(d2 + ["--channels-last"]) == 2
    assert "--channels-last" in capsys.readouterr().err


def test_bench_det_engine_detectron2_without_detectron2_is_one_line(tmp_path, monkeypatch, capsys):
    """From the command line: exit 2, one line with the install command, no run folder."""
    from bench.cli import main
    from tasks.detection.coco_data import make_coco_dataset

    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1, image_size=(64, 64))
    monkeypatch.setitem(sys.modules, "detectron2", None)
    rc = main(
        [
            "det",
            "--engine",
            "detectron2",
            "--backbone",
            "random_vit_test_patch8",
            "--data-root",
            str(root),
            "--config",
            "smoke",
            "--out",
            str(tmp_path / "work"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: detectron2 is not installed")
    assert "bash scripts/setup.sh" in err[0] and not (tmp_path / "work").exists()


# --------------------------------------------------------------------------------------------------
# Overrides that name code, --no-resume, several processes
# --------------------------------------------------------------------------------------------------
@needs_d2
def test_overrides_naming_code_need_trust_config_and_run_nothing(tmp_path, capsys):
    """The exploit of issue 24: a new node whose _target_ is subprocess.check_call is refused (with
    --cfg-options and as trailing KEY=VALUE), nothing runs, nothing is written; plain values stay free."""
    from bench.cli import main
    from tasks.detection.coco_data import make_coco_dataset
    from tasks.detection.detectron2.config import overrides_naming_code

    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1, image_size=(64, 64))
    touched = tmp_path / "touched"
    base = ["det", "--engine", "detectron2", "--backbone", "random_vit_test_patch8", "--data-root", str(root)]
    base += ["--config", "smoke", "--iters", "1", "--out", str(tmp_path / "work")]
    exploit = ["model.roi_heads.x._target_=subprocess.check_call", f"model.roi_heads.x.args=[touch,{touched}]"]
    for argv in (base + ["--cfg-options", *exploit], base + exploit):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "_target_=" in err[0] and "--trust-config" in err[0], err
        assert not touched.exists() and not (tmp_path / "work").exists()
    assert main(base + ["optimizer.params.lr_factor_func=os.system"]) == 2  # a value naming an importable object
    assert "--trust-config" in capsys.readouterr().err
    assert overrides_naming_code(["train.init_checkpoint='model_final.pth'", "train.log_period=5"]) == []
    assert overrides_naming_code(["a.b={'c': ['os.path.join']}"]) == ["a.b={'c': ['os.path.join']}"]
    # found by the round-3 fuzzer: a nested node with a _target_ is instantiated, even an undotted builtin
    nested = ["model.roi_heads.x={'_target_': 'open', 'file': 'F', 'mode': 'w'}", "a.b=[{'_target_': '__import__'}]"]
    assert overrides_naming_code(nested) == nested


@needs_d2
def test_no_resume_moves_the_old_checkpoints_aside_and_resume_refuses_other_settings(tmp_path):
    """A seed-1 run in a seed-0 folder: refused with --resume (seed named), trained from scratch with
    --no-resume (the seed-0 files in previous-<time>/, untouched), its checkpoints record seed 1."""
    from bench.core.workdir import PREVIOUS_PREFIX
    from tasks.detection.coco_data import make_coco_dataset

    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1, image_size=(64, 64))
    work = tmp_path / "work"
    kw = dict(variant="vitdet", config="smoke", iters=3, work_dir=work)
    run_detectron2("random_vit_test_patch8", None, root, seed=0, **kw)
    seed0 = (work / "model_final.pth").read_bytes()
    with pytest.raises(BenchError, match=r"this folder holds a run with other settings \(seed 0 -> 1\)"):
        run_detectron2("random_vit_test_patch8", None, root, seed=1, **kw)
    row = run_detectron2("random_vit_test_patch8", None, root, seed=1, resume=False, **kw)
    assert row["extra"]["start_iter"] == 0 and row["seed"] == 1
    [aside] = list(work.glob(f"{PREVIOUS_PREFIX}*"))
    assert (aside / "model_final.pth").read_bytes() == seed0
    state = torch.load(work / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["bench_settings"]["seed"] == 1 and state["iteration"] == 2


def test_processes_per_machine_from_torchrun_and_slurm():
    pytest.importorskip("detectron2")
    from tasks.detection.detectron2.run import processes_per_machine

    assert processes_per_machine(16, {"LOCAL_WORLD_SIZE": "8"}) == 8
    assert processes_per_machine(16, {"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_NTASKS_PER_NODE": "4"}) == 8
    assert processes_per_machine(8, {"SLURM_NTASKS_PER_NODE": "4"}) == 4
    assert processes_per_machine(2, {}) == 2  # one machine
    with pytest.raises(BenchError, match="same number of processes on every machine"):
        processes_per_machine(6, {"SLURM_STEP_TASKS_PER_NODE": "4,2"})
    with pytest.raises(BenchError, match="neither SLURM_STEP_TASKS_PER_NODE"):
        processes_per_machine(16, {"SLURM_PROCID": "3"})


def _nonfinite_worker(rank: int, port: int, out: str):
    import torch.distributed as dist

    from tasks.detection.detectron2.run import _AllRanksFinite

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    class Trainer(_AllRanksFinite):
        iter = 7

    loss = float("nan") if rank == 1 else 1.0  # only rank 1 sees the NaN
    try:
        Trainer()._write_metrics({"loss_cls": torch.tensor(loss)}, 0.0)
        result = "continued"
    except FloatingPointError as e:
        result = f"raised: {e}"
    Path(out, f"rank{rank}").write_text(result)
    dist.destroy_process_group()


def test_a_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path):
    pytest.importorskip("detectron2")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_nonfinite_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text().startswith("raised: loss became non-finite at iteration 7")


def _settings_worker(rank: int, port: int, root: str, out: str):
    import os

    import torch.distributed as dist

    os.environ["LOCAL_WORLD_SIZE"] = "2"  # one machine: detectron2's per-machine group is both ranks
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    work = Path(out, "work")
    try:  # rank 1 was started with another seed
        run_detectron2("random_vit_test_patch8", None, Path(root), seed=rank, iters=3, batch_size=2, work_dir=work)
        result = "trained"
    except BenchError as e:
        result = f"refused: {e}"
    Path(out, f"rank{rank}").write_text(result)
    dist.destroy_process_group()


@needs_d2
def test_ranks_started_with_other_settings_are_refused_before_anything_is_written(tmp_path):
    """Two gloo processes of one detectron2 run, rank 1 with another seed: every rank stops with the
    same line naming the seed, and the work folder stays unwritten (as the mmdet engine's ranks do)."""
    import socket

    import torch.multiprocessing as mp

    from tasks.detection.coco_data import make_coco_dataset

    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1, image_size=(64, 64))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _settings_worker, args=(port, str(root), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    expected = "refused: ranks were started with other settings: rank 0 has seed 0, rank 1 has 1"
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text().startswith(expected)
    assert not (tmp_path / "work").exists()
