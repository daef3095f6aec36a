"""COCO instance detection / segmentation: data (``coco_data``) and evaluation (``evaluation``)."""

from tasks.detection.coco_data import (
    SHAPE_CATEGORIES,
    check_same_categories,
    coco_from_dict,
    make_coco_dataset,
    validate_coco,
)
from tasks.detection.evaluation import coco_evaluate, instances_to_coco_results, metric_names, write_detections_json

__all__ = [
    "SHAPE_CATEGORIES",
    "check_same_categories",
    "coco_evaluate",
    "coco_from_dict",
    "instances_to_coco_results",
    "make_coco_dataset",
    "metric_names",
    "validate_coco",
    "write_detections_json",
]
