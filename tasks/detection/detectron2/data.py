"""COCO splits as detectron2 datasets, named by what they hold, so a saved LazyConfig rebuilds its own
data loaders in another process (detectron2's ``lazyconfig_train_net.py --eval-only``).

In a LazyConfig: ``dataloader.test.dataset = L(registered_coco)(names=..., json_file=..., image_root=...)``;
``dataloader.evaluator``'s ``dataset_name`` interpolates ``names`` as detectron2's common config does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances


def split_name(split: str, json_file, image_root) -> str:
    """A stable dataset name for these files: ``bench_coco_<split>_<12 hex of their paths>``."""
    key = f"{Path(json_file).resolve()}\0{Path(image_root).resolve()}"
    return f"bench_coco_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def register(names: str, json_file, image_root) -> str:
    """Register ``names`` for these files (again when it names other files)."""
    json_file, image_root = str(json_file), str(image_root)
    if names in DatasetCatalog.list():
        meta = MetadataCatalog.get(names)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return names
        DatasetCatalog.remove(names)
        MetadataCatalog.remove(names)
    register_coco_instances(names, {}, json_file, image_root)
    return names


def registered_coco(names: str, json_file: str, image_root: str, filter_empty: bool = True) -> list[dict]:
    """detectron2's dataset dicts of a COCO split, registered first (``get_detection_dataset_dicts``)."""
    register(names, json_file, image_root)
    return get_detection_dataset_dicts(names, filter_empty=filter_empty)


def mask_format(ann_file) -> str:
    """'bitmask' when a non-crowd instance has an RLE segmentation (detectron2's polygon masks
    cannot hold it), else 'polygon' (detectron2's default, COCO's own annotations)."""
    data = json.loads(Path(ann_file).read_text())
    rle = any(isinstance(a.get("segmentation"), dict) and not a.get("iscrowd", 0) for a in data["annotations"])
    return "bitmask" if rle else "polygon"
