"""Names and ordering of table rows and columns: backbone labels, sort keys, input sizes."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from bench.core.errors import BenchError
from tasks.registry import TASKS
from tasks.spec import PAPER_COLUMN_IMG_SIZE, TaskSpec

INIT_ORDER = ("random", "supervised", "mocov3", "beit", "mae")
DIGITS = 1  # shown digits, as in the paper

# timm arch -> the paper's column name (patch sizes as in the paper: B/16, L/16, H/14).
PAPER_BACKBONES = {"vit_base_patch16": "ViT-B", "vit_large_patch16": "ViT-L", "vit_huge_patch14": "ViT-H"}
SIZE_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}
SIZE_RANK = {"Ti": 1, "S": 2, "B": 3, "L": 4, "H": 5, "g": 6}


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
