"""The detectron2 engine of COCO Mask R-CNN transfer (beside mmdet's ``tasks/detection/mmdet_run.py``;
what both share is in ``tasks/detection/protocol.py``):

    from tasks.detection.detectron2.run import run_detectron2
    row = run_detectron2(TransferRun(task="coco", protocol="maskrcnn_vitdet", engine="detectron2", ...))

``config``: ``'auto'`` (by architecture), a name (``'smoke'``, ``'vit_b'``, ``'vit_l'``) or a LazyConfig
file (``trust_config``: it is code). ``cfg_options`` are detectron2 ``key=value`` overrides; those that
create or change a ``_target_`` or name an importable object need ``trust_config`` too. The config's
``model.backbone`` must be (or, for FPN, hold as ``bottom_up``) a ``RegistryBackbone``.

A run is prepare -> build -> train (detectron2's ``SimpleTrainer``, ``AMPTrainer`` in fp16 when the
config enables AMP and CUDA is there; or, with ``eval_only``, load ``weights``: a detectron2 checkpoint,
ours or the library's) -> evaluate (``COCOEvaluator`` on val2017; the AR numbers from ``coco_evaluate``
on the detections it wrote) -> the row (``detection_row``). The work folder is
``bench.core.workdir.WorkDir``: the settings guard, the newest readable checkpoint (one of a longer run
or of other settings is refused), ``--no-resume`` moving old checkpoints aside. The config is saved as
``config.yaml`` in the work dir (detectron2's ``LazyConfig.save``). Under torchrun / srun each process
trains on ``local_device()`` with detectron2's per-machine group, ranks started with other settings
(the run record) stop in one line before anything is written, and a non-finite loss on any rank
stops every rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from backbones.registry import parse_name
from bench.core.checkpoint import save_atomic
from bench.core.device import start_line, training_device
from bench.core.distributed import all_ranks_finite, check_same_settings, init_distributed
from bench.core.errors import BenchError, NonFiniteLossError, first_line
from bench.core.results import ResultsStore, config_hash, sha256_file
from bench.core.workdir import WorkDir, check_checkpoint_settings
from tasks.detection.detectron2.backbone import check_model
from tasks.detection.detectron2.config import (
    MASK_FORMAT_KEY,
    apply_overrides,
    hashable,
    load_lazy_config,
    override_strings,
    registry_backbone_node,
    save_config,
    scale_schedule,
    set_data,
    set_lr_and_depth,
)
from tasks.detection.detectron2.install import require_detectron2
from tasks.detection.evaluation import coco_evaluate, write_per_example
from tasks.detection.protocol import (
    PROTOCOL_OF_VARIANT,
    DetResult,
    check_batch,
    check_run,
    data_identity,
    det_options,
    detection_row,
    resolve_config,
    run_data,
)
from tasks.spec import TransferRun

RUN_RECORD = "bench_d2_run.json"
logger = logging.getLogger(__name__)


def work_dir_of(path) -> WorkDir:
    """The work folder as ``bench.core.workdir`` sees detectron2's files."""
    return WorkDir(
        path, pattern="model_*.pth", finals=("model_final.pth",), settings=RUN_RECORD, writes=("last_checkpoint",)
    )


# --------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------
@dataclass
class D2Job:
    run: TransferRun
    cfg: object
    path: Path
    config_name: str
    variant: str
    data: dict
    node_key: str
    device: torch.device
    amp: bool
    lr: float
    layer_decay: float
    total: int
    world: int
    record: dict
    dets_out: str | None
    fp32_fallback: bool  # the config asked for AMP, but there is no CUDA
    hashed: dict  # the effective config without paths (taken before the model joins it)


