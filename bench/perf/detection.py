"""``bench perf det``: the Mask R-CNN training step of both detection engines, on random images,
boxes, masks and labels, timed one after the other in one process with the same helper.

On CUDA the reduced precision is fp16 (with a GradScaler): mmcv's CUDA RoIAlign has no bf16 kernel.
On CPU it is bf16 (mmcv's CPU kernels get fp32 inputs, ``mmcv_ops_fp32_on_cpu``).

``bench perf det --agreement`` (``perf_det_agreement``) is not a timing: it trains the Table 4 recipe's
CPU twin on both engines over several seeds and reports whether their AP intervals overlap
(docs/detectron2.md, "Cross-engine agreement")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from backbones.registry import parse_name
from backbones.vit import arch_config
from bench.core.device import pick_device
from bench.core.errors import BenchError
from bench.core.io import atomic_write_json
from bench.core.optional import require
from bench.tables.stats import seed_difference, seed_test, t_interval
from tasks.detection.coco_generate import ellipse_boxes, make_coco_dataset
from tasks.detection.mmdet_run import fill_model, load_config
from tasks.detection.protocol import PROTOCOL_OF_VARIANT, resolve_config
from tasks.detection.task import run_coco
from tasks.spec import TransferRun

from .dense import (
    build_dense_model,
    dense_loss,
    dense_peaks,
    layouts_for,
    mmcv_ops_fp32_on_cpu,
    peak_names,
    time_dense,
)

DET_ENGINES = ("mmdet", "detectron2", "both")


def random_det_samples(batch_size: int, size: int, boxes: int, num_classes: int, seed: int = 0):
    """``batch_size`` DetDataSamples for ``size`` x ``size`` inputs, each with ``boxes`` random boxes
    (sides 5-40 % of the image), their masks (the box's inscribed ellipse, BitmapMasks) and labels."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        bb, masks = ellipse_boxes(rng, size, boxes)
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        s.gt_instances = InstanceData(
            bboxes=torch.from_numpy(bb),
            labels=torch.from_numpy(rng.integers(0, num_classes, boxes)),
            masks=BitmapMasks(masks.astype(np.uint8), size, size),
        )
        samples.append(s)
    return samples


def check_det_options(engine: str, config, backbone: str, img_size: int) -> None:
    """Refuse an unknown engine, a config file with both engines, or an input size the pyramid can't take."""
    if engine not in DET_ENGINES:
        raise BenchError(f"--engine {engine!r}: choose from {', '.join(DET_ENGINES)}")
    if engine == "both" and str(config) not in ("smoke", "vit_b", "vit_l"):
        raise BenchError(
            f"--config {config}: a config file belongs to one engine (an mmengine config or a "
            f"detectron2 LazyConfig); pass --engine mmdet or --engine detectron2"
        )
    stride = 32 * arch_config(parse_name(backbone)[1])["patch_size"] // 16  # the coarsest pyramid level
    if img_size < 2 * stride or img_size % stride:
        raise BenchError(
            f"--img-size {img_size}: must be a multiple of {stride} (the stride-32 level of {backbone}) "
            f"and at least {2 * stride}"
        )


def perf_det(
    config="vit_b",
    variants=("fpn",),
    backbone="random_vit_base_patch16",
    img_size=512,
    batch_size=1,
    boxes=8,
    iters=2,
    threads=None,
    baseline=False,
    channels_last=None,
    repeats=1,
    engine="both",
    trust_config=False,
    device="auto",
    agreement=False,
    seeds=None,
    train_iters=None,
    train_images=None,
    out=None,
    mmdet_options=None,
    detectron2_options=None,
):
    """Mask R-CNN training step (variant 'fpn' = ViT -> FPN [Li21] / 'vitdet' = simple pyramid, for
    one process) on random images, boxes, masks and labels: img/s, step time, GFLOP/s and the
    fraction of the matmul peak. ``engine``: 'mmdet' (the model of the detection task's mmengine
    config), 'detectron2' (``tasks.detection.detectron2.perf.build_step``: the model of its
    LazyConfig of the same name) or 'both'. ``img_size``: the square input (the protocols train at
    1024; smaller for CPU). ``agreement``: train instead (``perf_det_agreement``, its own setting; the
    ``seeds``, ``train_iters``, ``train_images``, ``out`` and one engine's swapped settings
    ``mmdet_options`` / ``detectron2_options`` given, the rest its defaults)."""
    if agreement:
        swaps = {e: o for e, o in (("mmdet", mmdet_options), ("detectron2", detectron2_options)) if o}
        given = dict(out=out, seeds=seeds, iters=train_iters, train_images=train_images, swaps=swaps or None)
        return perf_det_agreement(**{k: v for k, v in given.items() if v is not None})
    check_det_options(engine, config, backbone, img_size)
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    engines = ("mmdet", "detectron2") if engine == "both" else (engine,)
    if "mmdet" in engines:
        require("bench perf det", ("mmcv.ops", "mmdet"))
    if "detectron2" in engines:
        # importing the detectron2 package needs detectron2 installed: lazy, like the library itself
        from tasks.detection.detectron2.install import require_detectron2

        require_detectron2()  # before timing anything: one line that says how to install it
    low = "fp16" if dev.type == "cuda" else "bf16"
    precisions = [low] + (["fp32"] if baseline else [])
    peaks = dense_peaks(dev, peak_names(precisions))  # once for every model of this run
    settings = dict(
        config=config,
        backbone=backbone,
        img_size=img_size,
        batch_size=batch_size,
        boxes=boxes,
        trust_config=trust_config,
    )
    timing = dict(precisions=precisions, iters=iters, repeats=repeats, device=dev, peaks=peaks)
    layouts = layouts_for(channels_last, dev)
    rows = []
    for variant in [variants] if isinstance(variants, str) else variants:
        for eng in engines:
            build = _build_mmdet if eng == "mmdet" else _build_detectron2
            title, model, loss_of, notes = build(variant=variant, device=dev, channels_last=layouts[0], **settings)
            torch.manual_seed(0)  # the RPN / RoI samplers draw from torch's generator
            timed = time_dense(title, model, loss_of, batch_size, layouts, notes=notes, **timing)
            rows += [dict(r, engine=eng, variant=variant) for r in timed]
            del model
    if len(engines) > 1:
        print("same config, same run:")
        for r in rows:
            print(
                f"  {r['variant']} {r['prec']} {r['engine']:>10}: {r['img_s']:.3f} img/s, {r['gflop_img']:.4g} GFLOP/img, "
                f"{100 * r['of_peak']:.0f}% of peak"
            )
    return rows


def _build_mmdet(config, variant, backbone, img_size, batch_size, boxes, trust_config, device, channels_last):
    from mmcv.ops import RoIAlign
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401  (registers RegistryViT)
    import tasks.detection.mmdet_plugins  # noqa: F401  (LN2d, LastLevelMaxPool)

    register_all_modules(init_default_scope=True)
    path, name = resolve_config(config, variant, parse_name(backbone)[1], engine="mmdet")
    cfg = load_config(path, trust_config=trust_config)
    fill_model(cfg, path, backbone=backbone)
    cfg.model.backbone.img_size = img_size  # position embedding for this input (the config's: 1024)
    model = build_dense_model(MODELS, cfg.model, channels_last, device)
    mmcv_ops_fp32_on_cpu(model)
    num_classes = int(cfg.model.roi_head.bbox_head.num_classes)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    samples = [s.to(device) for s in random_det_samples(batch_size, img_size, boxes, num_classes)]
    notes = []
    if any(isinstance(mm, RoIAlign) for mm in model.modules()):
        notes.append(
            "FLOPs are the aten matmul / conv / attention ops torch.utils.flop_counter sees; mmcv's RoIAlign "
            "and NMS are extension calls it does not count (bilinear sampling / box overlaps, no matmul)"
        )
    title = (
        f"mmdet Mask R-CNN ({name}, {cfg.model.backbone.variant} pyramid) on {backbone} @ {img_size}, {boxes} boxes/img"
    )
    return title, model, lambda mm: dense_loss(mm, x, samples), notes


def _build_detectron2(config, variant, backbone, img_size, batch_size, boxes, trust_config, device, channels_last):
    del channels_last  # time_dense sets the layout of each timed variant
    from tasks.detection.detectron2.perf import build_step

    model, loss_of, title = build_step(
        config, variant, backbone, img_size, batch_size, boxes, trust_config=trust_config
    )
    # detectron2's model moves each batch (images and instances) to the device of its parameters
    notes = ["FLOPs as for mmdet: torchvision's RoIAlign and NMS (detectron2's ROIAlign, batched_nms) are not counted"]
    return title, model.to(device), loss_of, notes


# --------------------------------------------------------------------------------------------------
# bench perf det --agreement: do the two engines give the same AP?
# --------------------------------------------------------------------------------------------------
# The setting: the Table 4 recipe (variant fpn) in its CPU-sized twin (the smoke configs of both
# engines: the same modules, tiny pyramid and heads), a randomly initialised vit_test_patch8 (dim 32,
# depth 2), the generated set at 64 px (five categories, each its own shape and colour).
AGREEMENT = dict(config="smoke", variant="fpn", backbone="random_vit_test_patch8", img_size=64)
AGREEMENT_ENGINES = ("mmdet", "detectron2")
FG_SEPARATED = 50.0  # % foreground accuracy at the end of training that counts as "classes separate"
FG_WINDOW = 0.25  # the fg accuracy of a run: the mean of its logged values over the last quarter of training
LOG_INTERVAL = {"mmdet": "default_hooks.logger.interval", "detectron2": "train.log_period"}  # the key, per engine
# engine -> (its scalars file, relative to the log file's folder: {stem} is the log file's name without
# suffix), the fg accuracy's key, its scale to percent, the iteration's key, the first iteration's number
LOGGED_FG = {
    "detectron2": ("metrics.json", "fast_rcnn/fg_cls_accuracy", 100.0, "iteration", 0),
    "mmdet": ("vis_data/{stem}.json", "fg_acc", 1.0, "iter", 1),
}


def logged_fg_accuracy(engine: str, row: dict) -> float:
    """A run's foreground classification accuracy (%) from its engine's training log: detectron2's
    ``fast_rcnn/fg_cls_accuracy`` (``metrics.json``), mmdet's ``fg_acc``
    (``tasks.detection.mmdet_run.fg_accuracy_hook``; mmengine's scalars file ``vis_data/<stamp>.json``),
    averaged over the entries of the last ``FG_WINDOW`` of the iterations. NaN when nothing was logged."""
    log = Path(row["extra"]["log_file"])
    path, key, scale, step_key, first = LOGGED_FG[engine]
    path = log.parent / path.format(stem=log.stem)
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        e = json.loads(line)
        if key in e:
            step = int(e[step_key]) + 1 - first  # detectron2 counts iterations from 0, mmengine from 1
            if entries and step <= entries[-1][0]:
                entries = []  # metrics.json of an earlier run in the same folder: keep the last run's
            entries.append((step, float(e[key]) * scale))
    last = [v for step, v in entries if step > (1 - FG_WINDOW) * row["iterations"]]
    return float(np.mean(last)) if last else math.nan


def _interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95 % Student-t interval over seeds (``bench.tables.stats.t_interval``)."""
    lo, hi = t_interval(values) if len(values) >= 2 else (math.nan, math.nan)
    return float(np.mean(values)), lo, hi


def agreement_report(runs: list[dict]) -> dict:
    """Per engine: APbox, APmask and fg accuracy: mean, 95 % t-interval over seeds, min; per metric:
    whether the two engines' intervals overlap, and the difference mmdet - detectron2 (mean, Welch 95 %
    interval, Welch p); ``separated``: every run's fg accuracy is at least ``FG_SEPARATED``. ``runs``: ``{'engine', 'seed', 'APbox', 'APmask', 'fg_acc'}`` each."""
    engines = {}
    for eng in AGREEMENT_ENGINES:
        mine = [r for r in runs if r["engine"] == eng]
        engines[eng] = dict(seeds=[r["seed"] for r in mine])
        for metric in ("APbox", "APmask", "fg_acc"):
            mean, lo, hi = _interval([r[metric] for r in mine])
            engines[eng][metric] = dict(mean=mean, lo=lo, hi=hi, min=min(r[metric] for r in mine))
    overlap, difference = {}, {}
    for metric in ("APbox", "APmask", "fg_acc"):
        a, b = (engines[e][metric] for e in AGREEMENT_ENGINES)
        overlap[metric] = bool(a["lo"] <= b["hi"] and b["lo"] <= a["hi"])
        # Welch over seeds (keys per engine: seed s of one engine is no pair of seed s of the other)
        by = [{(e, r["seed"]): r[metric] for r in runs if r["engine"] == e} for e in AGREEMENT_ENGINES]
        lo, hi, _ = seed_difference(*by)
        difference[metric] = dict(mean=a["mean"] - b["mean"], lo=lo, hi=hi, p=seed_test(*by)[0])
    separated = all(r["fg_acc"] >= FG_SEPARATED for r in runs)
    return dict(engines=engines, overlap=overlap, difference=difference, separated=separated, fg_separated=FG_SEPARATED)


