"""One classification transfer run, in four steps: ``prepare`` (config, data, model, work folder),
``train`` (``bench.core.engine.fit``), ``evaluate`` (top-1 / top-5 on the reported split) and ``make_cls_row``.
``run_classification(run)`` takes the run's facts object, ``tasks.spec.TransferRun``:

    from tasks.spec import TransferRun
    from tasks.classification.run import run_classification
    row = run_classification(TransferRun(task="inat2018", protocol="finetune", backbone="mae_vit_base_patch16",
                                         checkpoint=Path("mae_pretrain_vit_base.pth"), data_root=Path("/data/inat2018"),
                                         work_dir=None, seed=0, suite="adhoc", results=Path("results/main")))

``work_dir=None`` is the default folder, ``work_dirs/cls/<task>-<protocol>-<label>-<key>-s<seed>``, where
``<key>`` hashes what determines the result: the checkpoint's sha256, the data's identity and the
effective config. The folder's ``config.json`` records them too, so a folder started with another
checkpoint, other data or another config is refused in one line naming the key (never resumed as if it
were the same run). It also holds the engine's checkpoints and ``log.jsonl``, ``features-train.pth``
for a cached linear probe, ``per_example.npz`` (``ids``: image paths relative to the data root;
``correct`` / ``correct5`` per image, in the evaluated split's order), ``result.json`` (the row) and,
with ``options['eval_every']`` = N, ``curve.jsonl``: one ``{"epoch", "step", "train_loss",
"eval_top1", "eval_top5"}`` line every N epochs (see ``curve``).

``options`` read here: ``fsdp`` (bool: FSDP2 under torchrun), ``eval_every`` (int epochs).
``eval_only`` with ``weights``: evaluate a classifier this task trained (a ``checkpoint-*.pth`` of its
folder) without training; the row is the same, with ``extra['eval_only'] = True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from backbones.provenance import provenance_of
from backbones.registry import parse_name
from backbones.vit import Block, arch_config
from bench.core.checkpoint import load_checkpoint_file, save_atomic
from bench.core.determinism import seed_everything
from bench.core.distributed import convert_sync_batchnorm, rank_world
from bench.core.engine import TrainConfig, check_config, fit, micro_batches_per_epoch, pick_device, worker_error
from bench.core.errors import BenchError, CheckpointError, NonFiniteLossError
from bench.core.io import atomic_open, atomic_write_json
from bench.core.options import default_out
from bench.core.results import FIELDS, ResultsStore, check_outputs, config_hash, make_row, sha256_file
from bench.core.workdir import check_regular, check_settings_file, write_settings_file
from tasks.classification import config as C
from tasks.classification import protocols as P
from tasks.classification.curve import CurveWriter
from tasks.classification.datasets import DATASETS, ImageDataset, heldout_for, read_splits
from tasks.spec import TransferRun

SELECT = (None, "heldout")
OPTIONS = ("fsdp", "eval_every")
RUN_RECORD = "config.json"
PARTIAL_EPOCHS = "50/100/200"  # [MAE] A.1: partial fine-tuning's epochs, chosen per k
# What the folder's record holds beside the effective config (the row's config_hash covers the config only)
RESULT_FILES = ("per_example.npz", "result.json", "curve.jsonl")
IDENTITY_KEYS = ("checkpoint_sha256", "data", "label", "weights_sha256", "eval_only")


@dataclass
class Prepared:
    """Everything a run's steps share, resolved once by ``prepare``."""

    run: TransferRun
    cfg: dict
    init: str
    arch: str
    k: int | str | None
    recipe: str
    train_split: object
    val_split: object
    model: torch.nn.Module
    img_size: int
    out: Path
    record: dict  # the folder's run record: effective config + IDENTITY_KEYS
    identity: dict  # checkpoint_sha256, data, label (and weights_sha256 for eval-only)
    rank: int
    world: int
    workers: int
    amp: bool
    t_start: float


