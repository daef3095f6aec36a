"""ADE20K semantic segmentation with UperNet (He et al. 2021, Table 5), declared once."""

from __future__ import annotations

from dataclasses import replace

from tasks.segmentation.ade_data import validate_ade20k
from tasks.spec import Command, Table, TaskSpec, TransferRun

TABLE5 = Table("table5_ade20k", "ADE20K UperNet, mIoU (cf. MAE Table 5)")
SEG = Command(
    "seg",
    "ADE20K semantic segmentation (UperNet)",
    "tasks.segmentation.cli:add_seg_arguments",
    "tasks.segmentation.cli:seg_main",
)


# A search's hyperparameters -> the mmengine config keys they set (after the config's own values)
SEARCH_CFG = {
    "lr": "optim_wrapper.optimizer.lr",
    "weight_decay": "optim_wrapper.optimizer.weight_decay",
    "layer_decay": "optim_wrapper.paramwise_cfg.layer_decay_rate",
    "drop_path": "model.backbone.drop_path_rate",
}


def run_ade20k(r: TransferRun) -> dict:
    """The suite's cell: its TransferRun passed straight through; a search point's hyperparameters
    become config keys (``SEARCH_CFG``) before the run's own ``cfg_options``."""
    from tasks.segmentation.run import run_segmentation  # imports mmseg/mmengine: only when a cell runs

    overrides = dict(r.overrides)
    iters = int(overrides.pop("iters")) if "iters" in overrides else r.iters
    cfg_options = {**{SEARCH_CFG[name]: value for name, value in overrides.items()}, **r.cfg_options}
    return run_segmentation(replace(r, iters=iters, cfg_options=cfg_options, overrides={}))


def read_ade20k(root):
    return {split: validate_ade20k(root, split) for split in ("training", "validation")}


ADE20K = TaskSpec(
    name="ade20k",
    family="segmentation",
    title="ADE20K",
    protocols=("upernet",),
    img_size=512,  # the paper's 512x512 crop (tasks/segmentation/configs/paper_vit_base.py)
    metrics=("mIoU",),
    tables={"upernet": TABLE5},
    run=run_ade20k,
    generator="tasks.segmentation.ade_data:make_ade20k_dataset",
    reader=read_ade20k,
    suite_keys=("iters",),
    search_keys=(*SEARCH_CFG, "iters"),
    heldout=True,
    command=SEG,
)

TASKS = (ADE20K,)