def prepare(run: TransferRun) -> D2Job:
    """Check everything and fill the config, before anything is written."""
    check_run(run)
    opts = det_options(run)
    if opts["channels_last"] is not None:
        raise BenchError("--channels-last: an mmdet engine option (detectron2 keeps its own memory format)")
    variant = opts["variant"] or "fpn"
    init, arch = parse_name(run.backbone)
    path, config_name = resolve_config(run.config, variant, arch, "detectron2")
    data = run_data(run)
    _join_process_group()
    cfg = apply_overrides(
        load_lazy_config(path, run.trust_config), override_strings(run.cfg_options), path, trust_config=run.trust_config
    )
    node, node_key = registry_backbone_node(cfg, path)
    node.update(name=run.backbone, checkpoint=None if run.checkpoint is None else str(run.checkpoint))
    node.trust_checkpoint = bool(run.trust_checkpoint)
    cfg.model.roi_heads.num_classes = len(data["categories"])
    cfg.train.init_checkpoint = ""  # the registry loads the backbone weights (converted, safe loading)
    lr, layer_decay = set_lr_and_depth(cfg, init, arch, given_lr="optimizer.lr" in run.cfg_options)
    world = comm.get_world_size()
    total = int(run.batch_size or cfg.dataloader.train.total_batch_size)
    if total % world:
        raise BenchError(f"--batch-size {total}: must be a multiple of the {world} processes")
    if total != int(cfg.dataloader.train.total_batch_size):  # linear lr scaling, as mmdet's auto_scale_lr
        cfg.optimizer.lr = lr = lr * total / int(cfg.dataloader.train.total_batch_size)
    cfg.dataloader.train.total_batch_size = total
    check_batch(run, data, total)
    scale_schedule(cfg, int(run.iters or cfg.train.max_iter))
    cfg.train.checkpointer.period = min(int(opts["ckpt_interval"] or cfg.train.checkpointer.period), cfg.train.max_iter)
    device = training_device(run.device)  # cuda:(LOCAL_RANK % visible GPUs) under a launcher
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wanted = bool(cfg.train.amp.enabled) if run.amp is None else bool(run.amp)  # None: the config's
    amp = wanted and device.type == "cuda"  # fp16 (AMPTrainer's default), as the recipe and the docs say
    cfg.train.device, cfg.train.amp.enabled = str(device), amp
    if device.type == "cpu":
        cfg.train.ddp.pop("device_ids", None)  # DDP of a CPU module takes no device ids
    set_data(cfg, data, run.work_dir, mask_format_given=MASK_FORMAT_KEY in run.cfg_options)
    cfg.train.output_dir = str(run.work_dir)
    hashed = hashable(cfg, node_key)
    record = dict(
        engine="detectron2",
        backbone=run.backbone,
        checkpoint=None if run.checkpoint is None else str(Path(run.checkpoint).resolve()),
        checkpoint_sha256=None if run.checkpoint is None else sha256_file(run.checkpoint),
        label=run.row_label,
        data=data_identity(data),
        variant=variant,
        config=config_name,
        overrides=override_strings(run.cfg_options),
        config_hash=config_hash(hashed),
        max_iter=int(cfg.train.max_iter),
        total_batch_size=total,
        seed=int(run.seed),
    )
    return D2Job(
        run, cfg, path, config_name, variant, data, node_key, device, amp, lr, layer_decay, total, world, record,
        opts["dets_out"], wanted and not amp, hashed,
    )  # fmt: skip


def _join_process_group() -> None:
    """Under torchrun / srun: the default process group and detectron2's per-machine group (what
    ``detectron2.engine.launch`` sets up; ``comm.get_local_rank`` needs it)."""
    _, world, _ = init_distributed()
    if world <= 1 or comm._LOCAL_PROCESS_GROUP is not None:
        return
    comm.create_local_process_group(processes_per_machine(world))


def processes_per_machine(world: int, environ=None) -> int:
    """Processes per machine: torchrun's ``LOCAL_WORLD_SIZE``, else Slurm's ``SLURM_STEP_TASKS_PER_NODE``
    (then ``SLURM_NTASKS_PER_NODE``), ``"4"`` or ``"4(x2)"``; uneven machines ("4,2") are refused."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        raw = env.get(key, "").strip()
        if not raw:
            continue
        counts = {part.split("(")[0] for part in raw.split(",")}
        if len(counts) != 1 or not next(iter(counts)).isdigit():
            raise BenchError(
                f"{key}={raw!r}: detectron2 needs the same number of processes on every machine; "
                f"start as many tasks per node everywhere"
            )
        per = int(counts.pop())
        if per < 1 or world % per:
            raise BenchError(f"{world} processes do not split into machines of {per} ({key}={raw!r})")
        return per
    if world > 1 and any(k.startswith("SLURM_") for k in env):
        raise BenchError(
            f"{world} Slurm processes but neither SLURM_STEP_TASKS_PER_NODE nor SLURM_NTASKS_PER_NODE is "
            f"set: start them with srun --ntasks-per-node"
        )
    return world


# --------------------------------------------------------------------------------------------------
# build, train
# --------------------------------------------------------------------------------------------------
class _AllRanksFinite:
    """A detectron2 trainer whose non-finite loss is agreed across ranks (one all-reduce) before any
    rank raises: detectron2 checks on rank 0 alone, leaving the others waiting in the next collective."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):  # noqa: A002 (detectron2's name)
        total = sum(float(v.detach()) if torch.is_tensor(v) else float(v) for v in loss_dict.values())
        if not all_ranks_finite(total):
            raise FloatingPointError(f"loss became non-finite at iteration {self.iter} on some rank ({total} here)")
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteSimpleTrainer(_AllRanksFinite, SimpleTrainer):
    pass


