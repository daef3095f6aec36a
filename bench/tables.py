"""Paper-style tables and plots from the results store (``bench table``).

``build_tables`` turns finished runs into the layouts of He et al. 2021 (MAE), Section 5: Tables 3
(ImageNet), 4 (COCO), 5 (ADE20K), 6 (classification transfer), linear probing (Table 12) and partial
fine-tuning (Fig. 9). Which table a row goes into, its metrics and its column come from its task's
declaration (``tasks.registry``: ``TaskSpec.tables[protocol]``, ``metrics``, ``img_size``; the list
is in docs/adding_a_task.md).

Each table is a DataFrame: one row per initialisation (random, supervised, mocov3, beit, mae, then
others alphabetically) and MultiIndex columns ``(group, column, field)``. ``group`` is the metric
(or the dataset), ``column`` the backbone (ViT-B, ViT-L, ViT-H, ViT-H448, ...; ``k=<k>`` in the
partial table) and ``field`` one of ``mean`` and ``std`` (ddof=1, NaN when n=1) over seeds, ``n``,
``delta`` (mean minus the 'supervised' mean of the same cell column, NaN without a supervised row)
and ``published`` (the paper's number for that cell, from results/reference/mae_paper.csv).

A row's input size is ``extra['img_size']`` (the task's own ``img_size`` when absent). At the
task's own size (COCO 1024, ADE20K 512, classification 224) it is the paper's plain column
(``ViT-B``) and gets the paper's number; another size is a column of its own (``ViT-H448``,
``ViT-demo/8@64``). Only rows with status 'ok' count, and a run_id that was recorded twice counts
once (the last row). Runs of one init with several ``extra['mask_ratio']`` values are shown as
separate rows (``mae mask=0.75``) rather than averaged together.
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

FIELDS = ("mean", "std", "n", "delta", "published")
INIT_ORDER = ("random", "supervised", "mocov3", "beit", "mae")
BASELINE_INIT = "supervised"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "mae_paper.csv"
REFERENCE_COLUMNS = ("task", "protocol", "k", "metric", "init", "backbone", "img_size", "value",
                     "source")
FORMATS = ("csv", "tex", "md")

# timm arch -> the paper's column name (patch sizes as in the paper: B/16, L/16, H/14).
PAPER_BACKBONES = {"vit_base_patch16": "ViT-B", "vit_large_patch16": "ViT-L",
                   "vit_huge_patch14": "ViT-H"}
SIZE_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H",
                "giant": "g"}
SIZE_RANK = {"Ti": 1, "S": 2, "B": 3, "L": 4, "H": 5, "g": 6}


# ----------------------------------------------------------------------------------------------
# Names and ordering
# ----------------------------------------------------------------------------------------------

def _img_size(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
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
    """The published-numbers CSV (see results/reference/README.md) as a DataFrame."""
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
    for i, row in out.iterrows():
        line = i + 2  # header is line 1
        for column in ("value", "k", "img_size"):
            text = row[column].strip()
            if column != "value" and text == "":
                continue
            try:
                float(text)
            except ValueError:
                raise BenchError(f"{path} line {line}: column {column!r} must be a number, "
                                 f"got {text!r}") from None
    out["value"] = out["value"].astype(float)
    out["k"] = [float(t) if t.strip() else math.nan for t in out["k"]]
    out["img_size"] = [int(float(t)) if t.strip() else PAPER_COLUMN_IMG_SIZE
                       for t in out["img_size"]]
    return out


def _reference_key(task, protocol, metric, init, backbone, resolution, k) -> tuple:
    """Where a published number sits; results rows and reference rows build the same key."""
    k = None if math.isnan(_num(k)) else float(k)
    return (task, protocol, metric, init, backbone, resolution, k)


def _reference_lookup(reference: pd.DataFrame | None) -> dict[tuple, float]:
    if reference is None or reference.empty:
        return {}
    out = {}
    for r in reference.itertuples(index=False):
        spec = TASKS.get(r.task)
        resolution = (spec.reference_resolution(r.img_size) if spec is not None
                      else _resolution(r.task, r.img_size))
        key = _reference_key(r.task, r.protocol, r.metric, r.init, r.backbone, resolution, r.k)
        out[key] = float(r.value)
    return out


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------

def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with status 'ok', one per run_id (the last), with helper columns ``img_size``,
    ``resolution`` (None at the task's own input size), ``mask_ratio``, ``col`` (backbone label)
    and ``init_label``."""
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame()
    ok = df[df["status"] == "ok"].drop_duplicates("run_id", keep="last").copy()
    if ok.empty:
        return ok
    missing = pd.Series(None, index=ok.index, dtype=object)
    # object dtype keeps None as None (a float column would turn it into NaN)
    ok["img_size"] = pd.Series([_img_size(v) for v in ok.get("extra.img_size", missing)],
                               index=ok.index, dtype=object)
    ok["resolution"] = pd.Series([_resolution(t, s) for t, s in zip(ok["task"], ok["img_size"])],
                                 index=ok.index, dtype=object)
    ok["mask_ratio"] = [_num(v) for v in ok.get("extra.mask_ratio", missing)]
    ok["col"] = [backbone_label(b, s) for b, s in zip(ok["backbone"], ok["resolution"])]
    ok["k"] = pd.Series([None if math.isnan(_num(k)) else (int(k) if float(k).is_integer() else float(k)) for k in ok["k"]],
                        index=ok.index, dtype=object)
    # An init pre-trained at several mask ratios is several rows, not one averaged cell.
    several = {init for init, g in ok.groupby("init")
               if g["mask_ratio"].dropna().nunique() > 1}
    ok["init_label"] = [f"{init} mask={ratio:g}" if init in several and not math.isnan(ratio)
                        else init for init, ratio in zip(ok["init"], ok["mask_ratio"])]
    return ok


