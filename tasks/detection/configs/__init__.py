"""mmengine pure-Python configs for COCO Mask R-CNN transfer (read by ``tasks/detection/run.py``
with ``mmengine.Config.fromfile``; this file only makes the folder ship with the package).

* ``maskrcnn_vit_fpn_{b,l}.py`` — Variant A, the MAE paper's Table 4 protocol (Li et al. 2021,
  arXiv 2111.11429): 4 evenly spaced ViT blocks -> deconv/identity/max-pool adapter -> FPN (p2-p6),
  BN in FPN and heads, 2-conv RPN, 4conv1fc box head, windowed attention with 4 global blocks.
* ``vitdet_maskrcnn_{b,l}.py`` — Variant B, ViTDet (Li et al. 2022, arXiv 2203.16527): last
  block only, simple feature pyramid, LN in the heads.
* ``coco_lsj_100e.py`` — what both share: 1024x1024 large-scale jitter, 100-epoch schedule at
  batch 64, AdamW, runtime.
* ``smoke_{fpn,vitdet}.py`` — the same two models shrunk for a CPU smoke run (tiny ViT, 128 px).
"""
