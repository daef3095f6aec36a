"""Per-image IoU areas of an ADE20K validation, for bootstrap intervals over images.

``PerImageIoUMetric`` is mmseg's ``IoUMetric`` that also keeps, for each image, the areas it
accumulates anyway (``IoUMetric.intersect_and_union``: intersection, union, prediction and label
pixels per class, the ignore label excluded) and the image's id (its file name without extension).
Its metrics are IoUMetric's own; ``per_image`` holds the last evaluation's rows (rank 0, gathered
over the processes as mmengine gathers ``results``).

``write_per_example`` stores them as ``per_example.npz`` (``ids`` (N,) str, ``intersect`` and
``union`` (N, C) int64); ``miou_percent`` recomputes IoUMetric's mIoU from such arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS

from bench.core.io import atomic_open


class PerImageIoUMetric(IoUMetric):
    """``IoUMetric`` keeping each image's areas and id (``per_image``: list of
    ``(id, intersect, union)``, numpy int64 (C,) arrays)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.per_image: list[tuple[str, np.ndarray, np.ndarray]] = []

    def process(self, data_batch, data_samples) -> None:
        start = len(self.results)
        super().process(data_batch, data_samples)
        # IoUMetric appends one (intersect, union, pred, label) tuple per image with a label
        with_label = [s for s in data_samples if not self.format_only]
        for i, sample in zip(range(start, len(self.results)), with_label):
            self.results[i] = (*self.results[i], Path(sample["img_path"]).stem)

    def compute_metrics(self, results: list) -> dict:
        self.per_image = [(r[4], _int64(r[0]), _int64(r[1])) for r in results]
        return super().compute_metrics([r[:4] for r in results])


def _int64(t) -> np.ndarray:
    # histc counts in float32: exact integers below 2**24 pixels per image and class
    return np.rint(t.cpu().double().numpy()).astype(np.int64)


def write_per_example(path: str | os.PathLike, per_image) -> Path:
    """``per_example.npz`` at ``path`` (atomically) from ``PerImageIoUMetric.per_image``."""
    ids = np.array([p[0] for p in per_image], dtype=str)
    intersect = np.stack([p[1] for p in per_image]).astype(np.int64)
    union = np.stack([p[2] for p in per_image]).astype(np.int64)
    with atomic_open(path, "wb") as f:
        np.savez(f, ids=ids, intersect=intersect, union=union)
    return Path(path).resolve()


def miou_percent(intersect: np.ndarray, union: np.ndarray) -> float:
    """IoUMetric's mIoU: per-class IoU over the summed areas, mean over the classes with a
    non-empty union, in percent rounded to 2 decimals; in float32, as IoUMetric computes it."""
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersect.sum(0).astype(np.float32) / union.sum(0).astype(np.float32)
    return round(float(np.round(np.nanmean(iou) * 100, 2)), 2)


if "PerImageIoUMetric" not in METRICS.module_dict:
    METRICS.register_module(module=PerImageIoUMetric)

__all__ = ["PerImageIoUMetric", "write_per_example", "miou_percent"]