def _cells(runs: pd.DataFrame, table: Table) -> pd.DataFrame:
    """Long frame: one row per (init_label, group, column, run, metric) with the metric value,
    the sort keys of its group and column, and the key that locates its published number."""
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
            records.append({
                "init": r["init_label"], "group": group, "group_key": group_key,
                "column": column, "column_key": column_key, "value": value,
                "ref_key": _reference_key(r["task"], r["protocol"], metric, r["init"],
                                          r["backbone"], r["resolution"], r["k"]),
            })
    return pd.DataFrame.from_records(records)


def _aggregate(cells: pd.DataFrame, published: dict[tuple, float], title: str) -> pd.DataFrame:
    """Wide table: index init, columns (group, column, field)."""
    stats = cells.groupby(["init", "group", "column"]).agg(
        mean=("value", "mean"), std=("value", "std"), n=("value", "size"),
        ref_key=("ref_key", "first"))  # std: ddof=1, NaN for one run
    stats["published"] = [published.get(key, math.nan) for key in stats["ref_key"]]
    cell = stats.index.droplevel("init")
    if BASELINE_INIT in stats.index.get_level_values("init"):
        baseline = stats.loc[BASELINE_INIT, "mean"]
        stats["delta"] = stats["mean"].to_numpy() - baseline.reindex(cell).to_numpy()
    else:
        stats["delta"] = math.nan
    table = stats[list(FIELDS)].astype(float).unstack(["group", "column"])
    table = table.reorder_levels([1, 2, 0], axis=1)  # (field, group, column) -> (group, column, field)

    first = cells.groupby(["group", "column"]).agg(group_key=("group_key", "first"),
                                                   column_key=("column_key", "first"))
    group_keys = first.groupby(level="group")["group_key"].first()
    groups = sorted(group_keys.index, key=lambda g: (group_keys[g], g))
    order = [(g, c, f) for g in groups
             for c in sorted(first.loc[g].index, key=lambda c: (first.loc[(g, c), "column_key"], c))
             for f in FIELDS]
    table = table.reindex(index=sorted(table.index, key=_init_sort_key),
                          columns=pd.MultiIndex.from_tuples(order,
                                                            names=["group", "column", "field"]))
    table.attrs["title"] = title
    return table


