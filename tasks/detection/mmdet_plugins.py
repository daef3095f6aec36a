"""The pieces mmdet 3.3 lacks for our protocols, registered in mmdet's registries on import
(``tasks/dense/mm_backbone.py`` registers the backbone ``RegistryViT`` itself).

* ``LN2d`` (norm): LayerNorm over the channels of an NCHW map, detectron2's ``LayerNorm`` (eps 1e-6),
  for ViTDet's "LN" box / mask heads (``norm_cfg=dict(type='LN2d')``; mmdet registers one only in its
  ViTDet project, which is not installed). Like detectron2's it is no ``nn.LayerNorm`` subclass, so
  the ViTDet weight-decay rule (``no_decay='vitdet'``) decays it in both engines, as ViTDet's code does.
* ``ViTDetFCNMaskHead`` (head): mmdet's ``FCNMaskHead`` with detectron2's predictor initialisation
  (``MaskRCNNConvUpsampleHead``: normal std 0.001, bias 0; mmdet's is Kaiming).
* ``LastLevelMaxPool`` (neck): ViTDet's p6. The simple feature pyramid (inside ``RegistryViT``
  with ``variant='simple'``) already gives p2-p5 at 256 channels; ViTDet adds p6 by max-pooling p5
  with kernel 1 and stride 2 (detectron2 ``LastLevelMaxPool``), and has no FPN. mmdet's
  ``FPN`` would add lateral and output convolutions that ViTDet does not have.
* ``BenchCocoMetric`` (metric): collects the model's predictions as COCO result dicts (category
  ids from the annotation file, masks as RLE) and scores them with OUR ``coco_evaluate``
  (pycocotools ``COCOeval``, ``tasks/detection/evaluation.py``). Being an mmengine ``BaseMetric``
  it runs in mmengine's test loop and gathers results across GPUs; it may share an ``Evaluator``
  with mmdet's ``CocoMetric`` (the tests do, to check both give the same numbers).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import METRICS, MODELS
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModule
from torch import nn

from tasks.detection.evaluation import coco_evaluate, instances_to_coco_results, write_detections_json


class LN2d(nn.Module):
    """detectron2's ``layers.LayerNorm``: normalise an NCHW map over its channels."""

    _abbr_ = "ln"  # mmcv's build_norm_layer names the layer by it

    def __init__(self, num_features: int, eps: float = 1e-6, requires_grad: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=requires_grad)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=requires_grad)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ViTDetFCNMaskHead(FCNMaskHead):
    """``FCNMaskHead`` whose mask predictor starts as detectron2's: normal(std 0.001), bias 0."""

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.conv_logits.weight, std=0.001)
        nn.init.constant_(self.conv_logits.bias, 0)


class LastLevelMaxPool(BaseModule):
    """Neck: ``(p2, .., p5) -> (p2, .., p5, p6)`` with ``p6 = max_pool2d(p5, 1, stride=2)``."""

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        inputs = tuple(inputs)
        return inputs + (F.max_pool2d(inputs[-1], kernel_size=1, stride=2, padding=0),)


class BenchCocoMetric(BaseMetric):
    """COCO box + mask AP of the predictions with ``coco_evaluate`` (percent; ``APbox``,
    ``APmask``, ...). ``cat_ids[label]`` is the COCO category id of model label ``label``: the
    ids of the annotation file's categories in file order, as ``CocoDataset`` numbers them.
    ``outfile``: also write the COCO-format detections there (atomically). Metrics that
    COCOeval reports as -1 (no ground truth of that size) come back as NaN."""

    default_prefix = "bench"

    def __init__(
        self,
        ann_file: str | None = None,
        cat_ids: Sequence[int] = (),
        outfile: str | None = None,
        iou_types: Sequence[str] = ("bbox", "segm"),
        collect_device: str = "cpu",
        prefix: str | None = None,
    ):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file, self.cat_ids = ann_file, [int(c) for c in cat_ids]
        self.outfile, self.iou_types = outfile, tuple(iou_types)
        self.detections: list[dict] = []  # the last evaluation's detections (rank 0)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["pred_instances"]
            labels = pred["labels"].cpu().numpy()
            masks = pred["masks"].cpu().numpy() if "masks" in pred else None
            cats = [self.cat_ids[int(k)] for k in labels]
            self.results.append(
                instances_to_coco_results(
                    sample["img_id"], pred["bboxes"].cpu().numpy(), pred["scores"].cpu().numpy(), cats, masks
                )
            )

    def compute_metrics(self, results: list) -> dict:
        dets = [d for per_image in results for d in per_image]
        metrics = coco_evaluate(self.ann_file, dets, self.iou_types)
        if self.outfile:
            write_detections_json(dets, self.outfile)
        self.detections = dets
        return metrics


def _register():
    if "LN2d" not in MODELS.module_dict:
        MODELS.register_module(name="LN2d", module=LN2d)
    if "ViTDetFCNMaskHead" not in MODELS.module_dict:
        MODELS.register_module(module=ViTDetFCNMaskHead)
    if "LastLevelMaxPool" not in MODELS.module_dict:
        MODELS.register_module(module=LastLevelMaxPool)
    if "BenchCocoMetric" not in METRICS.module_dict:
        METRICS.register_module(module=BenchCocoMetric)


_register()

__all__ = ["BenchCocoMetric", "LN2d", "LastLevelMaxPool", "ViTDetFCNMaskHead"]
