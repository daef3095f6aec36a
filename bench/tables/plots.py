"""PNG plots of the finished runs: grouped bars, partial fine-tuning and mask-ratio curves."""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.io import atomic_open
from bench.tables.names import _backbone_sort_key, _init_sort_key, _main_metrics, _task_sort_key, _title
from bench.tables.rows import _deviations, _extra, _per_example_path, finished_runs
from bench.tables.stats import BOOTSTRAP_SAMPLES, _Cell

FOOTER_CHARS_PER_INCH = 17  # 7-pt text: about this many characters per inch of figure width
FLOOR_STYLES = [("tab:red", ":"), ("tab:purple", "-."), ("tab:brown", (0, (5, 2)))]


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
    records = {  # one run per seed, the last recorded, as in the tables
        int(r["seed"]): {
            "seed": int(r["seed"]),
            "value": float(r[metric]),
            "per_example": _per_example_path(r, base_dir),
        }
        for r in sel.to_dict("records")
    }
    cell = _Cell(list(records.values()), metric, samples)
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


def _chance(ax, sel: pd.DataFrame) -> None:
    """A dashed line at 100 / number of classes where classification rows record ``num_classes``."""
    sizes = {_extra(r).get("num_classes") for r in sel.to_dict("records")} - {None}
    if len(sizes) == 1:
        size = sizes.pop()
        if isinstance(size, int) and not isinstance(size, bool) and size > 1:
            ax.axhline(100.0 / size, color="0.4", linestyle="--", linewidth=1, label="chance")


def _legend(ax) -> None:
    """A legend only when it tells two or more things apart."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > 1:
        ax.legend(fontsize=7)


def _footer(fig, sel: pd.DataFrame) -> None:
    """Under the axes and their tick labels, wrapped to the figure's width: what the error bars
    are and the deviations from the paper's protocol."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    width = max(40, int(fig.get_figwidth() * FOOTER_CHARS_PER_INCH))
    lines = [
        "error bars: the tables' 95 % intervals (one run: bootstrap over evaluation images; several seeds: "
        "bootstrap over seeds \u00d7 images, or a t-interval without per-image results; none: no interval)"
    ]
    phrases = list(dict.fromkeys(p for r in sel.to_dict("records") for p in _deviations(r)))
    if phrases:
        lines.append("Not the paper's protocol: " + "; ".join(phrases))
    text = "\n".join(textwrap.fill(line, width) for line in lines)
    for plain, sign in (("!=", "\u2260"), ("<=", "\u2264"), (">=", "\u2265")):  # typeset, as in LaTeX
        text = text.replace(plain, sign)
    renderer = FigureCanvasAgg(fig).get_renderer()  # where the rotated tick labels end
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes) / fig.bbox.height
    left = min(ax.get_position().x0 for ax in fig.axes)
    fig.text(left, bottom - 0.02, text, fontsize=7, ha="left", va="top", color="0.3")


def _floor_lines(ax, floors: pd.DataFrame, metric: str, base_dir, samples) -> None:
    """Each raw-pixel floor of the task as a dotted line at its mean."""
    if floors.empty or metric not in floors.columns:
        return
    for (label, g), style in zip(floors.groupby("init_label"), FLOOR_STYLES * len(floors)):
        mean = _interval(g, metric, base_dir, samples)[0]
        if not math.isnan(mean):
            ax.axhline(mean, color=style[0], linestyle=style[1], linewidth=1.2, label=label)


def _bars(task, protocol, sel, floors, out_dir, base, samples):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    metrics = [m for m in _main_metrics(task) if m in sel.columns and sel[m].notna().any()]
    if not metrics:
        return None
    inits = sorted(sel["init_label"].unique(), key=_init_sort_key)
    cols = sorted(
        sel[["backbone", "img_size", "col"]].drop_duplicates("col").itertuples(),
        key=lambda r: _backbone_sort_key(r.backbone, r.img_size),
    )
    fig = Figure(figsize=(2.0 + (0.9 * len(inits) + 0.3 * len(cols)) * len(metrics), 3.8))
    width = 0.8 / len(cols)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for j, c in enumerate(cols):
            stats = [
                _interval(sel[(sel["init_label"] == init) & (sel["col"] == c.col)], metric, base, samples)
                for init in inits
            ]
            x = np.arange(len(inits)) + (j - (len(cols) - 1) / 2) * width
            ax.bar(x, [s[0] for s in stats], width, label=c.col if len(cols) > 1 else "_nolegend_")
            _errorbars(ax, x, stats, fmt="none", ecolor="black", elinewidth=1)
        _chance(ax, sel)
        _floor_lines(ax, floors, metric, base, samples)
        ax.set_xticks(np.arange(len(inits)), inits, rotation=30, ha="right")
        ax.set_ylabel(_unit(metric))
        ax.set_title(metric if len(cols) > 1 else f"{metric}, {cols[0].col}", fontsize=10)
        _legend(ax)
    fig.suptitle(f"{_title(task)}, {protocol}")
    fig.subplots_adjust(wspace=0.35)
    _footer(fig, sel)
    return _save_figure(fig, out_dir / f"bars_{_slug(task)}_{_slug(protocol)}.png")


