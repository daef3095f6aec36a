# ViTDet Mask R-CNN, ViT-L, 100 epochs. Source: [vitdet] detectron2
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py (commit 02b5c4e): ViT-B's config with
# embed 1024 / depth 24 / 16 heads (here: the registry name), drop path 0.4, global attention in
# blocks 5, 11, 17, 23, layer decay 0.8 over 24 blocks.
from functools import partial

from .mask_rcnn_vitdet_b_100ep import dataloader, get_vit_lr_decay_rate, lr_multiplier, model, optimizer, train

model.backbone.name = "mae_vit_large_patch16"  # e.g. mae_pretrain_vit_large.pth
model.backbone.drop_path_rate = 0.4
model.backbone.global_blocks = (5, 11, 17, 23)

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.8, num_layers=24)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
