"""COCO detection + instance segmentation with Mask R-CNN (He et al. 2021, Table 4), declared once;
``run_coco`` picks the engine of a run (``tasks/detection/protocol.py``: what the engines share)."""

from __future__ import annotations

from bench.core.optional import require
from tasks.detection.protocol import ENGINES, PROTOCOL_OF_VARIANT, VARIANT_OF_PROTOCOL, check_coco_root, engine_of
from tasks.spec import Command, Table, TaskSpec, TransferRun, resolve

# protocol -> the ViT pyramid: the paper's FPN adapter (Li et al. 2021) or ViTDet's
VARIANTS = VARIANT_OF_PROTOCOL
# Each engine's run(TransferRun) -> row | None, named so that importing the task stays free of
# mmdet / detectron2; the two never import each other.
ENGINE_RUNS = {
    "mmdet": "tasks.detection.mmdet_run:run_mmdet",
    "detectron2": "tasks.detection.detectron2.run:run_detectron2",
}

TABLE4 = Table("table4_coco", "COCO Mask R-CNN, APbox / APmask (cf. MAE Table 4)")
DET = Command(
    "det",
    "COCO detection + instance segmentation (Mask R-CNN)",
    "tasks.detection.run:add_det_arguments",
    "tasks.detection.run:det_main",
)


def engine_run(engine: str):
    """The ``run(TransferRun)`` of ``engine`` (importing the detectron2 package without a working
    detectron2 is a one-line BenchError that says how to install it; so is mmdet's engine without
    mmcv's compiled ops or mmdet, which the light set-up of `make demo` leaves out)."""
    if engine == "mmdet":
        require("bench det (mmdet engine)", ("mmcv.ops", "mmdet"))
    return resolve(ENGINE_RUNS[engine])


def run_coco(r: TransferRun) -> dict | None:
    """Train (or, with ``eval_only``, evaluate) on ``r``'s engine; the row, None on ranks > 0."""
    return engine_run(engine_of(r))(r)


def read_coco(root):
    return check_coco_root(root)


COCO = TaskSpec(
    name="coco",
    family="detection",
    title="COCO",
    protocols=tuple(PROTOCOL_OF_VARIANT.values()),
    img_size=1024,  # the LSJ crop of the paper's recipe (tasks/detection/configs/coco_lsj_100e.py)
    metrics=("APbox", "APmask"),
    tables={protocol: TABLE4 for protocol in PROTOCOL_OF_VARIANT.values()},
    run=run_coco,
    generator="tasks.detection.coco_data:make_coco_dataset",
    reader=read_coco,
    suite_keys=("iters", "engine"),
    engines=ENGINES,
    heldout=True,  # select='heldout': train2017 minus a fixed held-out part, evaluated on that part
    command=DET,
)

TASKS = (COCO,)
