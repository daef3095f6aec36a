# Variant A, ViT-L: as maskrcnn_vit_fpn_b.py with the ViT-L encoder (24 blocks, 1024 channels).
_base_ = ["./maskrcnn_vit_fpn_b.py"]

model = dict(
    backbone=dict(
        name="mae_vit_large_patch16",
        drop_path_rate=0.4,  # ViTDet's ViT-L value (mask_rcnn_vitdet_l_100ep.py), as the detectron2 engine:
        # [Li21]'s per-size value could not be checked (the 0.3 used before had no source)
        global_blocks=(5, 11, 17, 23),
    ),  # the 4 evenly spaced output blocks d/4 .. d of 24
    neck=dict(in_channels=[1024, 1024, 1024, 1024]),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24))