# --------------------------------------------------------------------------------------------------
# Config and identity
# --------------------------------------------------------------------------------------------------
def resolve_config(run: TransferRun, arch: str, k) -> dict:
    """The protocol config with, in order: ``config`` (file, name or dict), ``epochs`` / ``batch_size``,
    the search point ``overrides``, then ``cfg_options`` (KEY=VALUE, last)."""
    cfg = P.load_config(run.protocol, arch, k, run.config)
    if run.epochs is not None:
        cfg["epochs"] = P._check_value("epochs", run.epochs, "--epochs")
    if run.batch_size is not None:
        cfg["batch_size"] = P._check_value("batch_size", run.batch_size, "--batch-size")
    P._check_semantics(cfg, "config")
    C.apply_overrides(cfg, run.overrides)
    C.apply_overrides(cfg, run.cfg_options, where="--cfg-options")
    if (cfg["mixup"] > 0 or cfg["cutmix"] > 0) and cfg["batch_size"] % 2:
        raise BenchError(f"batch_size {cfg['batch_size']} must be even for mixup / cutmix")
    return cfg


def data_identity(dataset: str, train_split, val_split, root: Path) -> str:
    """12 hex of the dataset's contents as the reader sees them: every image's path relative to the
    root, label and size in bytes, both splits (another generated set or another copy of the data is
    another run; moving the folder is not)."""
    h = hashlib.sha256(dataset.encode())
    for split in (train_split, val_split):
        h.update(f"|{split.name}|{len(split.classes)}|".encode())
        for path, label in split.samples:
            h.update(f"{os.path.relpath(path, root)}\t{label}\t{os.path.getsize(path)}\n".encode())
    return h.hexdigest()[:12]


