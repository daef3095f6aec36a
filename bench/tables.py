"""Paper-style tables and plots from the results store (``bench table``).

``build_tables`` turns finished runs into the layouts of He et al. 2021 (MAE), Section 5: Tables 3
(ImageNet), 4 (COCO), 5 (ADE20K), 6 (classification transfer), linear probing (Table 12) and partial
fine-tuning (Fig. 9). Which table a row goes into, its metrics and its column come from its task's
declaration (``tasks.registry``: ``TaskSpec.tables[protocol]``, ``metrics``, ``img_size``; the list
is in docs/adding_a_task.md). docs/tables.md describes the output for readers.

Each table is a DataFrame: one row per initialisation (random, supervised, mocov3, beit, mae, then
others alphabetically) and MultiIndex columns ``(group, column, field)``. ``group`` is the metric
(or the dataset), ``column`` the backbone (ViT-B, ViT-L, ViT-H, ViT-H448, ...; ``k=<k>`` in the
partial table) and ``field`` one of ``mean`` and ``std`` (ddof=1, NaN when n=1) over seeds, ``n``,
``lo``/``hi`` (the 95 % interval), ``delta`` (mean minus the 'supervised' mean of the same cell
column, NaN without a supervised row) and ``published`` (the paper's number for that cell, from
results/reference/mae_paper.csv). ``table.attrs`` holds the text around the numbers: per cell the
interval method, the significance mark ('best' or 'tie') and footnote marks; per table the notes.

**Statistics.** One run: a percentile bootstrap over evaluation images of the per-example arrays
the task wrote (``extra['per_example']``, an ``.npz`` relative to the store's folder or absolute):
top1/top5 from ``correct``/``correct5``, mIoU from per-image ``intersect``/``union``. Several
seeds: a t-interval over the seed values. 'Best' (bold) only when the top init beats the runner-up:
a paired bootstrap over the same evaluation images (the same resampled ids for both) for single
runs, a t-test over seeds (paired when the seeds match, Welch otherwise) for several; otherwise the
two are marked as a tie. The bootstrap draws a fixed number of resamples from a fixed seed, so the
tables are reproducible.

A row's input size is ``extra['img_size']`` (the task's own ``img_size`` when absent). At the
task's own size (COCO 1024, ADE20K 512, classification 224) it is the paper's plain column
(``ViT-B``) and gets the paper's number; another size is a column of its own (``ViT-H448``,
``ViT-demo/8@64``). Only rows with status 'ok' count, a run_id that was recorded twice counts
once (the last row), and rows of a hyperparameter search's candidates
(``extra['search_role'] == 'candidate'``) are left out. Runs of one init with several
``extra['mask_ratio']`` values are shown as separate rows (``mae mask=0.75``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_open, atomic_write_text
from bench.core.results import ResultsStore
from tasks.registry import TABLES, TASKS
from tasks.spec import PAPER_COLUMN_IMG_SIZE, Table, TaskSpec

FIELDS = ("mean", "std", "n", "lo", "hi", "delta", "published")
INIT_ORDER = ("random", "supervised", "mocov3", "beit", "mae")
BASELINE_INIT = "supervised"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "mae_paper.csv"
DEFAULT_PREV_BEST = REPO_ROOT / "results" / "reference" / "mae_paper_prev_best.csv"
REFERENCE_COLUMNS = ("task", "protocol", "k", "metric", "init", "backbone", "img_size", "value", "source")
FORMATS = ("csv", "tex", "md")
DIGITS = 1  # shown digits, as in the paper

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
# Metric -> the per-example arrays it is computed from (see ``metric_from_counts``).
PER_EXAMPLE_METRICS = {
    "top1": ("correct",),
    "top5": ("correct5",),
    "mIoU": ("intersect", "union"),
    # COCOeval's per-image box matching (tasks/detection/evaluation.py, per_image_box_matches)
    "APbox": (
        "category_ids",
        "iou_thresholds",
        "gt_count",
        "det_image",
        "det_category",
        "det_score",
        "det_tp",
        "det_ignore",
    ),
}
PER_IMAGE_ROWS = {"correct", "correct5", "intersect", "union", "gt_count"}  # arrays with N rows
# A per-example file whose full-data metric differs from the row's by more than this is not used.
PER_EXAMPLE_TOLERANCE = 0.05

# timm arch -> the paper's column name (patch sizes as in the paper: B/16, L/16, H/14).
PAPER_BACKBONES = {"vit_base_patch16": "ViT-B", "vit_large_patch16": "ViT-L", "vit_huge_patch14": "ViT-H"}
SIZE_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}
SIZE_RANK = {"Ti": 1, "S": 2, "B": 3, "L": 4, "H": 5, "g": 6}


# ----------------------------------------------------------------------------------------------
# Names and ordering
# ----------------------------------------------------------------------------------------------


def _img_size(value: Any, where: str = "a results row") -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not float(value).is_integer()
        or value <= 0
    ):
        raise BenchError(
            f"{where}: row key 'extra' entry 'img_size' must be a whole number of pixels, got {value!r:.40}"
        )
    return int(value)


def backbone_label(backbone: str, img_size: int | None = None) -> str:
    """'vit_base_patch16' -> 'ViT-B', ('vit_huge_patch14', 448) -> 'ViT-H448',
    'vit_base_patch8' -> 'ViT-B/8', ('vit_demo_patch8', 64) -> 'ViT-demo/8@64'; other names
    unchanged. ``img_size``: the input size when it is not the task's own (None: the task's)."""
    img_size = _img_size(img_size)
    if backbone in PAPER_BACKBONES:
        label = PAPER_BACKBONES[backbone]
    else:
        m = re.fullmatch(r"vit_([a-z0-9]+)_patch(\d+)", backbone)
        label = f"ViT-{SIZE_LETTERS.get(m.group(1), m.group(1))}/{m.group(2)}" if m else backbone
    if img_size is not None:
        label += str(img_size) if backbone in PAPER_BACKBONES else f"@{img_size}"
    return label


def _backbone_sort_key(backbone: str, img_size: int | None) -> tuple:
    """Small/demo arches first, then B, L, H (by patch size), each at growing input size."""
    img = _img_size(img_size) or 0
    m = re.fullmatch(r"vit_([a-z0-9]+)_patch(\d+)", backbone)
    if m is None:
        return (0, backbone, 0, img)
    rank = SIZE_RANK.get(SIZE_LETTERS.get(m.group(1), ""), 0)
    return (rank, m.group(1), int(m.group(2)), img)


def _init_sort_key(init: str) -> tuple:
    if init in INIT_ORDER:
        return (INIT_ORDER.index(init), "")
    return (len(INIT_ORDER), init)


def _task_sort_key(task: str) -> tuple:
    order = list(TASKS)
    return (order.index(task), task) if task in TASKS else (len(order), task)


def _title(task: str) -> str:
    return TASKS[task].title if task in TASKS else task


def _main_metrics(task: str) -> tuple[str, ...]:
    return TASKS[task].metrics if task in TASKS else ("top1",)


def _resolution(task: str, img_size: Any) -> int | None:
    """The input size as tables key it: None at the task's own size (``TaskSpec.resolution``)."""
    spec: TaskSpec | None = TASKS.get(task)
    if spec is not None:
        return spec.resolution(img_size)
    img = _img_size(img_size)
    return None if img in (None, PAPER_COLUMN_IMG_SIZE) else img


