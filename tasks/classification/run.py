"""One classification transfer run: read the dataset, build the classifier for the protocol, train it
on ``bench.core.engine.fit``, evaluate top-1 / top-5 on the validation split and append one results row.

    from tasks.classification.run import run_classification
    row = run_classification("finetune", "inat2018", "/data/inat2018", "mae_vit_base_patch16",
                             "mae_pretrain_vit_base.pth", out_dir="runs/inat18-mae-b",
                             results="results/main")

Command line (wired by ``bench.cli``): ``bench cls --protocol {finetune,linear,partial}
--dataset {inat2017,...,folder} --data-root DIR --backbone NAME --checkpoint PATH [--k K]
[--config FILE] [--epochs N] [--seed S] [--out DIR] [--results FILE]``.

``out_dir`` holds ``config.json`` (the resolved config), the engine's resumable checkpoints and
``log.jsonl``, ``features-train.pth`` for a cached linear probe, ``per_example.npz`` (``ids``: image
paths relative to the data root; ``correct`` / ``correct5``: top-1 / top-5 hit per image, in the
evaluated split's order) and ``result.json`` (the row).
Re-running with the same ``out_dir`` continues from the newest checkpoint (``resume=True``); a
different config in an existing ``out_dir`` is refused rather than silently mixed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from bench.core.errors import BenchError, NonFiniteLossError
from bench.core.io import atomic_open, atomic_write_json
from bench.core.results import check_outputs
from bench.core.run_record import check_run_record, write_run_record
from tasks.classification import config as C
from tasks.classification.datasets import DATASETS

SELECT = (None, "heldout")


def _per_process_batch(global_batch: int, accum_iter: int, world: int) -> int:
    if global_batch % (accum_iter * world):
        raise BenchError(f"batch_size {global_batch} is not divisible by accum_iter {accum_iter} x {world} process(es)")
    return global_batch // (accum_iter * world)


def check_finite(model, out_dir: Path) -> None:
    """Refuse to evaluate a model with NaN / inf weights or buffers (a diverged run, or non-finite
    pretrained weights that training did not touch): its top-1 would be recorded as a result."""
    import torch

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLossError(
                f"{out_dir}: the trained model has non-finite values in {name!r}; no result is recorded"
            )


def _check_k_recordable(k) -> None:
    from bench.core.results import FIELDS

    if k == C.MLP and not isinstance(0.5, FIELDS["k"]):
        raise BenchError(
            "--k mlp: the results schema (bench/results.py, row key 'k') only holds whole "
            "block counts, so the MLP-only point of Fig. 9 cannot be recorded yet"
        )


def run_classification(
    protocol: str,
    dataset: str,
    data_root: str | Path,
    backbone: str,
    checkpoint: str | Path | None = None,
    *,
    k: int | str | None = None,
    seed: int = 0,
    out_dir: str | Path,
    config: str | Path | dict | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    overrides: dict | None = None,
    select: str | None = None,
    bf16: bool | None = None,
    resume: bool = True,
    results: str | Path | None = None,
    suite: str = "adhoc",
    trust_checkpoint: bool = False,
    progress: bool = True,
    device: str = "auto",
    fsdp: bool = False,
) -> dict:
    """Train and evaluate one (protocol, dataset, backbone, k, seed) and return its results row
    (appended to ``ResultsStore(results)`` when given).

    ``config`` overrides the protocol config (dict, YAML path, or a name in ``configs/`` such as
    ``'smoke'``); ``epochs`` and ``batch_size`` (global) override both, and ``overrides`` (a search
    point, e.g. ``{'lr': 0.01, 'weight_decay': 0.05, 'drop_path': 0.1, 'epochs': 20}``: any protocol
    config key) overrides everything. Everything the user can get wrong is checked before anything
    is written. ``fsdp``: under torchrun, train with FSDP2 instead of DDP (``TrainConfig.fsdp``).

    ``select='heldout'`` (hyperparameter selection): train on the training split minus a fixed,
    class-stratified 10 % (``datasets.heldout_split``; the same for every seed, init and grid point)
    and report metrics on that held-out part; the validation split is never read. The row records
    ``extra['select']`` and ``extra['heldout_size']``.

    The row's ``deviations`` list each way the resolved config departs from the protocol file's
    paper values (``config.paper_deviations``: cached features, fewer epochs, smaller batch, ...).
    """
    from torch.utils.data import TensorDataset

    from backbones.registry import parse_name
    from backbones.vit import Block, arch_config
    from bench.core.determinism import seed_everything
    from bench.core.distributed import convert_sync_batchnorm, rank_world
    from bench.core.engine import TrainConfig, check_config, fit, micro_batches_per_epoch, pick_device, worker_error
    from bench.core.results import ResultsStore, make_row
    from tasks.classification import protocols as P
    from tasks.classification.datasets import ImageDataset, heldout_split, read_splits

    t_start = time.perf_counter()
    P.check_protocol(protocol)
    if dataset not in DATASETS:
        raise BenchError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    init, arch = parse_name(backbone)
    depth = arch_config(arch)["depth"]
    k = P.check_k(protocol, k, depth)
    if protocol == "partial":
        _check_k_recordable(k)
    rec = P.recipe(protocol, k)
    cfg = P.load_config(protocol, arch, k, config)
    if epochs is not None:
        cfg["epochs"] = P._check_value("epochs", epochs, "--epochs")
    if batch_size is not None:
        cfg["batch_size"] = P._check_value("batch_size", batch_size, "--batch-size")
    P._check_semantics(cfg, "config")
    C.apply_overrides(cfg, overrides)
    if select not in SELECT:
        raise BenchError(f"select must be None or 'heldout', got {select!r:.60}")
    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        if cfg["batch_size"] % 2:
            raise BenchError(f"batch_size {cfg['batch_size']} must be even for mixup / cutmix")
    if bf16 is None:
        bf16 = pick_device(device).type == "cuda"
    rank, world = rank_world()  # under torchrun only rank 0 writes files and the results row
    micro_batch = _per_process_batch(cfg["batch_size"], cfg["accum_iter"], world)

    train_split, val_split = read_splits(dataset, data_root)
    if select == "heldout":
        train_split, val_split = heldout_split(train_split)
    num_classes = train_split.num_classes
    seed_everything(seed)  # the new head's (and a random init's) weights follow from the seed
    model = P.build_classifier(
        backbone,
        checkpoint,
        protocol,
        num_classes,
        img_size=cfg["img_size"],
        k=k,
        drop_path=cfg["drop_path"],
        global_pool=cfg["global_pool"],
        head_init_std=cfg["head_init_std"],
        trust_checkpoint=trust_checkpoint,
    )
    # under DDP only: the linear probe's BatchNorm1d normalises over the global batch, as one process
    # would (also the head trained on cached features, which is model.head)
    model = convert_sync_batchnorm(model)
    img_size = model.pos_grid[0] * model.patch_size
    workers = min(cfg["num_workers"], os.cpu_count() or 1)
    cache = rec == "linear" and cfg["cache_features"]
    cfg_record = {
        **cfg,
        "recipe": rec,
        "k": k,
        "backbone": backbone,
        "dataset": dataset,
        "num_classes": num_classes,
        "img_size": img_size,
    }
    if select is not None:  # a selection run and the reported run never share a folder
        cfg_record["select"] = select

    out = Path(out_dir)
    train_cfg = TrainConfig(
        out_dir=str(out),
        batch_size=micro_batch,
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
        bf16=bf16,
        seed=seed,
        ckpt_every=cfg["ckpt_every"],
        num_workers=workers,
        progress=progress,
        desc=f"{protocol}{'' if k is None else f' k={k}'} {backbone} {dataset}",
        device=device,
        fsdp=fsdp,
    )
    # everything the engine would refuse is refused before the first file is written
    check_config(train_cfg)
    micro_batches_per_epoch(len(train_split), micro_batch, world)
    check_run_record(out / "config.json", cfg_record, resume=resume, hint="use another --out or --no-resume")
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_run_record(out / "config.json", cfg_record)

    val_set = ImageDataset(val_split, P.eval_transform(cfg, img_size))

    if cache:
        # Frozen features once, without augmentation (the paper's probe uses RandomResizedCrop + flip).
        model.to(pick_device(device))
        feats_path = out / "features-train.pth"
        feats = _load_features(feats_path, len(train_split))
        if feats is None:
            try:
                feats = P.extract_features(
                    model,
                    ImageDataset(train_split, P.eval_transform(cfg, img_size)),
                    cfg["eval_batch_size"],
                    bf16=bf16,
                    num_workers=workers,
                )
            except BenchError as e:  # a bad image, read in a loader worker
                raise worker_error(e) from None
            if rank == 0:
                from bench.core.checkpoint import save_atomic

                save_atomic({"features": feats[0], "labels": feats[1]}, feats_path)
        head = model.head
        train_cfg.num_workers = 0
        fitted = fit(
            head,
            TensorDataset(*feats),
            P.make_loss_fn(cfg, num_classes),
            train_cfg,
            groups=P.param_groups_for("linear", head, cfg),
            resume=resume,
        )
    else:
        train_set = ImageDataset(train_split, P.train_transform(cfg, img_size))
        fitted = fit(
            model,
            train_set,
            P.make_loss_fn(cfg, num_classes),
            train_cfg,
            groups=P.param_groups_for(rec, model, cfg),
            resume=resume,
            block_type=Block,
        )

    model.to(pick_device(device))
    check_finite(model, out)
    try:
        metrics, correct, correct5 = P.evaluate(
            model, val_set, cfg["eval_batch_size"], bf16=bf16, num_workers=workers, per_example=True
        )
    except BenchError as e:  # a bad image, read in a loader worker
        raise worker_error(e) from None
    per_example = out / "per_example.npz"
    if rank == 0:
        ids = [os.path.relpath(path, data_root) for path, _ in val_split.samples]
        write_per_example(per_example, ids, correct, correct5)
    wall = time.perf_counter() - t_start
    lr = cfg["lr"] if cfg["lr"] is not None else cfg["blr"] * cfg["batch_size"] / 256
    extra = {
        "img_size": img_size,
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "lr": lr,
        "recipe": rec,
        "num_classes": num_classes,
        "n_train": len(train_split),
        "n_val": len(val_split),
        "global_pool": cfg["global_pool"],
        "cache_features": cache,
        "bf16": bf16,
        "final_loss": fitted.final_loss if math.isfinite(fitted.final_loss) else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "out_dir": str(out),
        "select": select,
        "per_example": str(per_example.resolve()),
    }
    if select == "heldout":
        extra["heldout_size"] = len(val_split)
    row = make_row(
        task=dataset,
        protocol=protocol,
        init=init,
        backbone=arch,
        seed=seed,
        metrics=metrics,
        suite=suite,
        k=0.5 if k == P.MLP else k,
        checkpoint=checkpoint,
        config=cfg_record,
        iterations=fitted.steps,
        wall_time_s=wall,
        extra=extra,
        deviations=C.paper_deviations(cfg, protocol, arch, k),
    )
    if rank == 0:
        atomic_write_json(row, out / "result.json", indent=1, sort_keys=True, default=str)
        if results is not None:
            ResultsStore(results).append(row)
    return row


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
    from bench.core.checkpoint import load_checkpoint_file
    from bench.core.errors import CheckpointError

    try:
        obj = load_checkpoint_file(path)
        feats, labels = obj["features"], obj["labels"]
    except (CheckpointError, KeyError, TypeError):
        return None  # recomputed and rewritten
    return (feats, labels) if len(feats) == n == len(labels) else None


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def add_cls_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``bench cls``."""
    parser.add_argument(
        "--protocol",
        required=True,
        choices=C.PROTOCOLS,
        help="finetune (Table 6), linear (linear probe), partial (the last k blocks, Fig. 9)",
    )
    parser.add_argument(
        "--dataset", required=True, choices=DATASETS, help="which dataset's on-disk format --data-root holds"
    )
    parser.add_argument("--data-root", required=True, help="dataset folder in its official layout")
    parser.add_argument("--backbone", required=True, help="<init>_<arch>, e.g. mae_vit_base_patch16")
    parser.add_argument("--checkpoint", default=None, help="pretrained weights (not for random_*)")
    parser.add_argument(
        "--k", default=None, help="partial: number of last blocks to tune (0 = linear probe, depth = full), or 'mlp'"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML overriding the protocol config, or a name in tasks/classification/configs (smoke)",
    )
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default: the protocol's)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the run (head init, data order)")
    parser.add_argument("--out", default=None, help="run folder (default runs/cls/<dataset>-<protocol>-<backbone>...)")
    parser.add_argument("--results", default=None, help="results store (folder or .jsonl) to append the row to")
    parser.add_argument("--suite", default="adhoc", help="suite name recorded in the results row")
    parser.add_argument(
        "--bf16", action="store_true", default=None, help="bfloat16 autocast (default: on for CUDA, off for CPU)"
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest readable checkpoint in --out (default); --no-resume starts over",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs arbitrary unpickling (only for files you trust)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP",
    )
    return parser


