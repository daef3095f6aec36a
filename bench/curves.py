"""Convergence plot of a suite's transfer runs: eval top-1 against epoch, one line per initialisation.

A classification task run with ``eval_every: N`` writes ``curve.jsonl`` in its cell's folder
(``<out>/work/<label>/<task>/seed<s>/``, one ``{"epoch", "eval_top1", ...}`` line every N epochs).
``plot_convergence`` draws them, one panel per task, the mean over seeds as a line and the seeds'
range as a band, so a reader sees whether the runs had plateaued when they stopped instead of taking
the epochs on trust. Search candidates (``.../search/...``) are left out: they are not reported runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bench.core.io import atomic_open

CELL_FILE = "cell.json"
CURVE_FILE = "curve.jsonl"


def read_curves(out_dir: Path) -> dict[str, dict[str, dict[int, list[tuple[float, float]]]]]:
    """``{task label: {init label: {seed: [(epoch, eval_top1), ...]}}}`` of a suite's output folder."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted((Path(out_dir) / "work").glob(f"*/*/seed*/{CURVE_FILE}")):
        label, task, seed_dir = path.parent.relative_to(Path(out_dir) / "work").parts
        points = []
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                points.append((float(entry["epoch"]), float(entry["eval_top1"])))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill; the rest of the curve still counts
        if points and seed_dir[4:].isdigit():
            found[task][label][int(seed_dir[4:])] = sorted(points)
    return {task: dict(labels) for task, labels in found.items()}


def _panel(ax, labels: dict, title: str) -> None:
    import numpy as np

    for label, seeds in sorted(labels.items()):
        epochs = sorted(set.intersection(*(set(e for e, _ in pts) for pts in seeds.values())))
        if not epochs:
            continue
        values = np.array([[dict(pts)[e] for e in epochs] for pts in seeds.values()])
        (line,) = ax.plot(epochs, values.mean(0), marker="o", markersize=3, label=f"{label} (n={len(values)})")
        if len(values) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval top-1 (%)")
    ax.grid(alpha=0.3)
    if len(labels) > 1:
        ax.legend(fontsize=7, loc="lower right")


def plot_convergence(out_dir: Path, name: str = "convergence.png") -> Path | None:
    """Write ``<out_dir>/<name>`` from the suite's curves; None when no cell wrote one."""
    curves = read_curves(out_dir)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.0), squeeze=False)
    for ax, (task, labels) in zip(axes[0], sorted(curves.items())):
        _panel(ax, labels, task)
    fig.suptitle("eval top-1 while training: mean over seeds, band = the seeds' range")
    fig.tight_layout()
    path = Path(out_dir) / name
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
