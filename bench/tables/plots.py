"""PNG plots of the finished runs: grouped bars, partial fine-tuning and mask-ratio curves."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.io import atomic_open
from bench.tables.aggregate import _deviations, _extra, _per_example_path, finished_runs
from bench.tables.names import _backbone_sort_key, _init_sort_key, _main_metrics, _task_sort_key, _title
from bench.tables.stats import BOOTSTRAP_SAMPLES, _Cell


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