def default_out_dir(args) -> Path:
    k = "" if args.k is None else f"-k{args.k}"
    return Path("runs") / "cls" / f"{args.dataset}-{args.protocol}{k}-{args.backbone}-s{args.seed}"


def cls_main(args: argparse.Namespace) -> int:
    """Run ``bench cls`` from parsed arguments; prints the result line and returns exit status 0
    (errors are ``BenchError`` for the CLI to print)."""
    check_outputs(default_out_dir(args) if args.out is None else args.out, args.results)
    row = run_classification(
        args.protocol,
        args.dataset,
        args.data_root,
        args.backbone,
        args.checkpoint,
        k=C.parse_k(args.k),
        seed=args.seed,
        out_dir=args.out or default_out_dir(args),
        config=args.config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        bf16=args.bf16,
        resume=args.resume,
        results=args.results,
        suite=args.suite,
        trust_checkpoint=args.trust_checkpoint,
        device=args.device,
        fsdp=getattr(args, "fsdp", False),
    )
    m = row["metrics"]
    print(
        f"{row['task']} {row['protocol']}{'' if row['k'] is None else ' k=' + str(row['k'])} "
        f"{row['init']}_{row['backbone']}: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  "
        f"({row['iterations']} steps, {row['wall_time_s']:.0f} s; row in {Path(row['extra']['out_dir']) / 'result.json'})"
    )
    return 0
