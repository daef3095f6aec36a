"""COCO Mask R-CNN on a registry ViT, trained and evaluated with detectron2 (the second engine beside
mmdet's ``tasks/detection/run.py``; same data checks, protocols and metric names).

    from tasks.detection.detectron2 import run_detectron2
    out = run_detectron2("mae_vit_base_patch16", "mae_pretrain_vit_base.pth", "data/coco",
                         variant="vitdet", work_dir="work/d2_mae_b")
    out["metrics"]  # {'APbox': .., 'APbox50': .., ..., 'APmask': .., ...} in percent

``config``: ``'auto'`` (by architecture: ViT-B / ViT-L protocol, the CPU smoke config for the test
sizes), a name (``'smoke'``, ``'vit_b'``, ``'vit_l'``) or a LazyConfig file. A LazyConfig is code
(a ``.py`` runs when loaded, a ``.yaml`` names the callables ``instantiate`` calls): one outside this
package's ``configs/`` needs ``trust_config=True``.
The config's ``model.backbone`` must be (or, for FPN, hold as ``bottom_up``) a ``RegistryBackbone``;
its name, checkpoint and the number of classes are set from the arguments.

Training is detectron2's ``SimpleTrainer`` (``AMPTrainer`` when the config enables AMP and CUDA is
there) with its LR-scheduler / checkpoint / timer hooks. Checkpoints are written atomically to
``work_dir``; with ``resume`` the newest readable one is loaded, and a folder that holds a run with
other settings is refused (``bench.core.run_record``). Evaluation: detectron2's ``COCOEvaluator`` on
val2017 gives the AP numbers, the AR numbers come from ``coco_evaluate`` on the detections
COCOEvaluator wrote (the two agree exactly on AP: tests/test_detectron2.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.core.errors import BenchError, NonFiniteLossError, first_line

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VARIANTS = ("fpn", "vitdet")
PROTOCOL_OF_VARIANT = {"fpn": "maskrcnn_fpn", "vitdet": "maskrcnn_vitdet"}
NAMED_CONFIGS = {
    "fpn": {"smoke": "smoke_fpn.py", "vit_b": "mask_rcnn_vit_fpn_b_100ep.py", "vit_l": "mask_rcnn_vit_fpn_l_100ep.py"},
    "vitdet": {
        "smoke": "smoke_vitdet.py",
        "vit_b": "mask_rcnn_vitdet_b_100ep.py",
        "vit_l": "mask_rcnn_vitdet_l_100ep.py",
    },
}
RUN_RECORD = "bench_d2_run.json"
_CKPT = re.compile(r"^model_(\d+|final)\.pth$")
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def resolve_config(config, variant: str, arch: str) -> tuple[Path, str]:
    """(LazyConfig file, display name) for 'auto' / a name / a path."""
    from tasks.detection.run import AUTO_CONFIG_OF_ARCH

    if variant not in VARIANTS:
        raise BenchError(f"--variant {variant!r}: choose from {', '.join(VARIANTS)}")
    if config is None or str(config) == "auto":
        if arch not in AUTO_CONFIG_OF_ARCH:
            raise BenchError(
                f"no detectron2 protocol config for architecture {arch!r}; pass --config smoke|vit_b|vit_l|FILE.py"
            )
        config = AUTO_CONFIG_OF_ARCH[arch]
    name = str(config)
    if name in NAMED_CONFIGS[variant]:
        return CONFIG_DIR / NAMED_CONFIGS[variant][name], f"d2:{variant}:{name}"
    path = Path(config)
    if path.suffix not in (".py", ".yaml") or not path.is_file():
        raise BenchError(
            f"--config {name!r}: neither a config name ({', '.join(NAMED_CONFIGS[variant])}) "
            f"nor an existing detectron2 LazyConfig (.py / .yaml) file"
        )
    return path, str(path)


def load_lazy_config(path: Path, trust_config: bool = False):
    """``LazyConfig.load`` with one-line errors naming the file; a file outside our configs needs trust."""
    from detectron2.config import LazyConfig

    path = Path(path)
    if CONFIG_DIR not in path.resolve().parents and not trust_config:
        # a .py runs when loaded; a .yaml's `_target_`s name any callable, called by instantiate
        raise BenchError(f"{path}: a LazyConfig runs arbitrary code when loaded; if you trust it, pass --trust-config")
    try:
        cfg = LazyConfig.load(str(path))
    except BenchError:
        raise
    except Exception as e:  # syntax errors, failed imports, missing keys of a base config: one line
        raise BenchError(f"{path}: cannot load LazyConfig ({first_line(e, with_type=True)})") from None
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        if key not in cfg:
            raise BenchError(f"{path}: LazyConfig has no key '{key}'")
    return cfg


def registry_backbone_node(cfg, path) -> tuple[object, str]:
    """The ``L(RegistryBackbone)(...)`` node of ``cfg.model`` and its key."""
    from tasks.detection.detectron2.backbone import RegistryBackbone

    bb = cfg.model.get("backbone")
    for node, key in (
        (bb, "model.backbone"),
        (bb.get("bottom_up") if bb is not None else None, "model.backbone.bottom_up"),
    ):
        if node is not None and node.get("_target_") in (RegistryBackbone, _qualname(RegistryBackbone)):
            return node, key
    got = None if bb is None else bb.get("_target_")
    raise BenchError(
        f"{path}: key 'model.backbone' must be L(RegistryBackbone)(...) or an FPN whose bottom_up is one "
        f"(got {_plain(got)!r})"
    )


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _plain(obj):
    """JSON-able, process-independent form of a config value (callables by qualified name)."""
    if isinstance(obj, functools.partial):
        return {"partial": _plain(obj.func), "args": _plain(list(obj.args)), "keywords": _plain(dict(obj.keywords))}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if callable(obj) and hasattr(obj, "__qualname__"):
        return _qualname(obj)
    return repr(obj)


def config_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return _plain(OmegaConf.to_container(cfg, resolve=False))


def _scale_schedule(cfg, iters: int) -> None:
    """Set ``train.max_iter`` and scale the step milestones of ``lr_multiplier`` with it; the
    warm-up is a fraction of the schedule in detectron2, so it scales too (as the mmdet engine's)."""
    old = int(cfg.train.max_iter)
    cfg.train.max_iter = int(iters)
    sched = cfg.lr_multiplier.get("scheduler", cfg.lr_multiplier)
    if "milestones" in sched:
        # fvcore wants 0 < m1 < m2 < ... < num_updates: scaled, then kept apart by one iteration
        n = len(sched.milestones)
        if iters < n + 1:
            raise BenchError(
                f"--iters {iters}: the step schedule (lr_multiplier) has {n} milestones and needs at "
                f"least {n + 1} iterations"
            )
        ms, prev = [], 0
        for i, m in enumerate(sched.milestones):
            prev = min(max(prev + 1, int(round(m * iters / old))), iters - (n - i))
            ms.append(prev)
        sched.milestones = ms
    if "num_updates" in sched:
        sched.num_updates = int(iters)


def _mask_format(ann_file: str) -> str:
    """'bitmask' when a non-crowd instance has an RLE segmentation (detectron2's polygon masks
    cannot hold it), else 'polygon' (detectron2's default, COCO's own annotations)."""
    data = json.loads(Path(ann_file).read_text())
    rle = any(isinstance(a.get("segmentation"), dict) and not a.get("iscrowd", 0) for a in data["annotations"])
    return "bitmask" if rle else "polygon"


def register_split(name: str, ann_file: str, image_root: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, ann_file, image_root)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
def _atomic_checkpointer(model, save_dir, **checkpointables):
    """detectron2's ``DetectionCheckpointer`` whose ``save`` writes a temp file and renames it
    (``bench.core.checkpoint.save_atomic``): a kill leaves no half-written checkpoint."""
    from detectron2.checkpoint import DetectionCheckpointer

    from bench.core.checkpoint import save_atomic

    class AtomicCheckpointer(DetectionCheckpointer):
        def save(self, name, **kwargs):
            if not self.save_dir or not self.save_to_disk:
                return
            data = {"model": self.model.state_dict()}
            data.update({k: obj.state_dict() for k, obj in self.checkpointables.items()})
            data.update(kwargs)
            save_atomic(data, Path(self.save_dir) / f"{name}.pth")
            self.tag_last_checkpoint(f"{name}.pth")

    return AtomicCheckpointer(model, str(save_dir), **checkpointables)


def newest_readable_checkpoint(checkpointer, work_dir: Path) -> int | None:
    """Load the newest checkpoint of ``work_dir`` that reads; return its iteration (None: none)."""
    found = []
    for f in work_dir.glob("model_*.pth"):
        m = _CKPT.match(f.name)
        if m:
            found.append((math.inf if m.group(1) == "final" else int(m.group(1)), f))
    for _, f in sorted(found, reverse=True):
        try:
            state = checkpointer.load(str(f))
        except Exception as e:  # a truncated / corrupt file: try the previous one
            logger.warning("skipping unreadable checkpoint %s (%s)", f, first_line(e))
            checkpointer._parsed_url_during_load = None  # DetectionCheckpointer.load leaves it set on failure
            continue
        return int(state.get("iteration", -1))
    return None


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run_detectron2(
    backbone: str,
    checkpoint,
    data_root,
    *,
    variant: str = "vitdet",
    config="auto",
    seed: int = 0,
    iters: int | None = None,
    batch_size: int | None = None,
    work_dir,
    resume: bool = True,
    trust_checkpoint: bool = False,
    trust_config: bool = False,
    overrides: Sequence[str] = (),
    ckpt_interval: int | None = None,
) -> dict | None:
    """Train Mask R-CNN with detectron2 on ``data_root``/train2017 and evaluate on val2017.

    Returns (rank 0; None on other ranks) ``{'metrics': {APbox, APbox50, ..., APmask, ...} (percent,
    finite values), 'protocol', 'init', 'arch', 'iterations', 'wall_time_s', 'config' (for
    config_hash), 'data' (``check_coco_root``), 'extra': {...}}``, what ``tasks.detection.run.detection_row``
    turns into the results row. ``overrides``: detectron2's ``key=value`` config overrides
    (``LazyConfig.apply_overrides``), applied after loading. ``ckpt_interval``: iterations between
    checkpoints (default: the config's ``train.checkpointer.period``).

    Under torchrun / srun the default process group comes from ``bench.core.distributed.init_distributed``
    (detectron2's ``comm`` works on it) plus detectron2's per-machine group, as its ``launch`` makes;
    the model is wrapped by ``create_ddp_model`` as detectron2's trainers do.
    """
    t0 = time.time()
    from backbones.registry import parse_name
    from tasks.detection.run import SPLITS, check_coco_root

    init, arch = parse_name(backbone)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BenchError(f"{checkpoint}: checkpoint file not found (key 'checkpoint')")
    if iters is not None and iters < 1:
        raise BenchError(f"--iters {iters}: must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise BenchError(f"--batch-size {batch_size}: must be >= 1")
    if ckpt_interval is not None and ckpt_interval < 1:
        raise BenchError(f"--ckpt-interval {ckpt_interval}: must be >= 1")
    path, config_name = resolve_config(config, variant, arch)
    data = check_coco_root(data_root)

    import torch
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    from bench.core.run_record import check_run_record, write_run_record
    from tasks.detection.detectron2.backbone import check_feature_strides
    from tasks.detection.evaluation import coco_evaluate, write_per_example

    _join_process_group()
    cfg = load_lazy_config(path, trust_config)
    if overrides:
        from detectron2.config import LazyConfig

        try:
            cfg = LazyConfig.apply_overrides(cfg, list(overrides))
        except Exception as e:  # a key that does not exist, a value that does not parse
            raise BenchError(f"{path}: override {list(overrides)}: {first_line(e, with_type=True)}") from None
    node, node_key = registry_backbone_node(cfg, path)
    node.name = backbone
    node.checkpoint = None if checkpoint is None else str(checkpoint)
    node.trust_checkpoint = bool(trust_checkpoint)
    num_classes = len(data["categories"])
    cfg.model.roi_heads.num_classes = num_classes
    cfg.train.init_checkpoint = ""  # the registry loads the backbone weights (converted, safe loading)
    lr = float(cfg.get("lr_by_init", {}).get(init, cfg.optimizer.lr))
    cfg.optimizer.lr = lr
    lff = cfg.optimizer.params.get("lr_factor_func")
    if isinstance(lff, functools.partial) and "num_layers" in lff.keywords:  # layer decay over this depth
        from backbones.vit import arch_config

        cfg.optimizer.params.lr_factor_func = functools.partial(
            lff.func, *lff.args, **dict(lff.keywords, num_layers=arch_config(arch)["depth"])
        )
    world = comm.get_world_size()
    total = int(batch_size or cfg.dataloader.train.total_batch_size)
    if total % world:
        raise BenchError(f"--batch-size {total}: must be a multiple of the {world} processes")
    base_batch = int(cfg.dataloader.train.total_batch_size)
    if total != base_batch:  # linear lr scaling, as mmdet's auto_scale_lr
        cfg.optimizer.lr = lr = lr * total / base_batch
    cfg.dataloader.train.total_batch_size = total
    _scale_schedule(cfg, int(iters or cfg.train.max_iter))
    max_iter = int(cfg.train.max_iter)
    cfg.train.checkpointer.period = min(int(ckpt_interval or cfg.train.checkpointer.period), max_iter)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.train.device = device
    amp = bool(cfg.train.amp.enabled) and device == "cuda"
    if device == "cpu":
        cfg.train.ddp.pop("device_ids", None)  # DDP of a CPU module takes no device ids

    key = uuid.uuid4().hex[:8]
    names = {s: f"bench_d2_{s}_{key}" for s in SPLITS}
    for split, (ann, images) in SPLITS.items():
        register_split(names[split], str(Path(data_root) / ann), str(Path(data_root) / images))
    mask_format = _mask_format(data["train_ann"])
    cfg.dataloader.train.dataset.names = names["train"]
    cfg.dataloader.train.mapper.instance_mask_format = mask_format
    cfg.dataloader.test.dataset.names = names["val"]
    work_dir = Path(work_dir)

    hashable = config_dict(cfg)
    for k in ("checkpoint", "trust_checkpoint"):
        _pop_path(hashable, node_key.split(".") + [k])
    for split in ("train", "test"):
        hashable["dataloader"][split]["dataset"].pop("names", None)
    from bench.core.results import config_hash

    record = dict(
        engine="detectron2",
        backbone=backbone,
        variant=variant,
        config=config_name,
        overrides=list(overrides),
        config_hash=config_hash(hashable),
        max_iter=max_iter,
        total_batch_size=total,
        seed=int(seed),
    )
    check_run_record(work_dir / RUN_RECORD, record, resume=resume)

    seed_all_rng(int(seed) + comm.get_rank())
    created = not work_dir.exists()
    try:
        model = instantiate(cfg.model)
        check_feature_strides(model)
    except BenchError:
        if created:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    except Exception as e:  # detectron2's own checks (shapes, config types): one line
        if created:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise BenchError(f"{path}: building model failed ({first_line(e, with_type=True)})") from None
    model.to(device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_kwargs = dict(cfg.train.ddp)
    if device == "cpu":
        ddp_kwargs["device_ids"] = None
    ddp_model = create_ddp_model(model, **ddp_kwargs)
    trainer = (AMPTrainer if amp else SimpleTrainer)(ddp_model, train_loader, optimizer)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_file = work_dir / "log.txt"
    if comm.is_main_process():
        write_run_record(work_dir / RUN_RECORD, record)
        _log_to(log_file)
    checkpointer = _atomic_checkpointer(model, work_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.PeriodicWriter(
                [CommonMetricPrinter(max_iter), JSONWriter(str(work_dir / "metrics.json"))],
                period=int(cfg.train.log_period),
            )
            if comm.is_main_process()
            else None,
        ]
    )
    start_iter = 0
    if resume:
        it = newest_readable_checkpoint(checkpointer, work_dir)
        if it is not None:
            start_iter = it + 1
    if start_iter < max_iter:
        try:
            trainer.train(start_iter, max_iter)
        except FloatingPointError as e:
            raise NonFiniteLossError(f"{work_dir}: {first_line(e)} (the last checkpoint there is intact)") from None

    # evaluation: COCOEvaluator on val, every rank runs inference; rank 0 gets the results
    eval_dir = work_dir / "inference"
    evaluator = COCOEvaluator(names["val"], output_dir=str(eval_dir), tasks=("bbox", "segm"))
    d2_results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if not comm.is_main_process():
        return None
    dets_file = eval_dir / "coco_instances_results.json"
    metrics = metrics_from_coco_evaluator(d2_results)
    dets = json.loads(dets_file.read_text()) if dets_file.is_file() else []
    ours = coco_evaluate(data["val_ann"], dets) if dets else {}
    for k, v in ours.items():  # the AR numbers COCOEvaluator does not report
        metrics.setdefault(k, v)
    nan = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    per_example = work_dir / "per_example.npz"
    write_per_example(per_example, data["val_ann"], dets)
    bb_node = node
    lff = cfg.optimizer.params.get("lr_factor_func")
    layer_decay = float(lff.keywords.get("lr_decay_rate", 1.0)) if isinstance(lff, functools.partial) else 1.0
    return dict(
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
        protocol=cfg.get("protocol", PROTOCOL_OF_VARIANT[variant]),
        init=init,
        arch=arch,
        iterations=max_iter,
        wall_time_s=time.time() - t0,
        config=hashable,
        data=data,
        extra=dict(
            engine="detectron2",
            backbone_name=backbone,
            variant=variant,
            config=config_name,
            lr=lr,
            batch_size=total,
            world_size=world,
            start_iter=start_iter,
            amp=amp,
            mask_format=mask_format,
            img_size=int(bb_node.get("img_size", 1024)),
            layer_decay=layer_decay,
            drop_path=float(bb_node.get("drop_path_rate", 0.0)),
            fp32_fallback=bool(cfg.train.amp.enabled) and not amp,
            log_file=str(log_file),
            num_train_images=data["num_train"],
            num_val_images=data["num_val"],
            num_categories=num_classes,
            nan_metrics=nan,
            work_dir=str(work_dir),
            dets_out=str(dets_file),
            per_example=str(per_example),
        ),
    )


def _join_process_group() -> None:
    """Under torchrun / srun: the default process group and detectron2's per-machine group (what
    ``detectron2.engine.launch`` sets up; ``comm.get_local_rank`` needs it)."""
    import os

    from detectron2.utils import comm

    from bench.core.distributed import init_distributed

    _, world, _ = init_distributed()
    if world <= 1 or comm._LOCAL_PROCESS_GROUP is not None:
        return
    # torchrun: LOCAL_WORLD_SIZE; srun: SLURM_NTASKS_PER_NODE ("2" or "2(x3)")
    raw = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    per_machine = int(raw) if raw.isdigit() else world
    if per_machine < 1 or world % per_machine:
        raise BenchError(
            f"{world} processes do not split into machines of {per_machine} (LOCAL_WORLD_SIZE / SLURM_NTASKS_PER_NODE)"
        )
    comm.create_local_process_group(per_machine)


def _log_to(log_file: Path) -> None:
    """detectron2's training log (losses, timing, evaluation) to ``log_file``."""
    target = str(Path(log_file).resolve())
    lg = logging.getLogger("detectron2")
    lg.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in lg.handlers):
        h = logging.FileHandler(target)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
        lg.addHandler(h)


def _pop_path(d: dict, keys: list[str]) -> None:
    for k in keys[:-1]:
        d = d.get(k, {})
    d.pop(keys[-1], None)


# COCOEvaluator's names -> ours (tasks/detection/evaluation.metric_names)
_D2_NAMES = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "AP_s", "APm": "AP_m", "APl": "AP_l"}
_TAG = {"bbox": "box", "segm": "mask"}


def metrics_from_coco_evaluator(results: dict) -> dict[str, float]:
    """``{'bbox': {'AP': ..}, 'segm': {..}}`` (percent) -> ``{'APbox': .., 'APmask_s': ..}``."""
    out = {}
    for task, tag in _TAG.items():
        for theirs, ours in _D2_NAMES.items():
            if theirs in results.get(task, {}):
                v = results[task][theirs]
                out[ours[:2] + tag + ours[2:]] = float(v) if v != "nan" else math.nan
    return out


__all__ = [
    "run_detectron2",
    "resolve_config",
    "load_lazy_config",
    "metrics_from_coco_evaluator",
    "newest_readable_checkpoint",
    "NAMED_CONFIGS",
]