def _num(x: Any) -> float:
    """float(x), NaN for None/NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------
# Reference numbers
# ----------------------------------------------------------------------------------------------


def load_reference(path: str | os.PathLike = DEFAULT_REFERENCE) -> pd.DataFrame:
    """The published-numbers CSV (see results/reference/README.md) as a DataFrame; the optional
    ``note`` column ('' when absent) is printed as a footnote beside the number."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: reference CSV not found (option --reference)")
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: cannot parse reference CSV ({e})") from None
    for column in REFERENCE_COLUMNS:
        if column not in ref.columns:
            raise BenchError(f"{path}: reference CSV lacks column {column!r}")
    out = ref[list(REFERENCE_COLUMNS)].copy()
    out["note"] = ref["note"].str.strip() if "note" in ref.columns else ""
    for i, row in out.iterrows():
        line = i + 2  # header is line 1
        for column in ("value", "k", "img_size"):
            text = row[column].strip()
            if column != "value" and text == "":
                continue
            try:
                float(text)
            except ValueError:
                raise BenchError(f"{path} line {line}: column {column!r} must be a number, got {text!r}") from None
    out["value"] = out["value"].astype(float)
    out["k"] = [float(t) if t.strip() else math.nan for t in out["k"]]
    out["img_size"] = [int(float(t)) if t.strip() else PAPER_COLUMN_IMG_SIZE for t in out["img_size"]]
    return out


def _reference_key(task, protocol, metric, init, backbone, resolution, k) -> tuple:
    """Where a published number sits; results rows and reference rows build the same key."""
    k = None if math.isnan(_num(k)) else float(k)
    return (task, protocol, metric, init, backbone, resolution, k)


def _reference_lookup(reference: pd.DataFrame | None) -> dict[tuple, tuple[float, str]]:
    """Reference key -> (published value, note)."""
    if reference is None or reference.empty:
        return {}
    out = {}
    notes = reference["note"] if "note" in reference.columns else [""] * len(reference)
    for r, note in zip(reference.itertuples(index=False), notes):
        spec = TASKS.get(r.task)
        resolution = spec.reference_resolution(r.img_size) if spec is not None else _resolution(r.task, r.img_size)
        key = _reference_key(r.task, r.protocol, r.metric, r.init, r.backbone, resolution, r.k)
        out[key] = (float(r.value), str(note or ""))
    return out


# ----------------------------------------------------------------------------------------------
# Statistics: intervals and the significance of 'best'
# ----------------------------------------------------------------------------------------------

NOT_PER_IMAGE = (
    "a single run of a metric without per-image arrays (COCO APmask): no "
    "bootstrap over images; several seeds give a t-interval"
)


class PerExampleError(Exception):
    """A per-example file that cannot be used for a metric (the message says why)."""


