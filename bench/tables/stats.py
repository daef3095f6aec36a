"""Statistics: intervals over evaluation images or seeds, and the test that decides 'best'."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

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
