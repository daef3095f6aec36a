# Variant B, ViT-L: [d2] projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py.
_base_ = ["./vitdet_maskrcnn_b.py"]

model = dict(
    backbone=dict(
        name="mae_vit_large_patch16",
        drop_path_rate=0.4,  # [d2] drop_path_rate = 0.4
        global_blocks=(5, 11, 17, 23),
    )
)  # [d2] "5, 11, 17, 23 for global attention"
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.8))  # [d2] lr_decay_rate=0.8