class FiniteAMPTrainer(_AllRanksFinite, AMPTrainer):
    pass


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer whose ``save`` writes a temp file and renames it (a kill leaves no
    half-written checkpoint) and records the run's settings in the file."""

    settings: dict | None = None

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), "bench_settings": self.settings}
        data.update({k: obj.state_dict() for k, obj in self.checkpointables.items()})
        data.update(kwargs)
        save_atomic(data, Path(self.save_dir) / f"{name}.pth")
        self.tag_last_checkpoint(f"{name}.pth")


def build(job: D2Job):
    """The model on the run's device, its heads checked against the backbone (one line)."""
    seed_all_rng(int(job.run.seed) + comm.get_rank())
    try:
        model = instantiate(job.cfg.model)
    except BenchError:
        raise
    except Exception as e:  # detectron2's own checks (shapes, config types): one line
        raise BenchError(f"{job.path}: building model failed ({first_line(e, with_type=True)})") from None
    check_model(model)
    return model.to(job.device)


def train(job: D2Job, model) -> int:
    """Train from the newest readable checkpoint (``run.resume``) to ``max_iter``; the start iteration."""
    cfg, run = job.cfg, job.run
    wd = work_dir_of(run.work_dir)
    if comm.is_main_process():
        wd.path.mkdir(parents=True, exist_ok=True)
        wd.clean_temps()
        if not run.resume:
            wd.start_fresh()  # the old checkpoints go to previous-<time>/, nothing is deleted
        wd.write_settings(job.record)
        save_config(cfg, run.work_dir)  # before the model object joins the config
        _log_to(wd.path / "log.txt")
    comm.synchronize()
    cfg.optimizer.params.model = model
    ddp_kwargs = dict(cfg.train.ddp, device_ids=[job.device.index] if job.device.type == "cuda" else None)
    trainer = (FiniteAMPTrainer if job.amp else FiniteSimpleTrainer)(
        create_ddp_model(model, **ddp_kwargs), instantiate(cfg.dataloader.train), instantiate(cfg.optimizer)
    )
    checkpointer = AtomicCheckpointer(model, str(run.work_dir), trainer=trainer)
    checkpointer.settings = job.record
    trainer.register_hooks(_hooks(cfg, checkpointer, run.work_dir))
    start_iter = _resume(wd, checkpointer, job) if run.resume else 0
    if start_iter < int(cfg.train.max_iter):
        try:
            trainer.train(start_iter, int(cfg.train.max_iter))
        except FloatingPointError as e:
            raise NonFiniteLossError(f"{run.work_dir}: {first_line(e)} (the last checkpoint there is intact)") from None
    return start_iter


def _hooks(cfg, checkpointer, work_dir) -> list:
    main = comm.is_main_process()
    max_iter = int(cfg.train.max_iter)
    return [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.PeriodicWriter(
            [CommonMetricPrinter(max_iter), JSONWriter(str(Path(work_dir) / "metrics.json"))],
            period=int(cfg.train.log_period),
        )
        if main
        else None,
    ]


def _resume(wd: WorkDir, checkpointer, job: D2Job) -> int:
    """Load the newest readable checkpoint (its settings and step checked); the iteration to start at."""

    def load(path):
        try:
            return checkpointer.load(str(path))
        finally:
            checkpointer._parsed_url_during_load = None  # DetectionCheckpointer.load leaves it set on failure

    found = wd.newest_readable(
        load, max_step=int(job.cfg.train.max_iter) - 1, step_of_state=lambda s: int(s.get("iteration", -1))
    )
    if found is None:
        return 0
    path, state = found
    check_checkpoint_settings(path, state.get("bench_settings"), job.record)
    return int(state.get("iteration", -1)) + 1