def build_tables(df: pd.DataFrame,
                 reference: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The paper's table layouts from a results DataFrame (``ResultsStore.dataframe()``);
    tables without data are left out."""
    runs = finished_runs(df)
    if runs.empty:
        return {}
    published = _reference_lookup(reference)
    table_of = [TASKS[t].tables.get(p) if t in TASKS else None
                for t, p in zip(runs["task"], runs["protocol"])]
    tables = {}
    for table in TABLES:
        sel = runs[[t is table for t in table_of]]
        if sel.empty:
            continue
        cells = _cells(sel, table)
        if not cells.empty:
            tables[table.name] = _aggregate(cells, published, table.title)
    return tables


# ----------------------------------------------------------------------------------------------
# Writing: CSV (long, numeric), LaTeX (booktabs), Markdown
# ----------------------------------------------------------------------------------------------

def table_to_long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (init, group, column) with numeric mean/std/n/delta/published columns."""
    records = []
    for init in table.index:
        for group, column in _cell_columns(table):
            cell = {f: table.loc[init, (group, column, f)] for f in FIELDS}
            if math.isnan(cell["mean"]):
                continue
            records.append({"init": init, "group": group, "column": column, **cell})
    long = pd.DataFrame.from_records(records, columns=["init", "group", "column", *FIELDS])
    long["n"] = long["n"].astype(int)
    return long


def _cell_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    seen = []
    for group, column, _ in table.columns:
        if (group, column) not in seen:
            seen.append((group, column))
    return seen


def _has_published(table: pd.DataFrame, group: str, column: str) -> bool:
    return bool(table[(group, column, "published")].notna().any())


def _best(table: pd.DataFrame, group: str, column: str) -> float:
    means = table[(group, column, "mean")].dropna()
    return float(means.max()) if len(means) else math.nan


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain text: 'vit_base_patch16' -> 'vit\\_base\\_patch16'."""
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
             "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
             "^": r"\textasciicircum{}"}
    return "".join(table.get(ch, ch) for ch in str(text))


def _cell_text(table, init, group, column, digits, style) -> str:
    mean = table.loc[init, (group, column, "mean")]
    if math.isnan(mean):
        return ""
    std = table.loc[init, (group, column, "std")]
    n = int(table.loc[init, (group, column, "n")])
    delta = table.loc[init, (group, column, "delta")]
    best = mean == _best(table, group, column)
    show_delta = init != BASELINE_INIT and not math.isnan(delta)
    if style == "tex":
        text = rf"\textbf{{{_fmt(mean, digits)}}}" if best else _fmt(mean, digits)
        text += r" $\pm$ " + ("--" if math.isnan(std) else _fmt(std, digits))
        note = f"n={n}" + (rf", $\Delta${delta:+.{digits}f}" if show_delta else "")
        return text + r" {\scriptsize(" + note + ")}"
    text = f"**{_fmt(mean, digits)}**" if best else _fmt(mean, digits)
    text += " ± " + ("–" if math.isnan(std) else _fmt(std, digits))
    note = f"n={n}" + (f", Δ {delta:+.{digits}f}" if show_delta else "")
    return f"{text} ({note})"


def _published_text(table, init, group, column, digits) -> str:
    value = table.loc[init, (group, column, "published")]
    return "" if math.isnan(value) else _fmt(value, digits)


def to_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    cells = _cell_columns(table)
    header, align = ["init"], [":---"]
    for group, column in cells:
        label = f"{group} {column}"
        header.append(label)
        align.append("---:")
        if _has_published(table, group, column):
            header.append(f"{label} (paper)")
            align.append("---:")
    lines = [f"**{table.attrs.get('title', '')}** (mean ± std over seeds, n runs, "
             f"Δ vs. {BASELINE_INIT}; best mean in bold)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for init in table.index:
        row = [init.replace("|", "\\|")]
        for group, column in cells:
            row.append(_cell_text(table, init, group, column, digits, "md"))
            if _has_published(table, group, column):
                row.append(_published_text(table, init, group, column, digits))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, digits: int = 1) -> str:
    cells = _cell_columns(table)
    spans = {}  # group -> number of tabular columns
    for group, column in cells:
        spans[group] = spans.get(group, 0) + 1 + _has_published(table, group, column)
    ncols = 1 + sum(spans.values())
    lines = [f"% {latex_escape(table.attrs.get('title', ''))}",
             f"% mean $\\pm$ std over seeds (n runs, $\\Delta$ vs. {BASELINE_INIT}); "
             "best mean per column in bold; 'paper' = He et al. 2021",
             r"\begin{tabular}{l" + "c" * (ncols - 1) + "}", r"\toprule"]
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
                row.append(_published_text(table, init, group, column, digits))
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike,
                 formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write every table as ``<out_dir>/<name>.<fmt>`` (each file atomically); return the paths."""
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


def _stats(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def plot_tables(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots from finished runs: grouped bars per (task, protocol), partial fine-tuning curves
    (top1 vs. k, one line per init, like MAE Fig. 9) and mask-ratio curves when runs carry
    several ``extra['mask_ratio']`` values. Plots without data are skipped."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    runs = finished_runs(df)
    out_dir = Path(out_dir)
    written: list[Path] = []
    if runs.empty:
        return written

    # Grouped bars: init on x, one bar per backbone, error bar = std over seeds.
    bars = runs[runs["protocol"] != "partial"]
    for (task, protocol), sel in sorted(bars.groupby(["task", "protocol"]),
                                        key=lambda kv: (_task_sort_key(kv[0][0]), kv[0][1])):
        metrics = [m for m in _main_metrics(task) if m in sel.columns and sel[m].notna().any()]
        if not metrics:
            continue
        inits = sorted(sel["init_label"].unique(), key=_init_sort_key)
        cols = sorted(sel[["backbone", "img_size", "col"]].drop_duplicates("col").itertuples(),
                      key=lambda r: _backbone_sort_key(r.backbone, r.img_size))
        fig = Figure(figsize=(1.2 + 0.9 * len(inits) * len(metrics) + 0.3 * len(cols), 3.6))
        width = 0.8 / len(cols)
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), i + 1)
            for j, c in enumerate(cols):
                means, stds = [], []
                for init in inits:
                    cell = sel[(sel["init_label"] == init) & (sel["col"] == c.col)][metric]
                    mean, std = _stats(cell) if cell.notna().any() else (math.nan, 0.0)
                    means.append(mean)
                    stds.append(std)
                x = np.arange(len(inits)) + (j - (len(cols) - 1) / 2) * width
                ax.bar(x, means, width, yerr=stds, capsize=3, label=c.col)
            ax.set_xticks(np.arange(len(inits)), inits, rotation=30, ha="right")
            ax.set_ylabel(metric)
            ax.set_title(f"{_title(task)} {protocol}: {metric}")
            ax.legend(fontsize=7)
        written.append(_save_figure(fig, out_dir / f"bars_{_slug(task)}_{_slug(protocol)}.png"))

    # Partial fine-tuning: top1 vs. k, one line per init.
    partial = runs[(runs["protocol"] == "partial") & runs["k"].notna()]
    if "top1" in partial.columns:
        partial = partial[partial["top1"].notna()]
        for (task, col), sel in partial.groupby(["task", "col"]):
            fig = Figure(figsize=(5, 3.6))
            ax = fig.add_subplot(1, 1, 1)
            for init in sorted(sel["init_label"].unique(), key=_init_sort_key):
                points = sorted(sel[sel["init_label"] == init].groupby("k")["top1"])
                ks = [k for k, _ in points]
                stats = [_stats(v) for _, v in points]
                ax.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                            capsize=3, label=init)
            ax.set_xticks(sorted(sel["k"].unique()))
            ax.set_xlabel("# fine-tuned blocks k (0 = linear probe)")
            ax.set_ylabel("top1")
            ax.set_title(f"Partial fine-tuning, {_title(task)} {col}")
            ax.legend(fontsize=7)
            written.append(_save_figure(fig, out_dir / f"partial_{_slug(task)}_{_slug(col)}.png"))

    # Mask ratio: metric vs. extra['mask_ratio'], one line per (protocol, backbone, init).
    masked = runs[runs["mask_ratio"].notna()]
    for task, sel in masked.groupby("task"):
        metric = _main_metrics(task)[0]
        if metric not in sel.columns:
            continue
        sel = sel[sel[metric].notna()]
        lines = [(key, g) for key, g in sel.groupby(["protocol", "col", "init"])
                 if g["mask_ratio"].nunique() > 1]
        if not lines:
            continue
        fig = Figure(figsize=(5, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        for (protocol, col, init), g in lines:
            points = sorted(g.groupby("mask_ratio")[metric])
            stats = [_stats(v) for _, v in points]
            ax.errorbar([100 * r for r, _ in points], [m for m, _ in stats],
                        yerr=[s for _, s in stats], marker="o", capsize=3,
                        label=f"{init} {col} {protocol}")
        ax.set_xlabel("masking ratio (%)")
        ax.set_ylabel(metric)
        ax.set_title(f"Masking ratio, {_title(task)}")
        ax.legend(fontsize=7)
        written.append(_save_figure(fig, out_dir / f"mask_ratio_{_slug(task)}.png"))
    return written


# ----------------------------------------------------------------------------------------------
# Top level and CLI hooks
# ----------------------------------------------------------------------------------------------

def run_table(results_path: str | os.PathLike, out_dir: str | os.PathLike,
              suite: str | None = None, task: str | None = None,
              reference_csv: str | os.PathLike | None = DEFAULT_REFERENCE,
              formats: tuple[str, ...] = FORMATS, plots: bool = True) -> list[Path]:
    """Tables (and plots) for the runs in ``results_path`` matching ``suite``/``task``; returns
    the written paths. ``reference_csv=None`` leaves the published column empty."""
    store = ResultsStore(results_path)
    if not store.path.is_file():
        raise BenchError(f"{store.path}: results file not found (option --results)")
    filters = {key: value for key, value in (("suite", suite), ("task", task)) if value}
    described = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"
    df = store.dataframe(**filters)
    if df.empty:
        raise BenchError(f"{store.path}: no runs match {described}")
    if not (df["status"] == "ok").any():
        raise BenchError(f"{store.path}: {len(df)} runs match {described} but none finished "
                         "with status 'ok'")
    if reference_csv is not None and Path(reference_csv) == DEFAULT_REFERENCE \
            and not DEFAULT_REFERENCE.is_file():  # e.g. installed without the results/ folder
        warnings.warn(f"{DEFAULT_REFERENCE} not found: tables show no published numbers",
                      stacklevel=2)
        reference_csv = None
    reference = load_reference(reference_csv) if reference_csv is not None else None
    tables = build_tables(df, reference)
    if not tables:
        raise BenchError(f"{store.path}: runs matching {described} fit none of the tables "
                         f"(tasks {sorted(df['task'].unique())}, protocols "
                         f"{sorted(df['protocol'].unique())})")
    written = write_tables(tables, out_dir, formats)
    if plots:
        written += plot_tables(df, out_dir)
    return written


def add_table_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench table``."""
    parser.add_argument("--results", required=True, metavar="PATH",
                        help="results store: a runs.jsonl file or the directory holding it")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--suite", default=None, help="only runs of this suite")
    parser.add_argument("--task", default=None, help="only runs of this task (e.g. coco)")
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE), metavar="CSV",
                        help="published numbers to show side by side ('none' to omit)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated subset of csv,tex,md")
    parser.add_argument("--no-plots", action="store_true", help="tables only, no PNG plots")
    return parser


def table_main(args: argparse.Namespace) -> int:
    """Run ``bench table`` with parsed arguments; prints the written paths."""
    reference = None if str(args.reference).lower() == "none" else args.reference
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    paths = run_table(args.results, args.out, suite=args.suite, task=args.task,
                      reference_csv=reference, formats=formats, plots=not args.no_plots)
    for path in paths:
        print(path)
    return 0
