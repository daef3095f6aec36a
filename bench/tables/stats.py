"""Statistics: intervals over evaluation images or seeds, and the test that decides 'best'."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.errors import DataError, first_line
from bench.core.npz import load_npz

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
        arrays = load_npz(path, ("ids", *needed))  # shapes checked from the headers before inflating
    except DataError as e:
        raise PerExampleError(f"per-example file {first_line(e)}") from None
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
    """Student-t interval of the mean of seed values (n >= 2). Not clipped: a caller that finds it
    past the metric's 0-100 range shows no interval rather than a clipped one."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


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


def seed_difference(
    a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE
) -> tuple[float, float, str]:
    """(lo, hi, test) of the interval of mean(a) - mean(b) that ``seed_test`` inverts: paired t
    when both have the same seeds, Welch otherwise (each needs >= 2 seeds)."""
    from scipy import stats

    q = 0.5 + confidence / 2
    if set(a) == set(b):
        d = np.array([a[s] - b[s] for s in sorted(a)], dtype=np.float64)
        half = stats.t.ppf(q, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return float(d.mean() - half), float(d.mean() + half), "paired t-test over seeds"
    x, y = np.array(list(a.values()), dtype=np.float64), np.array(list(b.values()), dtype=np.float64)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff, se = x.mean() - y.mean(), math.sqrt(va + vb)
    if se == 0:
        return float(diff), float(diff), "Welch t-test over seeds"
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = stats.t.ppf(q, df) * se
    return float(diff - half), float(diff + half), "Welch t-test over seeds"


def _percentiles(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


# (file, mtime, size, metric, B) -> the metric on B resamples of the images in sorted-id order
_RESAMPLES: dict[tuple, np.ndarray] = {}


def _run_resamples(path: str, ids: np.ndarray, arrays: dict, metric: str, samples: int) -> np.ndarray:
    """One run's metric on the shared resamples. The index space is the sorted ids, so every
    run evaluated on the same images sees the same resampled images, whatever its file order."""
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size, metric, samples)
    if key not in _RESAMPLES:  # tables, plots and the answer ask for the same runs
        _RESAMPLES[key] = _resampled(metric, arrays, samples, BOOTSTRAP_SEED, np.argsort(ids, kind="stable"))
    return _RESAMPLES[key]


class _Cell:
    """One table cell: the runs (seeds) of one label and checkpoint in one (group, column).

    With a usable per-example file for every run, ``resamples`` (runs x B) holds each run's
    metric on the same B resamples of the evaluation images; the interval is a bootstrap over
    images (one run) or over seeds x images (seeds drawn with replacement too). Otherwise
    several seeds give a t-interval, when it stays inside the metric's 0-100 range."""

    def __init__(self, records: list[dict], metric: str, samples: int):
        self.metric = metric
        self.values = {r["seed"]: r["value"] for r in records}
        values = np.array([r["value"] for r in records], dtype=np.float64)
        self.n = len(values)
        self.mean = float(values.mean())
        self.std = float(values.std(ddof=1)) if self.n > 1 else math.nan
        self.lo = self.hi = math.nan
        self.method = ""  # how the interval was made: 'images', 'seeds x images', 'seeds' or ''
        self.why_none = ""  # why there is no interval
        self.data: tuple[np.ndarray, dict] | None = None  # (ids, arrays) of the first run
        self.ids: np.ndarray | None = None  # sorted ids shared by every run
        self.resamples: np.ndarray | None = None
        try:
            self._load(records, samples)
        except PerExampleError as e:
            self.why_none = str(e)
        if self.resamples is not None:
            self.lo, self.hi = _percentiles(self.seed_means(BOOTSTRAP_SEED + 1))
            self.method = "images" if self.n == 1 else "seeds x images"
        elif self.n > 1:
            lo, hi = t_interval(values)
            if lo < 0 or hi > 100:
                self.why_none = (
                    f"{self.n} seeds without usable per-example files ({self.why_none}): their t-interval "
                    f"[{lo:.1f}, {hi:.1f}] passes the metric's 0-100 range"
                )
            else:
                self.lo, self.hi, self.method, self.why_none = lo, hi, "seeds", ""

    def _load(self, records: list[dict], samples: int) -> None:
        runs = []
        for r in records:
            path = r["per_example"]
            if path is None:
                if self.metric not in PER_EXAMPLE_METRICS:
                    raise PerExampleError(NOT_PER_IMAGE)
                raise PerExampleError("the run recorded no per-example file (extra.per_example)")
            ids, arrays = load_per_example(path, self.metric)
            full = full_metric(self.metric, arrays)
            if abs(full - r["value"]) > PER_EXAMPLE_TOLERANCE:
                raise PerExampleError(
                    f"per-example file {path} gives {self.metric} {full:.2f}, the row {r['value']:.2f}"
                )
            runs.append((path, ids, arrays))
        self.data = (runs[0][1], runs[0][2])
        reference = np.sort(runs[0][1])
        for path, ids, _ in runs[1:]:
            if not np.array_equal(np.sort(ids), reference):
                raise PerExampleError(f"per-example file {path}: the seeds were evaluated on different images")
        self.ids = reference
        self.resamples = np.stack([_run_resamples(p, ids, arrays, self.metric, samples) for p, ids, arrays in runs])

    def seed_means(self, seed: int) -> np.ndarray:
        """The cell's mean on each resample: the images as resampled, the runs (seeds) drawn with
        replacement from ``seed``'s generator (one run: its own resamples)."""
        runs, samples = self.resamples.shape
        if runs == 1:
            return self.resamples[0]
        pick = np.random.default_rng(seed).integers(0, runs, size=(samples, runs))
        return self.resamples[pick, np.arange(samples)[:, None]].mean(axis=1)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) of two cells, its 95 % interval (NaN: not tested) and how it was made."""

    mean: float
    lo: float
    hi: float
    how: str

    @property
    def verdict(self) -> str:
        """'better' / 'worse' (the interval excludes 0, i.e. p < 0.05), 'not distinguishable' or
        'not tested'."""
        if math.isnan(self.lo):
            return "not tested"
        return "better" if self.lo > 0 else "worse" if self.hi < 0 else "not distinguishable"


def difference(a: _Cell, b: _Cell) -> Difference:
    """The test the tables use between two cells: a paired bootstrap over the same resampled
    images (seeds drawn with replacement, independently per cell) when both have per-example
    files; a t-test over seeds when both have several seeds; otherwise not tested."""
    mean = a.mean - b.mean
    if a.resamples is not None and b.resamples is not None:
        if len(a.ids) != len(b.ids) or not np.array_equal(a.ids, b.ids):
            apart = len(set(a.ids.tolist()) ^ set(b.ids.tolist()))
            how = f"not compared: evaluated on different images ({len(a.ids)} vs. {len(b.ids)} ids, {apart} not shared)"
            return Difference(mean, math.nan, math.nan, how)
        lo, hi = _percentiles(a.seed_means(BOOTSTRAP_SEED + 1) - b.seed_means(BOOTSTRAP_SEED + 2))
        how = "paired bootstrap over the same images"
        if a.n > 1 or b.n > 1:
            how += f" and seeds ({len(a.ids)} images, {a.n} vs. {b.n} seeds)"
        return Difference(mean, lo, hi, how)
    if a.n > 1 and b.n > 1:
        lo, hi, name = seed_difference(a.values, b.values)
        return Difference(mean, lo, hi, name)
    if a.n == 1 and b.n == 1:
        return Difference(mean, math.nan, math.nan, "no per-example results for a paired bootstrap")
    return Difference(mean, math.nan, math.nan, "one run against several seeds without per-example results")


def _compare(top: _Cell, runner: _Cell, samples: int = BOOTSTRAP_SAMPLES) -> tuple[str, str]:
    """('best' | 'tie' | 'untested', how it was decided) for the top cell against the runner-up."""
    d = difference(top, runner)
    if d.verdict == "not tested":
        return "untested", d.how
    return ("best" if d.lo > 0 else "tie"), d.how
