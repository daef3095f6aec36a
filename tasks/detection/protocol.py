"""What both COCO engines (mmdet: ``tasks/detection/mmdet_run.py``; detectron2:
``tasks/detection/detectron2/run.py``) share, defined once: the variants and their row protocols,
the named configs of each engine and how an architecture picks one, the splits, the data check,
the family's own options, the deviations from the paper and the results row.

Neither engine imports the other; ``tasks/detection/task.py`` picks one per run. Each engine returns
a ``DetResult`` (what it measured) and ``detection_row(run, result)`` turns the run's facts object
(``tasks.spec.TransferRun``) plus that result into the one row both write (through the dense
families' ``transfer_row``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, DataError
from tasks.dense.runner import DenseOutcome, transfer_row
from tasks.detection.coco_data import check_same_categories, validate_coco, write_heldout_split
from tasks.spec import TransferRun

HERE = Path(__file__).resolve().parent
# training engines; the first is the default (why mmdet: docs/detectron2.md, "Which engine is the default")
ENGINES = ("mmdet", "detectron2")
DEFAULT_ENGINE = ENGINES[0]
# the ViT pyramid: the paper's FPN adapter (Li et al. 2021) or ViTDet's simple pyramid
VARIANTS = ("fpn", "vitdet")
PROTOCOL_OF_VARIANT = {"fpn": "maskrcnn_fpn", "vitdet": "maskrcnn_vitdet"}
VARIANT_OF_PROTOCOL = {p: v for v, p in PROTOCOL_OF_VARIANT.items()}
CONFIG_DIRS = {"mmdet": HERE / "configs", "detectron2": HERE / "detectron2" / "configs"}
CONFIG_SUFFIXES = {"mmdet": (".py",), "detectron2": (".py", ".yaml")}
NAMED_CONFIGS = {
    "mmdet": {
        "fpn": {"smoke": "smoke_fpn.py", "vit_b": "maskrcnn_vit_fpn_b.py", "vit_l": "maskrcnn_vit_fpn_l.py"},
        "vitdet": {"smoke": "smoke_vitdet.py", "vit_b": "vitdet_maskrcnn_b.py", "vit_l": "vitdet_maskrcnn_l.py"},
    },
    "detectron2": {
        "fpn": {
            "smoke": "smoke_fpn.py",
            "vit_b": "mask_rcnn_vit_fpn_b_100ep.py",
            "vit_l": "mask_rcnn_vit_fpn_l_100ep.py",
        },
        "vitdet": {
            "smoke": "smoke_vitdet.py",
            "vit_b": "mask_rcnn_vitdet_b_100ep.py",
            "vit_l": "mask_rcnn_vitdet_l_100ep.py",
        },
    },
}
# config='auto': which named config an architecture gets
AUTO_CONFIG_OF_ARCH = {
    "vit_base_patch16": "vit_b",
    "vit_large_patch16": "vit_l",
    "vit_test_patch8": "smoke",
    "vit_demo_patch8": "smoke",
}
SPLITS = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "val": ("annotations/instances_val2017.json", "val2017"),
}
# The paper's schedule (ViTDet / Li et al. 2021: 100 epochs of LSJ at batch 64, 1024 px crops), for
# the rows' deviations; tasks/detection/configs/coco_lsj_100e.py has the sources.
PAPER_ITERATIONS, PAPER_BATCH, PAPER_IMG_SIZE = 184375, 64, 1024
# TransferRun.options this family reads (anything else is refused): the pyramid variant, where to
# write the val detections, the checkpoint interval and the mmdet engine's conv layout.
OPTIONS = ("variant", "dets_out", "ckpt_interval", "channels_last")
# Where an engine or our pyramid cannot express the recipe's rule (ViTDet's detectron2 code, the only
# released code of the recipe: tests/test_det_recipe.py checks the rest is the same on both engines)
ENGINE_DEVIATIONS = {
    "mmdet": [
        "mmdet engine: RPN low-quality anchors regress to the box they are best for (ViTDet: their highest-IoU box)"
    ],
    "detectron2": [],
}
VARIANT_DEVIATIONS = {
    "fpn": [],
    "vitdet": ["simple-pyramid LayerNorms without weight decay (ViTDet's code decays them)"],
}
SMALL_SET_HINT = "pass a smaller --batch-size (e.g. 2) or --config smoke for a small set"
# What a suite's search may vary for COCO (TaskSpec.search_keys): what the paper searched per entry
# [A.3] (lr, weight decay, drop path rate, fine-tuning epochs), and the iterations directly.
SEARCH_KEYS = ("lr", "weight_decay", "drop_path", "epochs", "iters")
# A search key -> each engine's config keys per variant (``search_cfg_options``; 'epochs' and 'iters'
# set the schedule instead). The lr is the config batch's lr (another batch scales it, as always).
SEARCH_CFG = {
    "mmdet": {
        variant: {
            "lr": ("optim_wrapper.optimizer.lr",),
            "weight_decay": ("optim_wrapper.optimizer.weight_decay",),
            "drop_path": ("model.backbone.drop_path_rate",),
        }
        for variant in VARIANTS
    },
    "detectron2": {
        variant: {
            "lr": ("optimizer.lr",),
            "weight_decay": ("optimizer.weight_decay",),
            # the RegistryBackbone node: the FPN's bottom_up, or ViTDet's backbone itself
            "drop_path": (node + ".drop_path_rate",),
        }
        for variant, node in (("fpn", "model.backbone.bottom_up"), ("vitdet", "model.backbone"))
    },
}


# --------------------------------------------------------------------------------------------------
# The run's settings
# --------------------------------------------------------------------------------------------------
def engine_of(run: TransferRun) -> str:
    engine = run.engine or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise BenchError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    return engine


def det_options(run: TransferRun) -> dict:
    """The family's ``run.options`` with their defaults; an unknown name is a BenchError."""
    unknown = sorted(set(run.options) - set(OPTIONS))
    if unknown:
        raise BenchError(f"detection option {unknown[0]!r}: choose from {', '.join(OPTIONS)}")
    out = {name: run.options.get(name) for name in OPTIONS}
    if out["variant"] is None:
        out["variant"] = VARIANT_OF_PROTOCOL.get(run.protocol)
    if out["variant"] is not None and out["variant"] not in VARIANTS:
        raise BenchError(f"--variant {out['variant']!r}: choose from {', '.join(VARIANTS)}")
    if out["ckpt_interval"] is not None and int(out["ckpt_interval"]) < 1:
        raise BenchError(f"--ckpt-interval {out['ckpt_interval']}: must be >= 1")
    return out