def _curve(sel, x_key, metric, base, samples, label_of, x_scale=1.0):
    """One line per group of ``sel`` (``label_of`` names it): metric against ``x_key``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for key, g in sel:
        xs = sorted(g[x_key].unique())
        stats = [_interval(g[g[x_key] == x], metric, base, samples) for x in xs]
        x = [x_scale * v for v in xs]
        line = ax.plot(x, [s[0] for s in stats], marker="o", label=label_of(key))[0]
        _errorbars(ax, x, stats, fmt="none", ecolor=line.get_color())
    ax.set_ylabel(_unit(metric))
    return fig, ax


def _partial_plots(runs, out_dir, base, samples) -> list[Path]:
    """Partial fine-tuning: top1 against k, one line per label."""
    partial = runs[(runs["protocol"] == "partial") & runs["k"].notna()]
    if "top1" not in partial.columns:
        return []
    written = []
    partial = partial[partial["top1"].notna()]
    for (task, col), sel in partial.groupby(["task", "col"]):
        groups = sorted(sel.groupby("init_label"), key=lambda kv: _init_sort_key(kv[0]))
        fig, ax = _curve(groups, "k", "top1", base, samples, str)
        _chance(ax, sel)
        ax.set_xticks(sorted(sel["k"].unique()))
        ax.set_xlabel("# fine-tuned blocks k (0 = linear probe)")
        ax.set_title(f"Partial fine-tuning, {_title(task)} {col}")
        _legend(ax)
        _footer(fig, sel)
        written.append(_save_figure(fig, out_dir / f"partial_{_slug(task)}_{_slug(col)}.png"))
    return written


def _mask_ratio_plots(runs, out_dir, base, samples) -> list[Path]:
    """Metric against extra['mask_ratio'], one line per (protocol, backbone, label)."""
    written = []
    for task, sel in runs[runs["mask_ratio"].notna()].groupby("task"):
        metric = _main_metrics(task)[0]
        if metric not in sel.columns:
            continue
        sel = sel[sel[metric].notna()]
        lines = [(key, g) for key, g in sel.groupby(["protocol", "col", "init"]) if g["mask_ratio"].nunique() > 1]
        if not lines:
            continue
        fig, ax = _curve(lines, "mask_ratio", metric, base, samples, lambda k: f"{k[2]} {k[1]} {k[0]}", 100.0)
        _chance(ax, sel)
        ax.set_xlabel("masking ratio (%)")
        ax.set_title(f"Masking ratio, {_title(task)}")
        _legend(ax)
        _footer(fig, sel)
        written.append(_save_figure(fig, out_dir / f"mask_ratio_{_slug(task)}.png"))
    return written


def plot_tables(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> list[Path]:
    """PNG plots from finished runs: grouped bars per (task, protocol) with the raw-pixel floors
    as dotted lines, partial fine-tuning curves (top1 vs. k, one line per label, like MAE Fig. 9)
    and mask-ratio curves when runs carry several ``extra['mask_ratio']`` values. Error bars are
    the tables' 95 % intervals (none where a cell has none); a dashed line marks chance where rows
    record ``extra['num_classes']``; a note under the plot lists the deviations from the paper's
    protocol. Plots without data are skipped."""
    runs = finished_runs(df)
    out_dir = Path(out_dir)
    base = None if base_dir is None else Path(base_dir)
    if runs.empty:
        return []
    written: list[Path] = []
    learned, floors = runs[~runs["floor"]], runs[runs["floor"]]
    bars = learned[learned["protocol"] != "partial"]
    for (task, protocol), sel in sorted(
        bars.groupby(["task", "protocol"]), key=lambda kv: (_task_sort_key(kv[0][0]), kv[0][1])
    ):
        path = _bars(task, protocol, sel, floors[floors["task"] == task], out_dir, base, samples)
        written += [path] if path is not None else []
    return (
        written + _partial_plots(learned, out_dir, base, samples) + _mask_ratio_plots(learned, out_dir, base, samples)
    )