def run_key(identity: dict, cfg_record: dict) -> str:
    """8 hex naming the default folder: checkpoint, data and effective config together."""
    text = json.dumps([identity, config_hash(cfg_record)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _check_run(run: TransferRun) -> None:
    P.check_protocol(run.protocol)
    if run.task not in DATASETS:
        raise BenchError(f"unknown dataset {run.task!r}; expected one of {', '.join(DATASETS)}")
    if run.select not in SELECT:
        raise BenchError(f"select must be None or 'heldout', got {run.select!r:.60}")
    unknown = sorted(set(run.options) - set(OPTIONS))
    if unknown:
        raise BenchError(f"classification: unknown option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    if run.eval_only and run.weights is None:
        raise BenchError("eval_only needs weights: the trained classifier to evaluate")
    every = run.options.get("eval_every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise BenchError(f"--eval-every must be a whole number of epochs >= 1, got {every!r}")
    if every and run.options.get("fsdp"):
        raise BenchError("--eval-every is not available with --fsdp (sharded evaluation mid-run)")


def _check_k_recordable(k) -> None:
    if k == C.MLP and not isinstance(0.5, FIELDS["k"]):
        raise BenchError(
            "--k mlp: the results schema (bench/results.py, row key 'k') only holds whole "
            "block counts, so the MLP-only point of Fig. 9 cannot be recorded yet"
        )


def _per_process_batch(global_batch: int, accum_iter: int, world: int) -> int:
    if global_batch % (accum_iter * world):
        raise BenchError(f"batch_size {global_batch} is not divisible by accum_iter {accum_iter} x {world} process(es)")
    return global_batch // (accum_iter * world)


def _check_batch_fits(n: int, micro: int, world: int, cfg: dict) -> None:
    """A split smaller than one global batch: say which options fix it."""
    if n < micro * world:
        raise BenchError(
            f"the training split has {n} images, fewer than one global batch of {cfg['batch_size']}; "
            f"pass --batch-size N (N <= {n}) or --config smoke"
        )


# --------------------------------------------------------------------------------------------------
# prepare -> train -> evaluate -> row
# --------------------------------------------------------------------------------------------------
def prepare(run: TransferRun) -> Prepared:
    """Check everything the user can get wrong, read the data, build the model and claim the work
    folder (refused when it holds a run of other settings); nothing is written before the checks."""
    t_start = time.perf_counter()
    _check_run(run)
    init, arch = parse_name(run.backbone)
    k = P.check_k(run.protocol, run.k, arch_config(arch)["depth"])
    if run.protocol == "partial":
        _check_k_recordable(k)
    rec = P.recipe(run.protocol, k)
    cfg = resolve_config(run, arch, k)
    rank, world = rank_world()  # under torchrun only rank 0 writes files and the results row
    micro = _per_process_batch(cfg["batch_size"], cfg["accum_iter"], world)
    root = Path(run.data_root)
    train_split, val_split = read_splits(run.task, root)
    identity = {
        "checkpoint_sha256": None if run.checkpoint is None else sha256_file(run.checkpoint),
        "data": data_identity(run.task, train_split, val_split, root),
        "label": run.row_label,
    }
    if run.select == "heldout":
        train_split, val_split = heldout_for(run.task, train_split)
    if run.eval_only:
        identity["weights_sha256"] = sha256_file(run.weights)
    else:
        _check_batch_fits(len(train_split), micro, world, cfg)
    seed_everything(run.seed)  # the new head's (and a random init's) weights follow from the seed
    model = _build_model(run, cfg, k, train_split.num_classes)
    img_size = model.pos_grid[0] * model.patch_size
    cfg_record = {
        **cfg,
        **{"recipe": rec, "k": k, "backbone": run.backbone, "dataset": run.task},
        **{"num_classes": train_split.num_classes, "img_size": img_size},
    }
    if run.select is not None:  # a selection run and the reported run never share a folder
        cfg_record["select"] = run.select
    out = Path(run.work_dir) if run.work_dir else _default_folder(run, rec, k, identity, cfg_record)
    check_outputs(out, run.results)
    record = {**cfg_record, **identity, **({"eval_only": True} if run.eval_only else {})}
    return Prepared(
        **{"run": run, "cfg": cfg, "init": init, "arch": arch, "k": k, "recipe": rec},
        **{"train_split": train_split, "val_split": val_split, "model": model, "img_size": img_size},
        **{"out": out, "record": record, "identity": identity, "rank": rank, "world": world},
        **{"workers": min(cfg["num_workers"], os.cpu_count() or 1), "amp": bool(run.amp), "t_start": t_start},
    )


def _default_folder(run: TransferRun, rec: str, k, identity: dict, cfg_record: dict) -> Path:
    protocol = run.protocol if k is None else f"{run.protocol}-k{k}"
    name = f"{run.label or run.backbone}-{run_key(identity, cfg_record)}"
    if run.eval_only:
        name += "-eval"
    return default_out("cls", run.task, protocol, name, run.seed)


def _build_model(run: TransferRun, cfg: dict, k, num_classes: int) -> torch.nn.Module:
    model = P.build_classifier(
        run.backbone,
        run.checkpoint,
        run.protocol,
        num_classes,
        img_size=cfg["img_size"],
        k=k,
        drop_path=cfg["drop_path"],
        global_pool=cfg["global_pool"],
        head_init_std=cfg["head_init_std"],
        trust_checkpoint=run.trust_checkpoint,
    )
    # under DDP only: the linear probe's BatchNorm1d normalises over the global batch, as one process would
    return convert_sync_batchnorm(model)


def train_config(p: Prepared) -> TrainConfig:
    cfg, run = p.cfg, p.run
    if p.recipe == "linear" and cfg["batch_size"] // cfg["accum_iter"] < 2:
        raise BenchError(
            f"batch_size {cfg['batch_size']} (accum_iter {cfg['accum_iter']}): the linear probe's BatchNorm "
            "needs at least 2 images per step; pass --batch-size 2 or more"
        )
    return TrainConfig(
        out_dir=str(p.out),
        batch_size=_per_process_batch(cfg["batch_size"], cfg["accum_iter"], p.world),
        epochs=cfg["epochs"],
        accum_iter=cfg["accum_iter"],
        blr=cfg["blr"],
        lr=cfg["lr"],
        min_lr=cfg["min_lr"],
        warmup_epochs=cfg["warmup_epochs"],
        weight_decay=cfg["weight_decay"],
        betas=tuple(cfg["betas"]),
        optimizer=cfg["optimizer"],
        momentum=cfg["momentum"],
        clip_grad=cfg["clip_grad"],
        bf16=p.amp,
        seed=run.seed,
        ckpt_every=cfg["ckpt_every"],
        num_workers=p.workers,
        progress=run.progress,
        desc=f"{run.protocol}{'' if p.k is None else f' k={p.k}'} {run.backbone} {run.task}",
        device=run.device,
        fsdp=bool(run.options.get("fsdp")),
    )


ENGINE_FILES = ("log.jsonl", "train_settings.json", "checkpoints.sha256")  # what bench.core.engine writes


def claim_folder(p: Prepared, tc: TrainConfig | None) -> None:
    """The last checks, then the run record: the folder is refused when it holds other settings."""
    if tc is not None:
        check_config(tc)  # everything the engine would refuse is refused before the first file is written
        micro_batches_per_epoch(len(p.train_split), tc.batch_size, p.world)
    if p.run.resume or p.run.eval_only:  # --no-resume: the engine moves the previous run aside
        check_settings_file(p.out / RUN_RECORD, p.record, hint="use another --out or --no-resume")
    for name in ENGINE_FILES:  # a FIFO there is refused before the record is written, not after
        check_regular(p.out / name)
    p.out.mkdir(parents=True, exist_ok=True)
    if p.rank == 0:
        write_settings_file(p.out / RUN_RECORD, p.record)


def train(p: Prepared, tc: TrainConfig):
    """Train on images (the paper's protocols) or on cached frozen features (``cache_features``)."""
    cfg, run = p.cfg, p.run
    loss_fn = P.make_loss_fn(cfg, p.train_split.num_classes)
    cached = p.recipe == "linear" and cfg["cache_features"]
    curve = None
    if run.options.get("eval_every"):
        val_set = ImageDataset(p.val_split, P.eval_transform(cfg, p.img_size))
        if cached:  # the frozen backbone's val features, once: each curve point evaluates the head only
            curve = CurveWriter(
                p.out, p.model.head, TensorDataset(*_features(p, val_set)), run.options["eval_every"], cfg, p.amp
            )
        else:
            curve = CurveWriter(p.out, p.model, val_set, run.options["eval_every"], cfg, p.amp)
        loss_fn = curve.wrap(loss_fn)
    if cached:
        feats = cached_features(p)
        head = p.model.head
        tc.num_workers = 0
        dataset, trained, groups, block = TensorDataset(*feats), head, P.param_groups_for("linear", head, cfg), None
    else:
        dataset = ImageDataset(p.train_split, P.train_transform(cfg, p.img_size))
        trained, groups, block = p.model, P.param_groups_for(p.recipe, p.model, cfg), Block
    after = curve.after_step(len(dataset), tc, p.world) if curve else None
    return fit(
        *(trained, dataset, loss_fn, tc),
        **{"groups": groups, "resume": run.resume, "block_type": block, "after_step": after},
        writes=RESULT_FILES,  # --no-resume moves the previous run's results aside with its checkpoints
    )


def cached_features(p: Prepared):
    """The frozen training features, computed once without augmentation and kept in the folder."""
    p.model.to(pick_device(p.run.device))
    path = p.out / "features-train.pth"
    feats = _load_features(path, len(p.train_split)) if p.run.resume else None
    if feats is None:
        feats = _features(p, ImageDataset(p.train_split, P.eval_transform(p.cfg, p.img_size)))
        if p.rank == 0:
            save_atomic({"features": feats[0], "labels": feats[1]}, path)
    return feats


def _features(p: Prepared, dataset) -> tuple:
    """The frozen model's pre-logit features and labels of ``dataset`` (what the linear head sees)."""
    p.model.to(pick_device(p.run.device))
    try:
        return P.extract_features(p.model, dataset, p.cfg["eval_batch_size"], bf16=p.amp, num_workers=p.workers)
    except BenchError as e:  # a bad image, read in a loader worker
        raise worker_error(e) from None


def evaluate(p: Prepared) -> dict:
    """Top-1 / top-5 on the reported split; ``per_example.npz`` written beside the row."""
    p.model.to(pick_device(p.run.device))
    check_finite(p.model, p.out)
    val_set = ImageDataset(p.val_split, P.eval_transform(p.cfg, p.img_size))
    try:
        metrics, correct, correct5 = P.evaluate(
            p.model, val_set, p.cfg["eval_batch_size"], bf16=p.amp, num_workers=p.workers, per_example=True
        )
    except BenchError as e:  # a bad image, read in a loader worker
        raise worker_error(e) from None
    if p.rank == 0:
        ids = [os.path.relpath(path, p.run.data_root) for path, _ in p.val_split.samples]
        write_per_example(p.out / "per_example.npz", ids, correct, correct5)
    return metrics


def make_cls_row(p: Prepared, metrics: dict, steps: int, final_loss: float | None) -> dict:
    """The results row of a run, from its facts (``p.run``) and what it measured."""
    cfg, run = p.cfg, p.run
    extra = {
        "img_size": p.img_size,
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"] if cfg["lr"] is not None else cfg["blr"] * cfg["batch_size"] / 256,
        "recipe": p.recipe,
        "num_classes": p.train_split.num_classes,
        "n_train": len(p.train_split),
        "n_val": len(p.val_split),
        "global_pool": cfg["global_pool"],
        "cache_features": p.recipe == "linear" and cfg["cache_features"],
        "bf16": p.amp,
        "final_loss": final_loss if final_loss is not None and math.isfinite(final_loss) else None,
        "trainable_params": sum(q.numel() for q in p.model.parameters() if q.requires_grad),
        "out_dir": str(p.out),
        "select": run.select,
        "per_example": str((p.out / "per_example.npz").resolve()),
        "data": p.identity["data"],
    }
    if run.select == "heldout":
        extra["heldout_size"] = len(p.val_split)
    if run.eval_only:
        extra.update(eval_only=True, weights=str(run.weights), weights_sha256=p.identity["weights_sha256"])
    if run.options.get("eval_every"):
        extra["curve"] = str((p.out / "curve.jsonl").resolve())
    cfg_record = {key: value for key, value in p.record.items() if key not in IDENTITY_KEYS}
    return make_row(
        task=run.task,
        protocol=run.protocol,
        init=p.init,
        backbone=p.arch,
        seed=run.seed,
        metrics=metrics,
        suite=run.suite,
        k=0.5 if p.k == P.MLP else p.k,
        checkpoint=run.checkpoint,
        config=cfg_record,
        iterations=steps,
        wall_time_s=time.perf_counter() - p.t_start,
        extra=extra,
        deviations=[*C.paper_deviations(cfg, run.protocol, p.arch, p.k), *partial_epochs_deviation(p)],
        label=run.row_label,
        provenance=provenance_of(run.checkpoint, p.identity.get("checkpoint_sha256")),
    )


def partial_epochs_deviation(p: Prepared) -> list[str]:
    """Partial fine-tuning with k >= 1 block ([MAE] A.1) took the best of 50, 100 and 200 epochs
    per k; a run whose epochs were not a search point (``overrides['epochs']``, e.g. a suite's
    ``search: {epochs: [50, 100, 200]}``) ran one fixed schedule, which its row says."""
    if p.recipe != "partial" or "epochs" in (p.run.overrides or {}):
        return []
    return [f"epochs {p.cfg['epochs']:g} fixed; paper: best of {PARTIAL_EPOCHS} per k"]


def finish(p: Prepared, row: dict) -> dict:
    if p.rank == 0:
        atomic_write_json(row, p.out / "result.json", indent=1, sort_keys=True, default=str)
        if p.run.results is not None:
            ResultsStore(p.run.results).append(row)
    return row


def run_classification(run: TransferRun | str, *args, **kwargs) -> dict:
    """Train (or, with ``eval_only``, load) and evaluate one classification run and return its row
    (appended to ``run.results`` when given). The older call ``run_classification(protocol, dataset,
    data_root, backbone, checkpoint=None, **keywords)`` builds the ``TransferRun`` (``legacy_run``)."""
    if not isinstance(run, TransferRun):
        run = legacy_run(run, *args, **kwargs)
    elif args or kwargs:
        raise TypeError("run_classification(TransferRun) takes no other arguments")
    p = prepare(run)
    if run.eval_only:
        steps = load_weights(p.model, run.weights, trust=run.trust_checkpoint)  # refused before any write
        claim_folder(p, None)
        return finish(p, make_cls_row(p, evaluate(p), steps, None))
    tc = train_config(p)
    claim_folder(p, tc)
    fitted = train(p, tc)
    return finish(p, make_cls_row(p, evaluate(p), fitted.steps, fitted.final_loss))


def legacy_run(protocol: str, dataset: str, data_root, backbone: str, checkpoint=None, *, out_dir, **kw) -> TransferRun:
    """A ``TransferRun`` from the keywords of the older ``run_classification`` signature (``bf16`` is
    ``amp``; ``fsdp`` and ``eval_every`` go to ``options``; ``overrides`` is the search point)."""
    options = {name: kw.pop(name) for name in OPTIONS if name in kw}
    options = {name: value for name, value in options.items() if value}
    bf16 = kw.pop("bf16", None)
    device = kw.get("device", "auto")
    amp = pick_device(device).type == "cuda" if bf16 is None else bool(bf16)
    names = {f.name for f in dataclasses.fields(TransferRun)}
    for key in kw:
        if key not in names:
            raise TypeError(f"run_classification() got an unexpected keyword argument {key!r}")
    results = kw.pop("results", None)
    return TransferRun(
        **{"task": dataset, "protocol": protocol, "backbone": backbone, "data_root": Path(data_root)},
        checkpoint=None if checkpoint is None else Path(checkpoint),
        work_dir=Path(out_dir),
        **{"seed": kw.pop("seed", 0), "suite": kw.pop("suite", "adhoc"), "amp": amp, "options": options},
        overrides=kw.pop("overrides", None) or {},
        results=None if results is None else Path(results),
        **kw,
    )


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def load_weights(model: torch.nn.Module, path: Path, trust: bool = False) -> int:
    """Load a classifier this task trained (``checkpoint-*.pth``: the whole model, or the head alone for a
    cached linear probe) into ``model``; returns the checkpoint's step (0 when it has none)."""
    obj = load_checkpoint_file(path, trust=trust)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a classifier checkpoint of bench cls (no 'model' state dict)")
    for target in (model, model.head):
        own = target.state_dict()
        if set(state) == set(own):
            bad = [key for key in own if tuple(own[key].shape) != tuple(state[key].shape)]
            if bad:
                raise CheckpointError(
                    f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model's is "
                    f"{tuple(own[bad[0]].shape)} (another backbone, protocol or number of classes?)"
                )
            target.load_state_dict(state)
            return int(obj.get("step", 0))
    missing = sorted(set(model.state_dict()) - set(state))
    raise CheckpointError(
        f"{path}: its keys are not this classifier's (missing e.g. {missing[0] if missing else sorted(state)[0]!r}); "
        f"--weights takes a checkpoint-*.pth that bench cls wrote with the same --protocol and --backbone"
    )


def check_finite(model, out_dir: Path) -> None:
    """Refuse to evaluate a model with NaN / inf weights or buffers (a diverged run, or non-finite
    pretrained weights that training did not touch): its top-1 would be recorded as a result."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLossError(
                f"{out_dir}: the trained model has non-finite values in {name!r}; no result is recorded"
            )


def write_per_example(path: Path, ids, correct, correct5) -> Path:
    """``per_example.npz`` (atomically): ``ids`` (N,) str, ``correct`` / ``correct5`` (N,) bool."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(ids, dtype=str),
            correct=np.asarray(correct, dtype=bool),
            correct5=np.asarray(correct5, dtype=bool),
        )
    return path


def _load_features(path: Path, n: int):
    if not path.is_file():
        return None
    try:
        obj = load_checkpoint_file(path)
        feats, labels = obj["features"], obj["labels"]
    except (CheckpointError, KeyError, TypeError):
        return None  # recomputed and rewritten
    return (feats, labels) if len(feats) == n == len(labels) else None