def load_per_example(path: str | os.PathLike, metric: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(ids, arrays) of ``metric`` from a task's ``per_example.npz``: ids (N,) as str and the
    arrays ``PER_EXAMPLE_METRICS[metric]`` names, each with N rows. PerExampleError if unusable."""
    needed = PER_EXAMPLE_METRICS.get(metric)
    if needed is None:
        raise PerExampleError(NOT_PER_IMAGE)
    path = Path(path)
    if not path.is_file():
        raise PerExampleError(f"per-example file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in ("ids", *needed) if name in data}
    except (OSError, ValueError, EOFError) as e:
        raise PerExampleError(f"per-example file {path} unreadable ({str(e).splitlines()[0]})") from None
    missing = [name for name in ("ids", *needed) if name not in arrays]
    if missing:
        raise PerExampleError(f"per-example file {path} lacks {', '.join(missing)}")
    ids = arrays.pop("ids").astype(str)
    if ids.ndim != 1 or len(ids) == 0 or len(np.unique(ids)) != len(ids):
        raise PerExampleError(f"per-example file {path}: 'ids' must be unique, one per image")
    for name, a in arrays.items():
        if name in PER_IMAGE_ROWS and (a.shape[:1] != ids.shape or (name in ("intersect", "union") and a.ndim != 2)):
            raise PerExampleError(f"per-example file {path}: {name!r} has shape {a.shape}, ids {ids.shape}")
    if metric == "mIoU" and arrays["intersect"].shape != arrays["union"].shape:
        raise PerExampleError(f"per-example file {path}: 'intersect' and 'union' differ in shape")
    if metric == "APbox" and (arrays["det_image"].size and arrays["det_image"].max() >= len(ids)):
        raise PerExampleError(f"per-example file {path}: 'det_image' points past the {len(ids)} ids")
    if metric == "APbox":
        arrays["ids"] = ids  # box_ap reads the image count from it
    return ids, arrays


def bootstrap_indices(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(samples, n) indices drawn with replacement; a fixed seed makes every table reproducible."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of n items is drawn in each resample: (samples, n)."""
    samples = indices.shape[0]
    flat = (indices + n * np.arange(samples)[:, None]).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(np.float64)


def metric_from_counts(metric: str, arrays: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The metric (percent) of each resample, given how often each image is drawn (S, N).
    top1/top5: mean of per-image correctness. mIoU: mean over the classes present in the
    resample (union > 0) of summed intersection over summed union, as mmseg computes it."""
    if metric in ("top1", "top5"):
        correct = arrays[PER_EXAMPLE_METRICS[metric][0]].astype(np.float64)
        return counts @ correct / counts.sum(axis=1) * 100.0
    inter = counts @ arrays["intersect"].astype(np.float64)  # (S, C)
    union = counts @ arrays["union"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    return np.nanmean(iou, axis=1) * 100.0


def _resampled(
    metric: str, arrays: dict[str, np.ndarray], samples: int, seed: int, order: np.ndarray | None = None
) -> np.ndarray:
    """The metric on ``samples`` resamples of the images. Index rows are drawn in chunks from
    one generator (the rows of ``bootstrap_indices(n, samples, seed)``), so memory stays bounded
    for 50k images and the same seed gives the same resamples for every init (pairing).
    ``order[i]``: the row in ``arrays`` of the i-th image of the index space (pairing two runs
    whose files list the same ids in another order)."""
    n = len(arrays["gt_count"] if metric == "APbox" else next(iter(arrays.values())))
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 5_000_000 // n)
    out = []
    for start in range(0, samples, per_chunk):
        indices = rng.integers(0, n, size=(min(per_chunk, samples - start), n))
        if order is not None:
            indices = order[indices]
        if metric == "APbox":  # COCOeval's accumulate on each resample
            from tasks.detection.evaluation import box_ap

            out.append(np.array([box_ap(arrays, row) for row in indices]))
        else:
            out.append(metric_from_counts(metric, arrays, _counts(indices, n)))
    return np.concatenate(out)


def full_metric(metric: str, arrays: dict[str, np.ndarray]) -> float:
    if metric == "APbox":
        from tasks.detection.evaluation import box_ap

        return box_ap(arrays)
    n = len(next(iter(arrays.values())))
    return float(metric_from_counts(metric, arrays, np.ones((1, n)))[0])


def bootstrap_interval(
    metric: str,
    arrays: dict[str, np.ndarray],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over evaluation images."""
    stats = _resampled(metric, arrays, samples, seed)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    metric: str,
    a: tuple[np.ndarray, dict],
    b: tuple[np.ndarray, dict],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of metric(a) - metric(b) over the SAME resampled evaluation images.
    ``a`` and ``b`` are (ids, arrays); b is aligned to a's id order. PerExampleError when the two
    were not evaluated on the same ids."""
    ids_a, arrays_a = a
    ids_b, arrays_b = b
    if len(ids_a) != len(ids_b) or set(ids_a.tolist()) != set(ids_b.tolist()):
        raise PerExampleError(
            f"evaluated on different images ({len(ids_a)} vs. {len(ids_b)} ids, "
            f"{len(set(ids_a.tolist()) ^ set(ids_b.tolist()))} not shared)"
        )
    order = np.argsort(ids_b)[np.searchsorted(ids_b[np.argsort(ids_b)], ids_a)]  # ids_b[order] == ids_a
    diff = _resampled(metric, arrays_a, samples, seed) - _resampled(metric, arrays_b, samples, seed, order)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(diff, [tail, 100 - tail])
    return float(lo), float(hi)


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of seed values (n >= 2), clipped to the metrics' 0-100 range
    (with 2 seeds t is 12.7: the interval is honest but can pass the range's ends)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(max(values.mean() - half, 0.0)), float(min(values.mean() + half, 100.0))


def seed_test(a: dict[int, float], b: dict[int, float]) -> tuple[float, str]:
    """Two-sided p-value that the seed means of a and b differ: a paired t-test when both have
    the same seeds, Welch's t-test otherwise. Returns (p, the test's name)."""
    from scipy import stats

    if set(a) == set(b):
        seeds = sorted(a)
        x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
        if np.allclose(x - y, (x - y)[0]):  # constant difference: t undefined, the order is exact
            return (0.0 if x[0] != y[0] else 1.0), "paired t-test over seeds"
        return float(stats.ttest_rel(x, y).pvalue), "paired t-test over seeds"
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue), "Welch t-test over seeds"


_INTERVALS: dict[tuple, tuple[float, float]] = {}  # (file, mtime, size, metric, B) -> interval


class _Cell:
    """One table cell: the runs of one init in one (group, column)."""

    def __init__(self, records: list[dict], metric: str, samples: int):
        self.metric = metric
        self.values = {r["seed"]: r["value"] for r in records}
        values = np.array([r["value"] for r in records], dtype=np.float64)
        self.n = len(values)
        self.mean = float(values.mean())
        self.std = float(values.std(ddof=1)) if self.n > 1 else math.nan
        self.lo = self.hi = math.nan
        self.method = ""  # how the interval was made
        self.why_none = ""  # why there is no interval
        self.data: tuple[np.ndarray, dict] | None = None
        if self.n > 1:
            self.lo, self.hi = t_interval(values)
            self.method = "seeds"
            return
        path = records[0]["per_example"]
        try:
            if path is None:
                if metric not in PER_EXAMPLE_METRICS:
                    raise PerExampleError(NOT_PER_IMAGE)
                raise PerExampleError("the run recorded no per-example file (extra.per_example)")
            ids, arrays = load_per_example(path, metric)
            full = full_metric(metric, arrays)
            if abs(full - self.mean) > PER_EXAMPLE_TOLERANCE:
                raise PerExampleError(f"per-example file {path} gives {metric} {full:.2f}, the row {self.mean:.2f}")
        except PerExampleError as e:
            self.why_none = str(e)
            return
        self.data = (ids, arrays)
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size, metric, samples)
        if key not in _INTERVALS:  # tables and plots ask for the same cells
            _INTERVALS[key] = bootstrap_interval(metric, arrays, samples)
        self.lo, self.hi = _INTERVALS[key]
        self.method = "images"


def _compare(top: _Cell, runner: _Cell, samples: int) -> tuple[str, str]:
    """('best' | 'tie' | 'untested', how it was decided) for the top cell against the runner-up."""
    alpha = 1 - CONFIDENCE
    if top.n == 1 and runner.n == 1:
        if top.data is None or runner.data is None:
            return "untested", "no per-example results for a paired bootstrap"
        try:
            lo, _ = paired_bootstrap(top.metric, top.data, runner.data, samples)
        except PerExampleError as e:
            return "untested", f"not compared: {e}"
        return ("best" if lo > 0 else "tie"), "paired bootstrap over the same images"
    if top.n > 1 and runner.n > 1:
        p, name = seed_test(top.values, runner.values)
        return ("best" if p < alpha and top.mean > runner.mean else "tie"), name
    return "untested", "one run against several seeds: not compared"


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


def _extra(r: dict) -> dict:
    extra = r.get("extra")
    return extra if isinstance(extra, dict) else {}


def _deviations(r: dict) -> tuple[str, ...]:
    value = r.get("deviations")
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with status 'ok', one per run_id (the last), without search candidates, with helper
    columns ``img_size``, ``resolution`` (None at the task's own input size), ``mask_ratio``,
    ``col`` (backbone label) and ``init_label``."""
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame()
    ok = df[df["status"] == "ok"].drop_duplicates("run_id", keep="last").copy()
    if "extra" in ok.columns:
        ok = ok[[_extra({"extra": e}).get("search_role") != "candidate" for e in ok["extra"]]]
    if ok.empty:
        return ok
    missing = pd.Series(None, index=ok.index, dtype=object)
    # object dtype keeps None as None (a float column would turn it into NaN)
    ok["img_size"] = pd.Series(
        [_img_size(v, f"results row {rid}") for v, rid in zip(ok.get("extra.img_size", missing), ok["run_id"])],
        index=ok.index,
        dtype=object,
    )
    ok["resolution"] = pd.Series(
        [_resolution(t, s) for t, s in zip(ok["task"], ok["img_size"])], index=ok.index, dtype=object
    )
    ok["mask_ratio"] = [_num(v) for v in ok.get("extra.mask_ratio", missing)]
    ok["col"] = [backbone_label(b, s) for b, s in zip(ok["backbone"], ok["resolution"])]
    ok["k"] = pd.Series(
        [None if math.isnan(_num(k)) else (int(k) if float(k).is_integer() else float(k)) for k in ok["k"]],
        index=ok.index,
        dtype=object,
    )
    # An init pre-trained at several mask ratios is several rows, not one averaged cell.
    several = {init for init, g in ok.groupby("init") if g["mask_ratio"].dropna().nunique() > 1}
    ok["init_label"] = [
        f"{init} mask={ratio:g}" if init in several and not math.isnan(ratio) else init
        for init, ratio in zip(ok["init"], ok["mask_ratio"])
    ]
    return ok


def _per_example_path(r: dict, base_dir: Path | None) -> str | None:
    value = _extra(r).get("per_example")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else (base_dir or Path.cwd()) / path)