def _log_to(log_file: Path) -> None:
    """detectron2's training log (losses, timing, evaluation) to ``log_file``."""
    target = str(Path(log_file).resolve())
    lg = logging.getLogger("detectron2")
    lg.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in lg.handlers):
        h = logging.FileHandler(target)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
        lg.addHandler(h)


# --------------------------------------------------------------------------------------------------
# evaluate, row
# --------------------------------------------------------------------------------------------------
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


def load_weights(job: D2Job, model) -> None:
    """``eval_only``: the trained model from ``run.weights`` (a detectron2 checkpoint)."""
    try:
        DetectionCheckpointer(model).load(str(job.run.weights))
    except Exception as e:
        raise BenchError(f"{job.run.weights}: cannot load as a detectron2 checkpoint ({first_line(e)})") from None


def evaluate(job: D2Job, model) -> tuple[dict, Path] | None:
    """COCOEvaluator on val (every rank runs inference); rank 0: (metrics, detections file)."""
    results = inference_on_dataset(
        model, instantiate(job.cfg.dataloader.test), instantiate(job.cfg.dataloader.evaluator)
    )
    if not comm.is_main_process():
        return None
    dets_file = Path(job.cfg.dataloader.evaluator.output_dir) / "coco_instances_results.json"
    metrics = metrics_from_coco_evaluator(results)
    dets = json.loads(dets_file.read_text()) if dets_file.is_file() else []
    for k, v in (coco_evaluate(job.data["val_ann"], dets) if dets else {}).items():
        metrics.setdefault(k, v)  # the AR numbers COCOEvaluator does not report
    return metrics, dets_file


def result_of(job: D2Job, metrics: dict, dets_file: Path, start_iter: int, wall: float) -> DetResult:
    node, _ = registry_backbone_node(job.cfg, job.path)
    dets = json.loads(dets_file.read_text()) if dets_file.is_file() else []
    per_example = write_per_example(Path(job.run.work_dir) / "per_example.npz", job.data["val_ann"], dets)
    if job.dets_out is not None:
        Path(job.dets_out).write_text(json.dumps(dets))
    return DetResult(
        engine="detectron2",
        variant=job.variant,
        protocol=job.cfg.get("protocol", PROTOCOL_OF_VARIANT[job.variant]),
        config_name=job.config_name,
        config_file=job.path,
        metrics=metrics,
        hashed=job.hashed,
        data=job.data,
        iterations=int(job.cfg.train.max_iter),
        start_iter=start_iter,
        wall_time_s=wall,
        batch_size=job.total,
        world_size=job.world,
        img_size=int(node.get("img_size", 1024)),
        lr=job.lr,
        layer_decay=job.layer_decay,
        drop_path=float(node.get("drop_path_rate", 0.0)),
        fp32_fallback=job.fp32_fallback,
        amp=job.amp,
        log_file=Path(job.run.work_dir) / "log.txt",
        dets_out=job.dets_out or str(dets_file),
        per_example=per_example,
    )


def run_detectron2(run: TransferRun) -> dict | None:
    """Train Mask R-CNN with detectron2 (or load ``run.weights`` with ``eval_only``), evaluate on
    val2017; the row (appended to ``run.results`` when given), None on ranks > 0."""
    require_detectron2()  # one line that says how to install it (also when this module was imported before)
    t0 = time.time()
    job = prepare(run)
    check_same_settings(job.record)  # ranks started with other options: one line on every rank, nothing written
    if not run.eval_only:  # before anything is built
        work_dir_of(run.work_dir).guard(job.record, resume=run.resume)
    model = build(job)
    if comm.is_main_process():  # the start line every training command prints
        print(start_line("det detectron2", job.device, torch.float16 if job.amp else None, comm.get_world_size()))
    start_iter = 0
    if run.eval_only:
        load_weights(job, model)
    else:
        start_iter = train(job, model)
    out = evaluate(job, model)
    if out is None:
        return None
    row = detection_row(run, result_of(job, *out, start_iter, time.time() - t0))
    if run.results is not None:
        ResultsStore(run.results).append(row)
    return row
