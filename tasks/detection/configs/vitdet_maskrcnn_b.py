# Variant B, ViT-B: ViTDet (Li, Mao, Girshick, He, arXiv 2203.16527), as in detectron2
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py + common/models/mask_rcnn_vitdet.py
# [d2], and mmdet projects/ViTDet/configs/vitdet_mask-rcnn_vit-b-mae_lsj-100e.py [mmdet].
# Same Mask R-CNN as Variant A except: simple feature pyramid from the last block only (no FPN),
# LN instead of BN in the heads, layer-wise lr decay 0.7, lr 1e-4.
_base_ = ["./maskrcnn_vit_fpn_b.py"]

protocol = "maskrcnn_vitdet"
variant = "vitdet"
norm_cfg = dict(type="LN2d", requires_grad=True)  # [d2] conv_norm="LN"; [mmdet] LN2d

model = dict(
    backbone=dict(
        variant="simple",  # [d2] SimpleFeaturePyramid: last block -> scales 4, 2, 1, 1/2,
        out_channels=256,  # each followed by 1x1 conv + LN, 3x3 conv + LN to 256 channels
        drop_path_rate=0.1,  # [d2] dp = 0.1 (ViT-B)
        use_rel_pos="decomposed",  # [d2] use_rel_pos=True: decomposed rel_pos_h / rel_pos_w (MViTv2),
        # zero-init when the checkpoint has none
        window_size=14,  # [d2] window_size=14
        global_blocks=(2, 5, 8, 11),
    ),  # [d2] window_block_indexes = all but 2, 5, 8, 11
    # p6 = max-pool(kernel 1, stride 2) of the stride-32 map ([d2] top_block=LastLevelMaxPool());
    # the SFP already outputs 256 channels, so no FPN.
    neck=dict(_delete_=True, type="LastLevelMaxPool"),
    roi_head=dict(
        bbox_head=dict(norm_cfg=norm_cfg),  # [d2] box_head.conv_norm = "LN", 4conv1fc kept
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)  # [d2] mask_head.conv_norm = "LN"
# [d2]: AdamW lr 1e-4, wd 0.1, layer decay 0.7 over 12 blocks (get_vit_lr_decay_rate); weight decay off
# for norm layers and pos_embed only (weight_decay_norm=0.0, overrides={"pos_embed": {"weight_decay": 0.0}}):
# no_decay='vitdet' (tasks/dense/mm_backbone.py no_decay_names; biases and rel_pos_h/w decay, as in [d2]).
optim_wrapper = dict(
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.7, no_decay="vitdet"), optimizer=dict(lr=1e-4)
)
lr_by_init = dict(_delete_=True)  # ViTDet reports MAE initialisation only; one lr for every init