def _search_note(search: Any) -> str:
    """A footnote describing the hyperparameter search a final row came from (bench/runner.py's
    ``extra['search']``: grid, chosen, select_on, metric, failed)."""
    if not isinstance(search, dict):
        return "hyperparameters chosen by a search"
    parts = []
    grid = search.get("grid")
    size = search.get("grid_size")
    if size is None and isinstance(grid, list):
        size = len(grid)
    if size is None and isinstance(grid, dict) and grid:
        size = math.prod(len(v) if isinstance(v, list) else 1 for v in grid.values())
        parts.append(f"grid of {size} over {' x '.join(str(k) for k in grid)}")
    elif size is not None:
        parts.append(f"grid of {size}")
    chosen = search.get("chosen")
    if isinstance(chosen, dict) and chosen:
        parts.append("chosen " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    split = search.get("select_on") or search.get("selected_on") or search.get("select")
    if split:
        metric = search.get("metric")
        parts.append(f"selected on {split}" + (f" by {metric}" if isinstance(metric, str) else ""))
    failed = search.get("failed")
    if isinstance(failed, list) and failed:
        parts.append(f"{len(failed)} candidate(s) failed")
    return "hyperparameters chosen by a search" + (f" ({'; '.join(parts)})" if parts else "")


def _cells(runs: pd.DataFrame, table: Table, base_dir: Path | None = None) -> pd.DataFrame:
    """Long frame: one row per (init_label, group, column, run, metric) with the metric value,
    the sort keys of its group and column, the key that locates its published number and what
    the statistics and footnotes need (seed, per-example file, deviations, search)."""
    protocols = sorted(runs["protocol"].unique())
    records = []
    for r in runs.to_dict("records"):
        backbone_key = _backbone_sort_key(r["backbone"], r["resolution"])
        metrics = _main_metrics(r["task"])
        for i, metric in enumerate(metrics if table.layout == "metrics" else metrics[:1]):
            value = _num(r.get(metric))
            if math.isnan(value):
                continue
            if table.layout == "metrics":  # Tables 3-5: a group per metric (and protocol)
                group_key = (i, r["protocol"])
                group = metric if len(protocols) < 2 else f"{metric} ({r['protocol']})"
            elif table.layout == "tasks":  # Table 6, linear probing: a group per task
                group_key, group = _task_sort_key(r["task"]), _title(r["task"])
            else:  # partial fine-tuning: a group per task and backbone, a column per k
                group_key = (_task_sort_key(r["task"]), backbone_key)
                group = f"{_title(r['task'])} {r['col']}"
            if table.layout == "k":
                column_key, column = r["k"], "k=mlp" if r["k"] == 0.5 else f"k={r['k']}"
            else:
                column_key, column = backbone_key, r["col"]
            search = _extra(r).get("search")
            records.append(
                {
                    "init": r["init_label"],
                    "group": group,
                    "group_key": group_key,
                    "column": column,
                    "column_key": column_key,
                    "value": value,
                    "metric": metric,
                    "task": r["task"],
                    "protocol": r["protocol"],
                    "seed": int(r["seed"]),
                    "per_example": _per_example_path(r, base_dir),
                    "deviations": _deviations(r),
                    "search": None if search is None else _search_note(search),
                    "ref_key": _reference_key(
                        r["task"], r["protocol"], metric, r["init"], r["backbone"], r["resolution"], r["k"]
                    ),
                }
            )
    return pd.DataFrame.from_records(records)


class _Notes:
    """Footnotes of one table: each distinct text gets a letter, in order of first use."""

    def __init__(self):
        self.marks: dict[str, str] = {}

    def mark(self, text: str) -> str:
        if text not in self.marks:
            i = len(self.marks)
            letters = ""
            while True:
                letters = chr(ord("a") + i % 26) + letters
                i = i // 26 - 1
                if i < 0:
                    break
            self.marks[text] = letters
        return self.marks[text]


def _aggregate(
    cells: pd.DataFrame,
    published: dict[tuple, tuple[float, str]],
    title: str,
    samples: int = BOOTSTRAP_SAMPLES,
    paper_columns: dict | None = None,
    prev_best: dict | None = None,
) -> pd.DataFrame:
    """Wide table: index init, columns (group, column, field); text in ``attrs``."""
    stat_cells: dict[tuple, _Cell] = {}
    records = []
    for (init, group, column), g in cells.groupby(["init", "group", "column"], sort=False):
        rs = g.to_dict("records")
        cell = _Cell(rs, rs[0]["metric"], samples)
        stat_cells[(init, group, column)] = cell
        value, note = published.get(rs[0]["ref_key"], (math.nan, ""))
        records.append(
            {
                "init": init,
                "group": group,
                "column": column,
                "mean": cell.mean,
                "std": cell.std,
                "n": cell.n,
                "lo": cell.lo,
                "hi": cell.hi,
                "published": value,
            }
        )
    stats = pd.DataFrame.from_records(records).set_index(["init", "group", "column"]).sort_index()
    cell_index = stats.index.droplevel("init")
    if BASELINE_INIT in stats.index.get_level_values("init"):
        baseline = stats.loc[BASELINE_INIT, "mean"]
        stats["delta"] = stats["mean"].to_numpy() - baseline.reindex(cell_index).to_numpy()
    else:
        stats["delta"] = math.nan
    table = stats[list(FIELDS)].astype(float).unstack(["group", "column"])
    table = table.reorder_levels([1, 2, 0], axis=1)  # (field, group, column) -> (group, column, field)

    first = cells.groupby(["group", "column"]).agg(group_key=("group_key", "first"), column_key=("column_key", "first"))
    group_keys = first.groupby(level="group")["group_key"].first()
    groups = sorted(group_keys.index, key=lambda g: (group_keys[g], g))
    order = [
        (g, c, f)
        for g in groups
        for c in sorted(first.loc[g].index, key=lambda c: (first.loc[(g, c), "column_key"], c))
        for f in FIELDS
    ]
    table = table.reindex(
        index=sorted(table.index, key=_init_sort_key),
        columns=pd.MultiIndex.from_tuples(order, names=["group", "column", "field"]),
    )

    # Significance: the top init of each (group, column) against the runner-up.
    notes = _Notes()
    info: dict[tuple, dict] = {key: {"mark": "", "marks": [], "interval": "", "pub_marks": []} for key in stat_cells}
    tests = []
    for group, column in dict.fromkeys((g, c) for g, c, _ in order):
        ranked = sorted(
            ((cell.mean, init) for (init, g, c), cell in stat_cells.items() if (g, c) == (group, column)), reverse=True
        )
        if len(ranked) < 2:
            continue
        top, runner = ranked[0][1], ranked[1][1]
        verdict, how = _compare(stat_cells[(top, group, column)], stat_cells[(runner, group, column)], samples)
        tests.append((group, column, verdict, how))
        if verdict == "best":
            info[(top, group, column)]["mark"] = "best"
        elif verdict == "tie":
            for init in (top, runner):
                info[(init, group, column)]["mark"] = "tie"
        else:
            info[(top, group, column)]["marks"].append(
                notes.mark(f"highest mean, not tested against the runner-up ({runner}): {how}")
            )

    # Intervals, deviations, searches and the reference notes as footnotes.
    common = set.intersection(*(set(d) for d in cells["deviations"])) if len(cells) else set()
    for (init, group, column), cell in stat_cells.items():
        g = cells[(cells["init"] == init) & (cells["group"] == group) & (cells["column"] == column)]
        i = info[(init, group, column)]
        if cell.method == "images":
            i["interval"] = f"bootstrap over {len(cell.data[0])} images"
        elif cell.method == "seeds":
            i["interval"] = f"t-interval over {cell.n} seeds"
        else:
            i["interval"] = ""
            i["marks"].append(notes.mark(f"no interval: {cell.why_none}"))
        for phrase in dict.fromkeys(p for d in g["deviations"] for p in d):
            if phrase not in common:
                i["marks"].append(notes.mark(f"deviation from the paper's protocol: {phrase}"))
        for text in dict.fromkeys(t for t in g["search"] if isinstance(t, str) and t):
            i["marks"].append(notes.mark(text))
        value, note = published.get(g["ref_key"].iloc[0], (math.nan, ""))
        if not math.isnan(value) and note:
            i["pub_marks"].append(notes.mark(f"paper: {note}"))
        i["marks"] = list(dict.fromkeys(i["marks"]))

    table_notes = []
    if common:
        table_notes.append(
            "Every run here departs from the paper's protocol: "
            + "; ".join(sorted(common))
            + ". Compare with the paper's numbers "
            "only as a sanity check."
        )
    shown = {c for g, c, _ in order if table[(g, c, "published")].notna().any()}
    without = [c for c in dict.fromkeys(c for _, c, _ in order) if c not in shown]
    if without:
        known = sorted(set((paper_columns or {}).get(title, ())))
        table_notes.append(
            f"The paper has no number for {', '.join(without)}"
            + (f" (its columns here: {', '.join(known)})" if known else "")
            + ", so no paper column is shown for it."
        )
    if prev_best:
        table_notes.append(
            "Prev best (paper, Table 6: best earlier result, any method, model and "
            "input size): "
            + "; ".join(
                f"{group} {value:.{DIGITS}f}" + (f" (note {notes.mark('prev best: ' + note)})" if note else "")
                for group, (value, note) in prev_best.items()
            )
            + "."
        )
    table.attrs.update(title=title, info=info, notes=table_notes, footnotes=dict(notes.marks), tests=tests)
    return table


def build_tables(
    df: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    base_dir: str | os.PathLike | None = None,
    prev_best: pd.DataFrame | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, pd.DataFrame]:
    """The paper's table layouts from a results DataFrame (``ResultsStore.dataframe()``);
    tables without data are left out. ``base_dir``: where relative ``extra['per_example']``
    paths start (the results store's folder; default the working directory). ``prev_best``:
    Table 6's 'prev best' numbers (results/reference/mae_paper_prev_best.csv)."""
    runs = finished_runs(df)
    if runs.empty:
        return {}
    published = _reference_lookup(reference)
    base = None if base_dir is None else Path(base_dir)
    table_of = [TASKS[t].tables.get(p) if t in TASKS else None for t, p in zip(runs["task"], runs["protocol"])]
    paper_columns: dict[str, list[str]] = {}
    if reference is not None:
        for r in reference.itertuples(index=False):
            spec = TASKS.get(r.task)
            if spec is None or spec.tables.get(r.protocol) is None or not r.backbone:
                continue
            paper_columns.setdefault(spec.tables[r.protocol].title, []).append(
                backbone_label(r.backbone, spec.reference_resolution(r.img_size))
            )
    best_before = {}
    if prev_best is not None:
        for r in prev_best.itertuples(index=False):
            best_before[(r.task, r.protocol, r.metric)] = (float(r.value), str(getattr(r, "note", "")))
    tables = {}
    for table in TABLES:
        sel = runs[[t is table for t in table_of]]
        if sel.empty:
            continue
        cells = _cells(sel, table, base)
        if cells.empty:
            continue
        before = {}
        if table.layout == "tasks":
            for (task, protocol, metric, group), _ in cells.groupby(
                ["task", "protocol", "metric", "group"], sort=False
            ):
                if (task, protocol, metric) in best_before:
                    before[group] = best_before[(task, protocol, metric)]
        tables[table.name] = _aggregate(cells, published, table.title, samples, paper_columns, before)
    return tables


# ----------------------------------------------------------------------------------------------
# Writing: CSV (long: shown digits and raw values), LaTeX (booktabs), Markdown
# ----------------------------------------------------------------------------------------------


def _info(table: pd.DataFrame, init: str, group: str, column: str) -> dict:
    return table.attrs.get("info", {}).get(
        (init, group, column), {"mark": "", "marks": [], "interval": "", "pub_marks": []}
    )


def table_to_long(table: pd.DataFrame, digits: int = DIGITS) -> pd.DataFrame:
    """One row per (init, group, column): the numbers as shown (rounded to ``digits``), the
    interval method, the significance mark and footnotes, then the raw values (``*_raw``)."""
    footnotes = {mark: text for text, mark in table.attrs.get("footnotes", {}).items()}
    records = []
    for init in table.index:
        for group, column in _cell_columns(table):
            cell = {f: table.loc[init, (group, column, f)] for f in FIELDS}
            if math.isnan(cell["mean"]):
                continue
            i = _info(table, init, group, column)
            records.append(
                {
                    "init": init,
                    "group": group,
                    "column": column,
                    "mean": round(cell["mean"], digits),
                    "ci_low": round(cell["lo"], digits),
                    "ci_high": round(cell["hi"], digits),
                    "n": int(cell["n"]),
                    "delta": round(cell["delta"], digits),
                    "published": cell["published"],
                    "interval": i["interval"],
                    "mark": i["mark"],
                    "notes": " | ".join(footnotes[m] for m in i["marks"] + i["pub_marks"]),
                    "mean_raw": cell["mean"],
                    "std_raw": cell["std"],
                    "ci_low_raw": cell["lo"],
                    "ci_high_raw": cell["hi"],
                    "delta_raw": cell["delta"],
                }
            )
    columns = [
        "init",
        "group",
        "column",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "delta",
        "published",
        "interval",
        "mark",
        "notes",
        "mean_raw",
        "std_raw",
        "ci_low_raw",
        "ci_high_raw",
        "delta_raw",
    ]
    long = pd.DataFrame.from_records(records, columns=columns)
    long["n"] = long["n"].astype(int)
    for c in ("mean", "ci_low", "ci_high", "delta"):  # -0.0 from rounding a tiny negative
        long[c] = long[c] + 0.0
    return long


def _cell_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    seen = []
    for group, column, _ in table.columns:
        if (group, column) not in seen:
            seen.append((group, column))
    return seen


def _has_published(table: pd.DataFrame, group: str, column: str) -> bool:
    return bool(table[(group, column, "published")].notna().any())


def _fmt(x: float, digits: int, style: str = "md") -> str:
    """A number as shown: a real minus sign (U+2212 in Markdown, math minus in LaTeX)."""
    text = f"{x:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    if text.startswith("-"):
        return ("$-$" if style == "tex" else "\u2212") + text[1:]
    return text


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain text: 'vit_base_patch16' -> 'vit\\_base\\_patch16'."""
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "<": r"\textless{}",
        ">": r"\textgreater{}",
        "\u2212": "$-$",
        "\u2248": r"$\approx$",
        "\u2020": r"\dag{}",
        "\u2021": r"\ddag{}",
        "\u0394": r"$\Delta$",
        "\u00b1": r"$\pm$",
    }
    return "".join(table.get(ch, ch) for ch in str(text))


def _sup(marks: list[str], style: str) -> str:
    if not marks:
        return ""
    text = ",".join(marks)
    return rf"\textsuperscript{{{text}}}" if style == "tex" else f"<sup>{text}</sup>"


def _cell_text(table, init, group, column, digits, style) -> str:
    mean = table.loc[init, (group, column, "mean")]
    if math.isnan(mean):
        return ""
    lo, hi = table.loc[init, (group, column, "lo")], table.loc[init, (group, column, "hi")]
    n = int(table.loc[init, (group, column, "n")])
    i = _info(table, init, group, column)
    value = _fmt(mean, digits, style)
    if i["mark"] == "best":
        value = rf"\textbf{{{value}}}" if style == "tex" else f"**{value}**"
    text = value
    if not math.isnan(lo):
        text += f" [{_fmt(lo, digits, style)}, {_fmt(hi, digits, style)}]"
    if n > 1:
        text += f" n={n}"
    if i["mark"] == "tie":
        text += r" $\approx$" if style == "tex" else " \u2248"
    return text + _sup(i["marks"], style)


def _published_text(table, init, group, column, digits, style="md") -> str:
    value = table.loc[init, (group, column, "published")]
    if math.isnan(value):
        return ""
    return _fmt(value, digits, style) + _sup(_info(table, init, group, column)["pub_marks"], style)


LEGEND = (
    "Cells: mean [95 % interval]; one run: percentile bootstrap over evaluation images "
    f"({BOOTSTRAP_SAMPLES} resamples); n=N: t-interval over N seeds. Bold: better than "
    "the runner-up (paired bootstrap over the same images, or a t-test over seeds, 5 % "
    "level); \u2248: top two not distinguishable."
)


def _footnote_lines(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(mark, text) of every footnote, then ('', text) of every table note."""
    out = [(mark, text) for text, mark in table.attrs.get("footnotes", {}).items()]
    return out + [("", text) for text in table.attrs.get("notes", [])]


def to_markdown(table: pd.DataFrame, digits: int = DIGITS) -> str:
    cells = _cell_columns(table)
    header, align = ["init"], [":---"]
    for group, column in cells:
        label = f"{group} {column}"
        header.append(label)
        align.append("---:")
        if _has_published(table, group, column):
            header.append(f"{label} (paper)")
            align.append("---:")
    lines = [
        f"**{table.attrs.get('title', '')}**",
        "",
        LEGEND,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
    ]
    for init in table.index:
        row = [init.replace("|", "\\|")]
        for group, column in cells:
            row.append(_cell_text(table, init, group, column, digits, "md"))
            if _has_published(table, group, column):
                row.append(_published_text(table, init, group, column, digits))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    notes = _footnote_lines(table)
    if notes:
        lines.append("")
        lines += [(f"<sup>{mark}</sup> " if mark else "") + text.replace("|", "\\|") + "  " for mark, text in notes]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, digits: int = DIGITS) -> str:
    """A complete ``table`` float (booktabs): caption, label, tabular and footnotes."""
    cells = _cell_columns(table)
    spans = {}  # group -> number of tabular columns
    for group, column in cells:
        spans[group] = spans.get(group, 0) + 1 + _has_published(table, group, column)
    ncols = 1 + sum(spans.values())
    title = table.attrs.get("title", "")
    label = re.sub(r"[^A-Za-z0-9]+", "-", title.split(",")[0]).strip("-").lower() or "table"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(title)}. {latex_escape(LEGEND)} "
        r"'paper': He et al.\ 2021.}",
        rf"\label{{tab:{label}}}",
        r"\begin{tabular}{l" + "c" * (ncols - 1) + "}",
        r"\toprule",
    ]
    row, rules, start = [""], [], 2
    for group, span in spans.items():
        row.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines.append(" & ".join(row) + r" \\")
    lines.append(" ".join(rules))
    row = ["init"]
    for group, column in cells:
        row.append(latex_escape(column))
        if _has_published(table, group, column):
            row.append("paper")
    lines.append(" & ".join(row) + r" \\")
    lines.append(r"\midrule")
    for init in table.index:
        row = [latex_escape(init)]
        for group, column in cells:
            row.append(_cell_text(table, init, group, column, digits, "tex"))
            if _has_published(table, group, column):
                row.append(_published_text(table, init, group, column, digits, "tex"))
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = _footnote_lines(table)
    if notes:
        lines += [r"\par\smallskip\footnotesize\raggedright"]
        lines += [
            (rf"\textsuperscript{{{mark}}}" if mark else "") + latex_escape(text) + r"\par" for mark, text in notes
        ]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(
    tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Write every table as ``<out_dir>/<name>.<fmt>`` (each file atomically, with the mode a
    plain ``open`` gives under the user's umask); return the paths."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise BenchError(f"table format {fmt!r} (option --formats) is not one of {FORMATS}")
    out_dir = Path(out_dir)
    written = []
    for name, table in tables.items():
        for fmt in formats:
            if fmt == "csv":
                text = table_to_long(table).to_csv(index=False, lineterminator="\n")
            elif fmt == "tex":
                text = to_latex(table)
            else:
                text = to_markdown(table)
            path = out_dir / f"{name}.{fmt}"
            atomic_write_text(path, text)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _save_figure(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_")


def _interval(sel: pd.DataFrame, metric: str, base_dir: Path | None, samples: int) -> tuple[float, float, float]:
    """(mean, lo, hi) of the runs in ``sel`` as the tables compute it (lo/hi NaN without one)."""
    sel = sel[sel[metric].notna()]
    if sel.empty:
        return math.nan, math.nan, math.nan
    records = [
        {"seed": int(r["seed"]), "value": float(r[metric]), "per_example": _per_example_path(r, base_dir)}
        for r in sel.to_dict("records")
    ]
    cell = _Cell(records, metric, samples)
    return cell.mean, cell.lo, cell.hi


def _errorbars(ax, x, stats, **kwargs) -> None:
    """Interval bars where an interval exists; none (not a zero-height cap) elsewhere."""
    x = np.asarray(x, dtype=float)
    mean, lo, hi = (np.array([s[i] for s in stats], dtype=float) for i in range(3))
    ok = ~np.isnan(lo)
    if ok.any():
        ax.errorbar(x[ok], mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], capsize=3, **kwargs)


def _unit(metric: str) -> str:
    return f"{metric} (%)"


def _chance(sel: pd.DataFrame) -> float | None:
    """100 / number of classes for classification rows that record ``extra['num_classes']``."""
    sizes = {_extra(r).get("num_classes") for r in sel.to_dict("records")} - {None}
    if len(sizes) == 1:
        size = sizes.pop()
        if isinstance(size, int) and not isinstance(size, bool) and size > 1:
            return 100.0 / size
    return None


def _footer(ax, sel: pd.DataFrame, below: float) -> None:
    """Under the plot: what the error bars are and the deviations from the paper's protocol."""
    lines = ["error bars: 95 % interval (none: no interval for that cell)"]
    phrases = list(dict.fromkeys(p for r in sel.to_dict("records") for p in _deviations(r)))
    if phrases:
        text = "Not the paper's protocol: " + "; ".join(phrases)
        lines.append(text if len(text) <= 110 else text[:107] + "...")
    ax.annotate(
        "\n".join(lines),
        xy=(0, 0),
        xycoords="axes fraction",
        xytext=(0, -below),
        textcoords="offset points",
        fontsize=7,
        ha="left",
        va="top",
        color="0.3",
    )


def plot_tables(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> list[Path]:
    """PNG plots from finished runs: grouped bars per (task, protocol), partial fine-tuning curves
    (top1 vs. k, one line per init, like MAE Fig. 9) and mask-ratio curves when runs carry
    several ``extra['mask_ratio']`` values. Error bars are the tables' 95 % intervals (none where
    a cell has none); a dashed line marks chance where rows record ``extra['num_classes']``; a
    note under the plot lists the deviations from the paper's protocol. Plots without data are
    skipped."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    runs = finished_runs(df)
    out_dir = Path(out_dir)
    base = None if base_dir is None else Path(base_dir)
    written: list[Path] = []
    if runs.empty:
        return written

    # Grouped bars: init on x, one bar per backbone.
    bars = runs[runs["protocol"] != "partial"]
    for (task, protocol), sel in sorted(
        bars.groupby(["task", "protocol"]), key=lambda kv: (_task_sort_key(kv[0][0]), kv[0][1])
    ):
        metrics = [m for m in _main_metrics(task) if m in sel.columns and sel[m].notna().any()]
        if not metrics:
            continue
        inits = sorted(sel["init_label"].unique(), key=_init_sort_key)
        cols = sorted(
            sel[["backbone", "img_size", "col"]].drop_duplicates("col").itertuples(),
            key=lambda r: _backbone_sort_key(r.backbone, r.img_size),
        )
        fig = Figure(figsize=(2.0 + (0.9 * len(inits) + 0.3 * len(cols)) * len(metrics), 3.8))
        width = 0.8 / len(cols)
        chance = _chance(sel)
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), i + 1)
            for j, c in enumerate(cols):
                stats = [
                    _interval(sel[(sel["init_label"] == init) & (sel["col"] == c.col)], metric, base, samples)
                    for init in inits
                ]
                x = np.arange(len(inits)) + (j - (len(cols) - 1) / 2) * width
                ax.bar(x, [s[0] for s in stats], width, label=c.col)
                _errorbars(ax, x, stats, fmt="none", ecolor="black", elinewidth=1)
            if chance is not None:
                ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
            ax.set_xticks(np.arange(len(inits)), inits, rotation=30, ha="right")
            ax.set_ylabel(_unit(metric))
            ax.set_title(metric, fontsize=10)
            ax.legend(fontsize=7)
        fig.suptitle(f"{_title(task)}, {protocol}")
        fig.subplots_adjust(wspace=0.35)
        _footer(fig.axes[0], sel, below=55)
        written.append(_save_figure(fig, out_dir / f"bars_{_slug(task)}_{_slug(protocol)}.png"))

    # Partial fine-tuning: top1 vs. k, one line per init.
    partial = runs[(runs["protocol"] == "partial") & runs["k"].notna()]
    if "top1" in partial.columns:
        partial = partial[partial["top1"].notna()]
        for (task, col), sel in partial.groupby(["task", "col"]):
            fig = Figure(figsize=(5, 3.6))
            ax = fig.add_subplot(1, 1, 1)
            for init in sorted(sel["init_label"].unique(), key=_init_sort_key):
                mine = sel[sel["init_label"] == init]
                ks = sorted(mine["k"].unique())
                stats = [_interval(mine[mine["k"] == k], "top1", base, samples) for k in ks]
                line = ax.plot(ks, [s[0] for s in stats], marker="o", label=init)[0]
                _errorbars(ax, ks, stats, fmt="none", ecolor=line.get_color())
            chance = _chance(sel)
            if chance is not None:
                ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
            ax.set_xticks(sorted(sel["k"].unique()))
            ax.set_xlabel("# fine-tuned blocks k (0 = linear probe)")
            ax.set_ylabel(_unit("top1"))
            ax.set_title(f"Partial fine-tuning, {_title(task)} {col}")
            ax.legend(fontsize=7)
            _footer(ax, sel, below=35)
            written.append(_save_figure(fig, out_dir / f"partial_{_slug(task)}_{_slug(col)}.png"))

    # Mask ratio: metric vs. extra['mask_ratio'], one line per (protocol, backbone, init).
    masked = runs[runs["mask_ratio"].notna()]
    for task, sel in masked.groupby("task"):
        metric = _main_metrics(task)[0]
        if metric not in sel.columns:
            continue
        sel = sel[sel[metric].notna()]
        lines = [(key, g) for key, g in sel.groupby(["protocol", "col", "init"]) if g["mask_ratio"].nunique() > 1]
        if not lines:
            continue
        fig = Figure(figsize=(5, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        for (protocol, col, init), g in lines:
            ratios = sorted(g["mask_ratio"].unique())
            stats = [_interval(g[g["mask_ratio"] == r], metric, base, samples) for r in ratios]
            x = [100 * r for r in ratios]
            line = ax.plot(x, [s[0] for s in stats], marker="o", label=f"{init} {col} {protocol}")[0]
            _errorbars(ax, x, stats, fmt="none", ecolor=line.get_color())
        chance = _chance(sel)
        if chance is not None:
            ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("masking ratio (%)")
        ax.set_ylabel(_unit(metric))
        ax.set_title(f"Masking ratio, {_title(task)}")
        ax.legend(fontsize=7)
        _footer(ax, sel, below=35)
        written.append(_save_figure(fig, out_dir / f"mask_ratio_{_slug(task)}.png"))
    return written


# ----------------------------------------------------------------------------------------------
# Top level and CLI hooks
# ----------------------------------------------------------------------------------------------


def check_rows(store: ResultsStore) -> None:
    """One-line BenchError naming the store and line for a row whose extras the tables read
    cannot be read (``img_size`` that is no whole number, a non-numeric ``mask_ratio``, a
    ``per_example`` that is not a path)."""
    for number, r in store.numbered_rows():
        where = f"results store {store.path} line {number}"
        extra = r["extra"]
        _img_size(extra.get("img_size"), where)
        ratio = extra.get("mask_ratio")
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1
        ):
            raise BenchError(
                f"{where}: row key 'extra' entry 'mask_ratio' must be a number in [0, 1], got {ratio!r:.40}"
            )
        for key in ("per_example", "search_role"):
            if extra.get(key) is not None and not isinstance(extra[key], str):
                raise BenchError(f"{where}: row key 'extra' entry {key!r} must be a string, got {extra[key]!r:.40}")


def run_table(
    results_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str | None = None,
    task: str | None = None,
    reference_csv: str | os.PathLike | None = DEFAULT_REFERENCE,
    formats: tuple[str, ...] = FORMATS,
    plots: bool = True,
) -> list[Path]:
    """Tables (and plots) for the runs in ``results_path`` matching ``suite``/``task``; returns
    the written paths. ``reference_csv=None`` leaves the published column empty. Relative
    ``extra['per_example']`` paths are read from the store's folder."""
    store = ResultsStore(results_path)
    if not os.path.lexists(store.path):
        raise BenchError(f"{store.path}: results file not found (option --results)")
    check_rows(store)  # also refuses a folder or FIFO in the store's place, in one line
    filters = {key: value for key, value in (("suite", suite), ("task", task)) if value}
    described = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"
    df = store.dataframe(**filters)
    if df.empty:
        raise BenchError(f"{store.path}: no runs match {described}")
    if not (df["status"] == "ok").any():
        raise BenchError(f"{store.path}: {len(df)} runs match {described} but none finished with status 'ok'")
    if (
        reference_csv is not None and Path(reference_csv) == DEFAULT_REFERENCE and not DEFAULT_REFERENCE.is_file()
    ):  # e.g. installed without the results/ folder
        warnings.warn(f"{DEFAULT_REFERENCE} not found: tables show no published numbers", stacklevel=2)
        reference_csv = None
    reference = load_reference(reference_csv) if reference_csv is not None else None
    prev_best = None
    if reference_csv is not None and DEFAULT_PREV_BEST.is_file():
        prev_best = load_reference(DEFAULT_PREV_BEST)
    base_dir = store.path.parent
    tables = build_tables(df, reference, base_dir=base_dir, prev_best=prev_best)
    if not tables:
        raise BenchError(
            f"{store.path}: runs matching {described} fit none of the tables "
            f"(tasks {sorted(df['task'].unique())}, protocols "
            f"{sorted(df['protocol'].unique())})"
        )
    written = write_tables(tables, out_dir, formats)
    if plots:
        written += plot_tables(df, out_dir, base_dir=base_dir)
    return written


def add_table_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench table``."""
    parser.add_argument(
        "--results", required=True, metavar="PATH", help="results store: a runs.jsonl file or the directory holding it"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--suite", default=None, help="only runs of this suite")
    parser.add_argument("--task", default=None, help="only runs of this task (e.g. coco)")
    parser.add_argument(
        "--reference",
        default=str(DEFAULT_REFERENCE),
        metavar="CSV",
        help="published numbers to show side by side ('none' to omit)",
    )
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of csv,tex,md")
    parser.add_argument("--no-plots", action="store_true", help="tables only, no PNG plots")
    return parser


def table_main(args: argparse.Namespace) -> int:
    """Run ``bench table`` with parsed arguments; prints the written paths."""
    if not str(args.out).strip():
        raise BenchError("--out must name a folder, got ''")
    reference = None if str(args.reference).lower() == "none" else args.reference
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    paths = run_table(
        args.results,
        args.out,
        suite=args.suite,
        task=args.task,
        reference_csv=reference,
        formats=formats,
        plots=not args.no_plots,
    )
    for path in paths:
        print(path)
    return 0
