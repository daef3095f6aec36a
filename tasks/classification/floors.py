"""Raw-pixel floors of a classification table: scikit-learn classifiers on the images' pixels, trained
on the same labelled training split and scored on the same evaluation split as the transfer runs.
They cost seconds and tell a reader whether a learned representation beats the trivial one.

``raw_pixel_floors(dataset, root, seed=0, *, out_dir, ...) -> list[dict]`` returns two complete results
rows, written like every classification row (``result.json`` and ``per_example.npz`` per floor under
``out_dir``, so tables bootstrap their intervals over the same images):

* protocol ``logreg``, label ``raw-pixels-logreg``: ``LogisticRegression(max_iter=5000)`` (L2, C = 1,
  lbfgs) on pixels scaled to [0, 1];
* protocol ``knn``, label ``raw-pixels-1nn``: the 1-nearest neighbour (Euclidean) of each image.

Pixels: each image is converted to grey and box-downsampled to ``FLOOR_SIZE`` (8 px for the digits,
their scans' own resolution; 32 px otherwise), then flattened. Both rows have init and backbone
``raw_pixels``; ``extra['title']`` is the human name for tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.data import load_rgb
from bench.core.errors import BenchError
from bench.core.io import atomic_write_json
from bench.core.results import ResultsStore, make_row
from tasks.classification.datasets import DATASETS, heldout_for, read_splits
from tasks.classification.run import write_per_example

INIT = "raw_pixels"
FLOOR_SIZE = {"digits": 8}
DEFAULT_SIZE = 32
KNN_K = 1
FLOORS = {  # protocol -> (label, title)
    "logreg": ("raw-pixels-logreg", "raw pixels, logistic regression"),
    "knn": (f"raw-pixels-{KNN_K}nn", f"raw pixels, {KNN_K}-nearest neighbour"),
}


def pixels(split, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size * size) float32 grey pixels in [0, 1] and (N,) labels of a ``ClassificationSplit``."""
    rows = []
    for path, _ in split.samples:
        img = load_rgb(path)
        if not isinstance(img, Image.Image):  # a uint8 CHW tensor from torchvision's decoder
            img = Image.fromarray(np.asarray(img).transpose(1, 2, 0))
        grey = img.convert("L").resize((size, size), Image.BOX)
        rows.append(np.asarray(grey, dtype=np.float32).reshape(-1) / 255.0)
    return np.stack(rows), np.asarray(split.labels, dtype=np.int64)


def fit_floors(x_train, y_train, x_eval) -> dict[str, np.ndarray]:
    """protocol -> predicted labels of ``x_eval``, for each floor."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    logreg = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    knn = KNeighborsClassifier(n_neighbors=KNN_K).fit(x_train, y_train)
    return {"logreg": logreg.predict(x_eval), "knn": knn.predict(x_eval)}


def raw_pixel_floors(
    dataset: str,
    root: str | Path,
    seed: int = 0,
    *,
    out_dir: str | Path,
    suite: str = "adhoc",
    select: str | None = None,
    results: str | Path | None = None,
) -> list[dict]:
    """The floor rows of ``dataset`` at ``root`` (``select='heldout'``: trained on the training split
    minus its held-out part and scored on that part, as a selection run is). ``seed`` is recorded:
    both classifiers are deterministic. Each row goes to ``out_dir/<protocol>/`` and, when given,
    ``results``."""
    if dataset not in DATASETS:
        raise BenchError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if select not in (None, "heldout"):
        raise BenchError(f"select must be None or 'heldout', got {select!r:.60}")
    t0 = time.perf_counter()
    train, val = read_splits(dataset, root)
    if select == "heldout":
        train, val = heldout_for(dataset, train)
    size = FLOOR_SIZE.get(dataset, DEFAULT_SIZE)
    (x_train, y_train), (x_eval, y_eval) = pixels(train, size), pixels(val, size)
    predictions = fit_floors(x_train, y_train, x_eval)
    ids = [os.path.relpath(path, root) for path, _ in val.samples]
    rows = []
    for protocol, predicted in predictions.items():
        out = Path(out_dir) / protocol
        out.mkdir(parents=True, exist_ok=True)
        correct = predicted == y_eval
        # no ranking from these classifiers: top-5 is recorded as top-1 (a lower bound)
        per_example = write_per_example(out / "per_example.npz", ids, correct, correct)
        label, title = FLOORS[protocol]
        top1 = 100.0 * float(correct.mean())
        extra = {
            "title": title,
            "img_size": size,
            "n_train": len(train),
            "n_val": len(val),
            "num_classes": train.num_classes,
            "select": select,
            "per_example": str(per_example.resolve()),
            "out_dir": str(out),
            "floor": {"features": f"grey {size}x{size} pixels in [0, 1]", "k": KNN_K if protocol == "knn" else None},
        }
        if select == "heldout":
            extra["heldout_size"] = len(val)
        config = {"protocol": protocol, "size": size, "k": KNN_K, "dataset": dataset, "select": select}
        row = make_row(
            **{"task": dataset, "protocol": protocol, "init": INIT, "backbone": INIT, "seed": seed},
            metrics={"top1": top1, "top5": top1},
            **{"suite": suite, "config": config, "wall_time_s": time.perf_counter() - t0, "extra": extra},
            label=label,
        )
        atomic_write_json(row, out / "result.json", indent=1, sort_keys=True, default=str)
        rows.append(row)
    if results is not None:
        for row in rows:
            ResultsStore(results).append(row)
    return rows
