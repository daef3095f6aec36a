"""COCO detection + instance segmentation with Mask R-CNN (He et al. 2021, Table 4), declared once."""

from __future__ import annotations

from tasks.spec import Command, Table, TaskSpec, TransferRun

# protocol -> the ViT pyramid of tasks.detection.run: the paper's FPN adapter (Li et al. 2021) or ViTDet's
VARIANTS = {"maskrcnn_fpn": "fpn", "maskrcnn_vitdet": "vitdet"}
# training engines; the first is the default (why mmdet: docs/detectron2.md, "Which engine is the default")
ENGINES = ("mmdet", "detectron2")

TABLE4 = Table("table4_coco", "COCO Mask R-CNN, APbox / APmask (cf. MAE Table 4)")
DET = Command(
    "det",
    "COCO detection + instance segmentation (Mask R-CNN)",
    "tasks.detection.run:add_det_arguments",
    "tasks.detection.run:det_main",
)


def run_coco(r: TransferRun) -> dict:
    from tasks.detection.run import run_detection

    engine = r.engine or ENGINES[0]
    return run_detection(
        r.backbone,
        r.checkpoint,
        r.data_root,
        variant=VARIANTS[r.protocol],
        work_dir=r.work_dir,
        seed=r.seed,
        resume=True,
        results=None,
        suite=r.suite,
        trust_checkpoint=r.trust_checkpoint,
        trust_config=r.trust_config,
        engine=engine,
        **r.given("config", "iters"),
    )


def read_coco(root):
    from tasks.detection.run import check_coco_root

    return check_coco_root(root)


COCO = TaskSpec(
    name="coco",
    family="detection",
    title="COCO",
    protocols=tuple(VARIANTS),
    img_size=1024,  # the LSJ crop of the paper's recipe (tasks/detection/configs/coco_lsj_100e.py)
    metrics=("APbox", "APmask"),
    tables={protocol: TABLE4 for protocol in VARIANTS},
    run=run_coco,
    generator="tasks.detection.coco_data:make_coco_dataset",
    reader=read_coco,
    suite_keys=("iters", "engine"),
    engines=ENGINES,
    command=DET,
)

TASKS = (COCO,)
