"""The published numbers (results/reference/*.csv) and where each one sits in a table."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from backbones.provenance import reconstruction_target
from bench.core.errors import BenchError
from bench.tables.names import _num, _resolution
from tasks.registry import TASKS
from tasks.spec import PAPER_COLUMN_IMG_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "mae_paper.csv"
DEFAULT_PREV_BEST = REPO_ROOT / "results" / "reference" / "mae_paper_prev_best.csv"
# Table 7's reference rows are '<protocol>@<paper target>'; our MAE targets and the paper's rows
# (our tokens come from the suite's VQ tokenizer, the paper's from DALL-E's dVAE: a marked match).
TARGET_PROTOCOLS = {"pixel": "pixel_nonorm", "pixel_norm": "pixel_norm", "tokens": "dvae_token"}
REFERENCE_COLUMNS = ("task", "protocol", "k", "metric", "init", "backbone", "img_size", "value", "source")


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


def reference_protocol(protocol: str, init: str, provenance: dict | None) -> str:
    """The protocol whose published number a row sits beside: ``protocol`` itself, except for an MAE
    checkpoint pretrained with another target than the paper's normalised pixels, which sits beside
    Table 7's ``<protocol>@pixel_nonorm`` / ``<protocol>@dvae_token`` (where the paper has one)."""
    target = reconstruction_target(provenance) if init == "mae" else None
    if target in (None, "pixel_norm"):
        return protocol
    return f"{protocol}@{TARGET_PROTOCOLS[target]}"


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
