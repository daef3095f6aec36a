"""COCO detection + instance segmentation with Mask R-CNN (He et al. 2021, Table 4), declared once;
``run_coco`` picks the engine of a run (``tasks/detection/protocol.py``: what the engines share)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from backbones.registry import parse_name
from bench.core.errors import BenchError
from bench.core.optional import require
from tasks.detection.coco_data import load_json
from tasks.detection.protocol import (
    ENGINES,
    PROTOCOL_OF_VARIANT,
    SEARCH_KEYS,
    SPLITS,
    VARIANT_OF_PROTOCOL,
    check_coco_root,
    det_options,
    engine_of,
    resolve_config,
    search_cfg_options,
)
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


# Each engine's config reader and where its config keeps the global batch (for 'epochs')
CONFIG_READERS = {
    "mmdet": "tasks.detection.mmdet_run:load_config",
    "detectron2": "tasks.detection.detectron2.config:load_lazy_config",
}


def config_batch(r: TransferRun, engine: str) -> int:
    """The global batch ``r`` trains with: ``batch_size``, else the engine config's own."""
    if r.batch_size is not None:
        return int(r.batch_size)
    init, arch = parse_name(r.backbone)
    path, _ = resolve_config(r.config, det_options(r)["variant"], arch, engine)
    cfg = resolve(CONFIG_READERS[engine])(path, trust_config=r.trust_config)
    if engine == "mmdet":
        return int(cfg.get("total_batch_size", cfg.train_dataloader.batch_size))
    return int(cfg.dataloader.train.total_batch_size)


def epoch_iterations(r: TransferRun, engine: str, epochs) -> int:
    """Fine-tuning ``epochs`` as iterations: passes over the whole training split (train2017, also
    for a search candidate, which trains on it minus the held-out part: candidates and the final run
    take the same number of steps) at the run's global batch."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < 1e6:
        raise BenchError(f"search key 'epochs' is {epochs!r}: must be a positive number")
    num_train = len(load_json(Path(r.data_root) / SPLITS["train"][0])["images"])
    return max(1, round(epochs * num_train / config_batch(r, engine)))


def coco_run(r: TransferRun, engine: str) -> TransferRun:
    """The run ``engine`` gets: a search point's hyperparameters (``r.overrides``) become that
    engine's config keys (``protocol.search_cfg_options``) before the run's own ``cfg_options``;
    'iters' or 'epochs' set the schedule."""
    if not r.overrides:
        return r
    overrides, iters = dict(r.overrides), r.iters
    if "iters" in overrides and "epochs" in overrides:
        raise BenchError("search keys 'iters' and 'epochs' both set the schedule: search one of them")
    if "iters" in overrides:
        iters = overrides.pop("iters")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise BenchError(f"search key 'iters' is {iters!r}: must be a positive integer")
    if "epochs" in overrides:
        iters = epoch_iterations(r, engine, overrides.pop("epochs"))
    variant = det_options(r)["variant"] or "fpn"
    options = search_cfg_options(engine, variant, overrides)
    return replace(r, iters=iters, cfg_options={**options, **r.cfg_options}, overrides={})


def run_coco(r: TransferRun) -> dict | None:
    """Train (or, with ``eval_only``, evaluate) on ``r``'s engine; the row, None on ranks > 0."""
    engine = engine_of(r)
    run = engine_run(engine)
    return run(coco_run(r, engine))


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
    search_keys=SEARCH_KEYS,
    engines=ENGINES,
    heldout=True,  # select='heldout': train2017 minus a fixed held-out part, evaluated on that part
    command=DET,
)

TASKS = (COCO,)
