# Table 4 protocol ([Li21] ViT + FPN Mask R-CNN), ViT-L: mask_rcnn_vit_fpn_b_100ep.py with the large
# registry ViT, global blocks 5/11/17/23 (the 4 evenly spaced output blocks) and drop path 0.4
# ([vitdet] ViT-L value; [Li21]'s per-size value is not verified here; the mmdet engine uses the same).
from .mask_rcnn_vit_fpn_b_100ep import dataloader, lr_by_init, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.name = "mae_vit_large_patch16"
model.backbone.bottom_up.drop_path_rate = 0.4
model.backbone.bottom_up.global_blocks = (5, 11, 17, 23)

__all__ = ["dataloader", "lr_by_init", "lr_multiplier", "model", "optimizer", "train"]