def agreement_run(row: dict, fg_acc: float) -> dict:
    """What the report takes from one run's row."""
    m = row["metrics"]
    return dict(
        engine=row["extra"]["engine"],
        seed=int(row["seed"]),
        APbox=float(m["APbox"]),
        APmask=float(m["APmask"]),
        fg_acc=fg_acc,
        iterations=int(row["iterations"]),
        wall_time_s=float(row["wall_time_s"]),
    )


def perf_det_agreement(
    out="work_dirs/perf/det-agreement", seeds=5, iters=400, train_images=32, val_images=16, swaps=None
):
    """Train the Table 4 recipe's CPU twin (``AGREEMENT``) on both engines with seeds 0..``seeds``-1 on
    one generated set; the report (``agreement_report``, with the runs' rows) in ``out/agreement.json``,
    printed as a table. Every run starts fresh (``--no-resume``: earlier runs there move aside).
    ``swaps``: engine -> settings applied to that engine's runs only (its cfg-options, checked like
    ``--cfg-options``), to test whether one difference between the engines explains a gap."""
    swaps = {e: dict(o) for e, o in (swaps or {}).items()}
    if seeds < 2:
        raise BenchError(f"--seeds {seeds}: a seed interval needs at least 2 seeds per engine")
    out = Path(out)
    size = AGREEMENT["img_size"]
    data_root = make_coco_dataset(out / "coco", train_images, val_images, (size, size), seed=0, overwrite=True)
    setting = dict(AGREEMENT, seeds=seeds, iters=iters, train_images=train_images, val_images=val_images, swaps=swaps)
    runs, rows = [], []  # agreement.json holds the runs so far after each run
    for seed in range(seeds):
        for engine in AGREEMENT_ENGINES:
            run = TransferRun(
                task="coco",
                protocol=PROTOCOL_OF_VARIANT[AGREEMENT["variant"]],
                backbone=AGREEMENT["backbone"],
                checkpoint=None,
                data_root=data_root,
                work_dir=out / f"{engine}-s{seed}",
                seed=seed,
                suite="perf-det-agreement",
                config=AGREEMENT["config"],
                iters=iters,
                engine=engine,
                device="cpu",
                resume=False,
                options=dict(variant=AGREEMENT["variant"], ckpt_interval=iters),
                # >= 10 fg accuracies in the window; then the settings swapped in this engine's runs
                cfg_options={LOG_INTERVAL[engine]: max(1, iters // 40), **swaps.get(engine, {})},
            )
            row = run_coco(run)
            rows.append(row)
            runs.append(agreement_run(row, logged_fg_accuracy(engine, row)))
            print(_run_line(runs[-1]), flush=True)
            atomic_write_json(dict(setting=setting, runs=runs, rows=rows, complete=False), out / "agreement.json")
    report = dict(setting=setting, **agreement_report(runs), runs=runs, rows=rows, complete=True)
    atomic_write_json(report, out / "agreement.json")
    print(agreement_table(report))
    return report


def _run_line(r: dict) -> str:
    return (
        f"  {r['engine']:>10} seed {r['seed']}: APbox {r['APbox']:.1f}, APmask {r['APmask']:.1f}, "
        f"fg accuracy {r['fg_acc']:.1f} % ({r['wall_time_s']:.0f} s)"
    )


def agreement_table(report: dict) -> str:
    """The report as a Markdown table and the verdicts."""
    s = report["setting"]
    lines = [
        f"{s['seeds']} seeds per engine, {s['iters']} iterations, {s['backbone']} (random init), "
        f"{s['config']} {s['variant']} config, {s['train_images']}/{s['val_images']} generated images at {s['img_size']} px",
        *(
            f"swapped in the {e} runs only: {', '.join(f'{k}={v!r}' for k, v in o.items())}"
            for e, o in s.get("swaps", {}).items()
        ),
        "",
        "| engine | APbox mean [95 % t] | APmask mean [95 % t] | fg accuracy % mean (min) |",
        "|---|---|---|---|",
    ]
    for eng, e in report["engines"].items():
        cells = [f"{e[m]['mean']:.1f} [{e[m]['lo']:.1f}, {e[m]['hi']:.1f}]" for m in ("APbox", "APmask")]
        lines.append(f"| {eng} | {cells[0]} | {cells[1]} | {e['fg_acc']['mean']:.1f} ({e['fg_acc']['min']:.1f}) |")
    verdict = ", ".join(f"{m}: {'overlap' if ok else 'DO NOT overlap'}" for m, ok in report["overlap"].items())
    diff = "; ".join(
        f"{m} {d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}], p={d['p']:.3f}"
        for m, d in report["difference"].items()
    )
    sep = "yes" if report["separated"] else "NO (some run's fg accuracy is below it: AP is not comparable)"
    lines += [
        "",
        f"intervals {verdict}",
        f"mmdet - detectron2 (Welch t over seeds, 95 %): {diff}",
        f"classes separate (every run's fg accuracy >= {report['fg_separated']:g} %): {sep}",
    ]
    return "\n".join(lines)
