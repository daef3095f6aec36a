"""ADE20K semantic segmentation with UperNet (He et al. 2021, Table 5), declared once."""
from __future__ import annotations

from tasks.spec import Command, Table, TaskSpec, TransferRun

TABLE5 = Table("table5_ade20k", "ADE20K UperNet, mIoU (cf. MAE Table 5)")
SEG = Command("seg", "ADE20K semantic segmentation (UperNet)",
              "tasks.segmentation.run:add_seg_arguments", "tasks.segmentation.run:seg_main")


def run_ade20k(r: TransferRun) -> dict:
    from tasks.segmentation.run import run_segmentation
    return run_segmentation(r.backbone, r.checkpoint, r.data_root, work_dir=r.work_dir, seed=r.seed,
                            resume=True, results=None, suite=r.suite,
                            trust_checkpoint=r.trust_checkpoint, **r.given("config", "iters"))


def read_ade20k(root):
    from tasks.segmentation.ade_data import validate_ade20k
    return {split: validate_ade20k(root, split) for split in ("training", "validation")}


ADE20K = TaskSpec(
    name="ade20k", family="segmentation", title="ADE20K",
    protocols=("upernet",),
    img_size=512,  # the paper's 512x512 crop (tasks/segmentation/configs/paper_vit_base.py)
    metrics=("mIoU",),
    tables={"upernet": TABLE5},
    run=run_ade20k,
    generator="tasks.segmentation.ade_data:make_ade20k_dataset",
    reader=read_ade20k,
    suite_keys=("iters",),
    command=SEG,
)

TASKS = (ADE20K,)