def search_cfg_options(engine: str, variant: str, overrides: dict) -> dict:
    """A search point's hyperparameters (``SEARCH_CFG`` names, 'epochs' / 'iters' aside) as
    ``engine``'s config keys for ``variant``."""
    keys = SEARCH_CFG[engine][variant]
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise BenchError(f"search key {unknown[0]!r}: COCO searches {', '.join(SEARCH_KEYS)}")
    return {key: value for name, value in overrides.items() for key in keys[name]}


def check_run(run: TransferRun) -> None:
    """One-line errors for settings both engines refuse, before any work."""
    if run.checkpoint is not None and not Path(run.checkpoint).is_file():
        raise BenchError(f"{run.checkpoint}: checkpoint file not found (key 'checkpoint')")
    for name, value in (("--iters", run.iters), ("--batch-size", run.batch_size)):
        if value is not None and value < 1:
            raise BenchError(f"{name} {value}: must be >= 1")
    if run.eval_only and run.weights is None:
        raise BenchError("--eval-only needs --weights FILE: the trained model to evaluate")
    if run.weights is not None and not Path(run.weights).is_file():
        raise BenchError(f"{run.weights}: file not found (option --weights)")


def check_batch(run: TransferRun, data: dict, total: int) -> None:
    """A global batch larger than the training set would repeat images inside one batch: refused,
    with the fix (not for an evaluate-only run, which trains nothing)."""
    if not run.eval_only and total > data["num_train"]:
        raise BenchError(
            f"{data['train_ann']}: {data['num_train']} training images, fewer than one global batch of {total}; "
            + SMALL_SET_HINT
        )


