"""docs/plugins.md's examples, run: RegistryViT in configs whose ``_base_`` is mmseg's / mmdet's own
config file, one training iteration each; the layer-decay rules against mmseg's and detectron2's
own; the build-time checks (strides, channels, weights files) and their messages."""

from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import tasks.dense.mm_backbone as plugin
from backbones.adapters import ViTPyramid
from backbones.registry import build_backbone
from bench.core.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
OFFICIAL_FILE = "mae_pretrain_vit_base.pth"  # the name the examples use

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def doc_block(base_prefix: str) -> str:
    """The ```python block of docs/plugins.md whose first line is ``_base_ = '<base_prefix>...``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if re.match(rf"_base_ = ['\"]{re.escape(base_prefix)}", b)]  # either quote
    assert len(found) == 1, f"docs/plugins.md: expected one example on {base_prefix}"
    return found[0]


def write_config(tmp_path, text: str, checkpoint: Path | None, name="cfg.py", **replace) -> Path:
    assert f"checkpoint='{OFFICIAL_FILE}'" in text
    text = text.replace(
        f"checkpoint='{OFFICIAL_FILE}'", "structure_only=True" if checkpoint is None else f"checkpoint='{checkpoint}'"
    )
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def mae_official_file(path: Path, arch: str, seed: int = 0) -> dict:
    """A checkpoint in facebookresearch/mae's pretraining layout (``{'model': sd}``, encoder in timm
    names plus the decoder), random weights; returns the encoder state dict."""
    torch.manual_seed(seed)
    enc = build_backbone(f"random_{arch}").state_dict()
    d = enc["cls_token"].shape[-1]
    sd = {
        **enc,
        "mask_token": torch.zeros(1, 1, 512),
        "decoder_embed.weight": torch.randn(512, d),
        "decoder_embed.bias": torch.zeros(512),
    }
    torch.save({"model": sd}, path)
    return enc


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / OFFICIAL_FILE
    return path, mae_official_file(path, "vit_base_patch16")


def build(cfg, scope: str):
    from mmengine.utils import import_modules_from_strings

    import_modules_from_strings(cfg.custom_imports["imports"])
    init_default_scope(scope)
    registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
    return registry.build(cfg.model)


def one_iteration(model, optim_wrapper, data) -> dict:
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    log = model.train_step(data, optim_wrapper)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert all(torch.isfinite(v).all() for v in log.values())
    assert any(n.startswith("backbone.pyramid.encoder.blocks.") for n in changed)
    return log


# ------------------------------------------------------------------------------------------------
# mmseg
# ------------------------------------------------------------------------------------------------
def seg_batch(size=64, classes=150, n=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):  # 2 images: the pooling branch's BN needs more than one value per channel
        s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=g))
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def test_mmseg_example_on_mmsegs_mae_config_loads_the_weights_and_trains_one_iteration(vit_b_file, tmp_path):
    from mmseg.engine.optimizers.layer_decay_optimizer_constructor import get_layer_id_for_vit

    path, enc = vit_b_file
    cfg = Config.fromfile(str(write_config(tmp_path, doc_block("mmseg::"), path)))
    # the rest is mmseg's own config: UperNet, 160k iterations, mmseg's layer-decay constructor
    assert cfg.model.decode_head.type == "UPerHead" and cfg.model.decode_head.in_channels == [768] * 4
    assert cfg.train_cfg.max_iters == 160000 and cfg.optim_wrapper.constructor == "LayerDecayOptimizerConstructor"
    cfg.model.data_preprocessor.size = (64, 64)  # tiny input for CPU
    model = build(cfg, "mmseg")
    assert isinstance(model.backbone, plugin.RegistryViT) and not hasattr(model, "neck")
    assert torch.equal(model.backbone.encoder.blocks[5].attn.qkv.weight, enc["blocks.5.attn.qkv.weight"])
    plugin.check_model(model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    # mmseg's own constructor, with mmseg's own layer ids for the names its MAE backbone would have
    depth, rate = 12, 0.65
    groups = {id(p): g for g in ow.optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        mm = (
            "backbone." + name.split("pyramid.encoder.", 1)[1].replace("blocks.", "layers.")
            if "pyramid.encoder." in name
            else name
        )
        lid = get_layer_id_for_vit(mm, depth + 2)
        assert groups[id(p)]["lr"] == pytest.approx(1e-4 * rate ** (depth + 1 - lid), rel=1e-12), name
        no_decay = p.ndim == 1 or name.endswith(("pos_embed", "cls_token", "relative_position_bias_table"))
        assert groups[id(p)]["weight_decay"] == (0.0 if no_decay else 0.05), name
    log = one_iteration(model, ow, seg_batch())
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(log)


def test_mmseg_example_without_pretrained_none_names_both_files(vit_b_file, tmp_path):
    path, _ = vit_b_file
    text = doc_block("mmseg::")
    line = next(x for x in text.splitlines() if x.strip().startswith("pretrained=None"))
    cfg = Config.fromfile(str(write_config(tmp_path, text, path, **{line + "\n": ""})))
    with pytest.raises(
        BenchError,
        match=r"two weights files, checkpoint='.*mae_pretrain_vit_base.pth', "
        r"pretrained='./pretrain/mae_pretrain_vit_base_mmcls.pth'; keep one",
    ):
        build(cfg, "mmseg")


def test_mmseg_head_channels_other_than_the_pyramids_are_one_line_at_build(tmp_path):
    cfg = Config.fromfile(
        str(
            write_config(
                tmp_path, doc_block("mmseg::"), None, **{"name='mae_vit_base_patch16'": "name='mae_vit_small_patch16'"}
            )
        )
    )
    documented = re.search(r"^(RegistryViT\(name=mae_vit_small_patch16.*)$", DOC.read_text(), flags=re.M).group(1)
    with pytest.raises(BenchError) as e:
        build(cfg, "mmseg")  # mmseg's MODELS.build, as mmseg.apis.init_model does
    assert str(e.value) == documented
    assert "model.decode_head.in_channels" in str(e.value) and "model.auxiliary_head.in_channels" in str(e.value)
    from mmseg.apis import init_model

    with pytest.raises(BenchError) as e:  # mmseg's own entry point: the same one line, both heads
        init_model(cfg, device="cpu")
    assert str(e.value) == documented
    # built another way (mmengine's root registry, as mmengine's Runner does): the hook of the example
    from mmengine.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    with pytest.raises(BenchError) as e:
        plugin.RegistryViTCheckHook().before_run(SimpleNamespace(model=model))
    assert str(e.value) == documented


# ------------------------------------------------------------------------------------------------
# mmdet
# ------------------------------------------------------------------------------------------------
def test_mmdet_example_on_mmdets_mask_rcnn_config_trains_one_iteration(vit_b_file, tmp_path):
    from mmdet.testing import demo_mm_inputs

    path, enc = vit_b_file
    cfg = Config.fromfile(str(write_config(tmp_path, doc_block("mmdet::"), path)))
    assert cfg.model.type == "MaskRCNN" and cfg.model.rpn_head.anchor_generator.strides == [4, 8, 16, 32, 64]
    model = build(cfg, "mmdet")
    assert torch.equal(model.backbone.encoder.patch_embed.proj.weight, enc["patch_embed.proj.weight"])
    plugin.check_model(model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(ow.optimizer).__name__ == "AdamW" and len(ow.optimizer.param_groups) > 2
    losses = one_iteration(model, ow, demo_mm_inputs(1, [[3, 64, 64]], with_mask=True, num_items=[2]))
    assert {"loss_rpn_cls", "loss_cls", "loss_mask"} <= set(losses)


def test_patch8_backbone_under_mmdets_anchors_is_refused_at_build(tmp_path):
    from mmengine.runner import Runner

    text = doc_block("mmdet::")
    cfg = Config.fromfile(
        str(
            write_config(
                tmp_path,
                text,
                None,
                **{
                    "name='mae_vit_base_patch16'": "name='mae_vit_test_patch8'",
                    "[768, 768, 768, 768]": "[32, 32, 32, 32]",
                },
            )
        )
    )
    documented = re.search(r"^(RegistryViT\(name=mae_vit_test_patch8.*)$", DOC.read_text(), flags=re.M).group(1)
    with pytest.raises(BenchError) as e:
        build(cfg, "mmdet")  # mmdet's MODELS.build: every mismatch in one line, each with its value
    assert str(e.value) == documented
    for key in ("rpn_head.anchor_generator.strides", "bbox_roi_extractor.featmap_strides", "mask_roi_extractor"):
        assert key in str(e.value)
    from mmdet.apis import init_detector

    with pytest.raises(BenchError) as e:  # mmdet's own entry point
        init_detector(cfg, device="cpu")
    assert str(e.value) == documented
    # built through mmengine's root registry (no check at build): the hook of the example stops
    # mmengine's own runner before the first iteration
    from mmengine.registry import MODELS

    init_default_scope("mmdet")
    model = MODELS.build(cfg.model)
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner(model=model, work_dir=cfg.work_dir, custom_hooks=cfg.custom_hooks)
    with pytest.raises(BenchError, match="anchor_generator.strides is"):
        runner.call_hook("before_run")


# ------------------------------------------------------------------------------------------------
# weights: pretrained / init_cfg / structure_only / the checkpoint's own initialisation
# ------------------------------------------------------------------------------------------------
def test_weights_keys_mean_one_file_and_structure_only_needs_none(tmp_path):
    ckpt = tmp_path / "mae.pth"
    enc = mae_official_file(ckpt, "vit_test_patch8")
    qkv = "blocks.1.attn.qkv.weight"
    for kw in (
        dict(checkpoint=str(ckpt)),
        dict(pretrained=str(ckpt)),
        dict(init_cfg=dict(type="Pretrained", checkpoint=str(ckpt))),
    ):
        m = plugin.RegistryViT("mae_vit_test_patch8", img_size=64, **kw)
        assert torch.equal(m.encoder.state_dict()[qkv], enc[qkv]), kw
        m.init_weights()  # mmengine's init must not overwrite the loaded weights
        assert torch.equal(m.encoder.state_dict()[qkv], enc[qkv]), kw
    with pytest.raises(BenchError) as e:
        plugin.RegistryViT("mae_vit_test_patch8", img_size=64)
    msg = str(e.value)
    assert msg.startswith("RegistryViT(name='mae_vit_test_patch8'): key 'checkpoint' is not set")
    assert "structure_only=True" in msg and "--checkpoint" not in msg
    with pytest.raises(BenchError, match="key 'init_cfg'.*not supported"):
        plugin.RegistryViT("mae_vit_test_patch8", checkpoint=str(ckpt), init_cfg=dict(type="Kaiming"))
    with pytest.raises(BenchError, match="structure_only=True builds random weights, but checkpoint="):
        plugin.RegistryViT("mae_vit_test_patch8", checkpoint=str(ckpt), structure_only=True)
    # structure only: the architecture the file would give (BEiT: layer scale, q/v biases), no file
    beit = plugin.RegistryViT("beit_vit_test_patch8", structure_only=True, img_size=64)
    from backbones.registry import INITS

    ref = build_backbone(
        "random_vit_test_patch8",
        **{**dict(img_size=64, drop_path_rate=0.1, use_rel_pos=True), **INITS["beit"].arch_overrides},
    )
    plain = build_backbone("random_vit_test_patch8", img_size=64, use_rel_pos=True)
    shapes = {k: v.shape for k, v in beit.encoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ViTPyramid(ref).encoder.state_dict().items()}  # the adapter drops norm
    assert shapes != {k: v.shape for k, v in ViTPyramid(plain).encoder.state_dict().items()}  # BEiT's own keys


def test_a_checkpoint_of_another_initialisation_warns(tmp_path):
    sup = build_backbone("random_vit_test_patch8").state_dict()
    torch.save(
        {"model": {**sup, "head.weight": torch.zeros(1000, 32), "head.bias": torch.zeros(1000)}}, tmp_path / "deit.pth"
    )
    with pytest.warns(
        plugin.CheckpointLayoutWarning,
        match=r"loaded as mae_ weights, but it has a classifier "
        r"\(head.weight \(1000, 32\)\) and no MAE decoder",
    ):
        plugin.RegistryViT("mae_vit_test_patch8", checkpoint=str(tmp_path / "deit.pth"), img_size=64)
    mae_official_file(tmp_path / "mae.pth", "vit_test_patch8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", plugin.CheckpointLayoutWarning)
        plugin.RegistryViT("mae_vit_test_patch8", checkpoint=str(tmp_path / "mae.pth"), img_size=64)
        plugin.RegistryViT("supervised_vit_test_patch8", checkpoint=str(tmp_path / "deit.pth"), img_size=64)
    with pytest.warns(plugin.CheckpointLayoutWarning, match="but it has an MAE decoder"):
        plugin.RegistryViT("supervised_vit_test_patch8", checkpoint=str(tmp_path / "mae.pth"), img_size=64)
    torch.save({"model": sup, "arch": "vit_test_patch8", "init": "supervised"}, tmp_path / "ours.pth")
    with pytest.warns(plugin.CheckpointLayoutWarning, match="written by `bench pretrain --method supervised`"):
        plugin.RegistryViT("mae_vit_test_patch8", checkpoint=str(tmp_path / "ours.pth"), img_size=64)


# ------------------------------------------------------------------------------------------------
# ViTDet's weight-decay rule = detectron2's
# ------------------------------------------------------------------------------------------------
def test_vitdet_no_decay_matches_detectron2s_optimizer_params():
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
    from detectron2.solver.build import get_default_optimizer_params

    import tasks.detection.mmdet_plugins  # noqa: F401  registers LN2d and LastLevelMaxPool

    cfg = Config.fromfile(str(REPO / "tasks/detection/configs/smoke_vitdet.py"))
    assert cfg.optim_wrapper.paramwise_cfg.no_decay == "vitdet"  # from vitdet_maskrcnn_b.py
    cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay = 1e-4, 0.1
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    depth, rate = 2, 0.7
    ours = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    # detectron2's ViTDet: projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py + common/optim.py AdamW
    d2 = get_default_optimizer_params(
        model,
        base_lr=1e-4,
        weight_decay=0.1,
        weight_decay_norm=0.0,
        overrides={"pos_embed": {"weight_decay": 0.0}},
        lr_factor_func=partial(get_vit_lr_decay_rate, num_layers=depth, lr_decay_rate=rate),
    )

    def per_param(groups):
        return {id(p): (round(g["lr"], 15), g["weight_decay"]) for g in groups for p in g["params"]}

    names = {id(p): n for n, p in model.named_parameters()}
    got, want = per_param(ours), per_param(d2)
    assert got.keys() == want.keys()
    assert {names[k]: v for k, v in got.items()} == {names[k]: v for k, v in want.items()}
    exempt = {names[k] for k, (_, wd) in got.items() if wd == 0.0}
    assert "backbone.pyramid.encoder.pos_embed" in exempt and "backbone.pyramid.encoder.blocks.0.norm1.bias" in exempt
    assert "backbone.pyramid.encoder.blocks.0.attn.qkv.bias" not in exempt  # biases decay in detectron2
    # the 'mae' rule differs exactly there
    cfg.optim_wrapper.paramwise_cfg.no_decay = "mae"
    mae = per_param(build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups)
    assert mae[id(dict(model.named_parameters())["backbone.pyramid.encoder.blocks.0.attn.qkv.bias"])][1] == 0.0