def resolve_config(config, variant: str | None, arch: str, engine: str = DEFAULT_ENGINE) -> tuple[Path, str]:
    """(config file, its display name) of ``engine`` for ``config`` = 'auto' / a name / a path:
    ``<variant>:<name>`` for mmdet's named configs, ``d2:<variant>:<name>`` for detectron2's."""
    if variant is not None and variant not in VARIANTS:
        raise BenchError(f"--variant {variant!r}: choose from {', '.join(VARIANTS)}")
    if config is None or str(config) == "auto":
        if arch not in AUTO_CONFIG_OF_ARCH:
            raise BenchError(
                f"no detection protocol config for architecture {arch!r} (there are ViT-B, ViT-L "
                f"and the CPU smoke sizes); pass --config smoke|vit_b|vit_l|FILE"
            )
        config = AUTO_CONFIG_OF_ARCH[arch]
    name, v = str(config), variant or "fpn"
    named = NAMED_CONFIGS[engine][v]
    if name in named:
        return CONFIG_DIRS[engine] / named[name], ("d2:" if engine == "detectron2" else "") + f"{v}:{name}"
    path = Path(config)
    kind = "mmengine .py config" if engine == "mmdet" else "detectron2 LazyConfig (.py / .yaml)"
    if path.suffix not in CONFIG_SUFFIXES[engine] or not path.is_file():
        raise BenchError(f"--config {name!r}: neither a config name ({', '.join(named)}) nor an existing {kind} file")
    return path, str(path)


def config_kind(config_name: str) -> str:
    """'smoke', 'vit_b', 'vit_l' for a named config, else the file's name."""
    return config_name.rsplit(":", 1)[-1]


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def check_coco_root(data_root) -> dict:
    """Validate ``data_root`` (COCO 2017 layout) and return ``{'categories': [...] in file order,
    'num_train': .., 'num_val': .., 'train_ann': .., 'val_ann': ..}``."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(
            f"{root}: data root not found (key 'data_root'); `bench data coco --out DIR` writes a small "
            f"set in the layout it reads (annotations/instances_{{train,val}}2017.json, train2017/, val2017/)"
        )
    info: dict[str, Any] = {}
    order = {}
    for split, (ann, images) in SPLITS.items():
        summary = validate_coco(root / ann, root / images)
        info[f"num_{split}"] = summary["num_images"]
        info[f"{split}_ann"] = str(root / ann)
        order[split] = [dict(id=c["id"], name=c["name"]) for c in summary["dataset"]["categories"]]
        if split == "train" and summary["num_annotations"] == 0:
            raise DataError(f"{root / ann}: 'annotations' is empty; nothing to train on")
        del summary
    check_same_categories(root / SPLITS["train"][0], root / SPLITS["val"][0])
    # both engines number the classes in the file's category order, per file
    if [c["id"] for c in order["train"]] != [c["id"] for c in order["val"]]:
        raise DataError(
            f"{root / SPLITS['val'][0]}: 'categories' are listed in another order than in "
            f"{root / SPLITS['train'][0]} (class indices would differ); list them in the same order"
        )
    names = [c["name"] for c in order["train"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{root / SPLITS['train'][0]}: 'categories' name {dup[0]!r} is used by more than one id")
    if not names:
        raise DataError(f"{root / SPLITS['train'][0]}: 'categories' is empty")
    info["categories"] = order["train"]
    return info


def run_data(run: TransferRun) -> dict:
    """``check_coco_root`` of the run's data, with ``splits``: ``{'train': (ann, images), 'val': (ann,
    images)}`` as paths. ``select='heldout'`` (hyperparameter search): train on train2017 minus its
    fixed held-out part and evaluate on that part (``coco_data.write_heldout_split``, written into
    the work dir); val2017 is not read."""
    root = Path(run.data_root)
    data = check_coco_root(root)
    if run.select is None:
        data["splits"] = {split: (root / ann, root / images) for split, (ann, images) in SPLITS.items()}
        return data
    if run.select != "heldout":
        raise BenchError(f"select {run.select!r}: the detection task knows 'heldout' only")
    held = write_heldout_split(root, Path(run.work_dir) / "heldout")
    data.update(
        train_ann=held["train_ann"],
        val_ann=held["heldout_ann"],
        num_train=held["num_train"],
        num_val=held["num_heldout"],
        splits={
            "train": (Path(held["train_ann"]), Path(held["image_dir"])),
            "val": (Path(held["heldout_ann"]), Path(held["image_dir"])),
        },
    )
    return data


def data_identity(data: dict) -> str:
    """16 hex of the sha256 of both annotation files: rows of two different sets never share an id."""
    h = hashlib.sha256()
    for key in ("train_ann", "val_ann"):
        with open(data[key], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# The row, one for both engines
# --------------------------------------------------------------------------------------------------
@dataclass
class DetResult:
    """What an engine measured and used, for the row (``detection_row``)."""

    engine: str
    variant: str
    protocol: str
    config_name: str
    config_file: Path
    metrics: dict  # all of them; NaN ones go to extra['nan_metrics']
    hashed: dict  # the effective config (the row's config_hash)
    data: dict  # check_coco_root
    iterations: int
    start_iter: int
    wall_time_s: float
    batch_size: int
    world_size: int
    img_size: int
    lr: float
    layer_decay: float
    drop_path: float
    fp32_fallback: bool
    amp: bool = False  # trained with mixed precision (fp16)
    log_file: Any = None
    dets_out: Any = None
    per_example: Any = None
    deviations: list = field(default_factory=list)  # the engine's own (e.g. a recipe rule it cannot express)
    extra: dict = field(default_factory=dict)  # the engine's own extra fields


def detection_deviations(*, config_name: str, iterations: int, batch_size: int, img_size: int) -> list[str]:
    """How a detection run departs from the paper's protocol (the row's ``deviations``), the same
    phrases for both engines."""
    out = []
    kind = config_kind(config_name)
    if kind == "smoke":
        out.append("smoke config (tiny pyramid and heads)")
    elif kind not in ("vit_b", "vit_l"):
        out.append(f"config {config_name}")
    if iterations != PAPER_ITERATIONS:
        out.append(f"iterations {iterations} {'<' if iterations < PAPER_ITERATIONS else '>'} paper {PAPER_ITERATIONS}")
    if batch_size != PAPER_BATCH:
        out.append(f"batch {batch_size} {'<' if batch_size < PAPER_BATCH else '>'} paper {PAPER_BATCH}")
    if img_size != PAPER_IMG_SIZE:
        out.append(f"img_size {img_size} != paper {PAPER_IMG_SIZE}")
    return out


def _path(p) -> str | None:
    return None if p is None else str(p)


def detection_row(run: TransferRun, r: DetResult) -> dict:
    """The results row of a COCO run of either engine (``tasks.dense.runner.transfer_row``): the same
    keys, ``extra['engine']`` naming the engine, ``extra['eval_only']`` when nothing was trained."""
    extra = dict(
        engine=r.engine,
        variant=r.variant,
        img_size=int(r.img_size),
        lr=float(r.lr),
        layer_decay=float(r.layer_decay),
        drop_path=float(r.drop_path),
        fp32_fallback=bool(r.fp32_fallback),
        amp=bool(r.amp),
        num_train_images=r.data["num_train"],
        num_val_images=r.data["num_val"],
        num_categories=len(r.data["categories"]),
        nan_metrics=sorted(k for k, v in r.metrics.items() if not math.isfinite(v)),
        log_file=_path(r.log_file),
        dets_out=_path(r.dets_out),
        per_example=None if r.per_example is None else str(Path(r.per_example).resolve()),
        data=data_identity(r.data),
        **r.extra,
    )
    deviations = ENGINE_DEVIATIONS[r.engine] + VARIANT_DEVIATIONS[r.variant] + r.deviations
    deviations += detection_deviations(
        config_name=r.config_name, iterations=int(r.iterations), batch_size=int(r.batch_size), img_size=int(r.img_size)
    )
    outcome = DenseOutcome(
        metrics={k: v for k, v in r.metrics.items() if math.isfinite(v)},
        hashed=r.hashed,
        iterations=int(r.iterations),
        start_iter=int(r.start_iter),
        wall_time_s=float(r.wall_time_s),
        batch_size=int(r.batch_size),
        world_size=int(r.world_size),
        config_name=r.config_name,
        config_file=str(r.config_file),
        cfg_options=dict(run.cfg_options),
        checkpoint=_path(run.checkpoint),
        extra=extra,
        deviations=deviations,
    )
    return transfer_row(replace(run, protocol=r.protocol), outcome)
