# CPU smoke run of Variant A (maskrcnn_vit_fpn_b.py, same modules and wiring), shrunk to run in
# seconds: the tiny registry ViT (random_vit_test_patch8: dim 32, depth 2, patch 8), 64 px images,
# 32-channel FPN and heads, fewer sampled anchors / RoIs, a 60-iteration schedule at batch 2.
# Patch 8 halves every stride: the pyramid is at 2/4/8/16 (+ p6 at 32), so anchors and RoI
# extractors use those strides, and the RoI extractors' finest_scale is halved too (below).
# Not a protocol: numbers from it only show the pipeline works.
_base_ = ["./maskrcnn_vit_fpn_b.py"]

image_size = (64, 64)
channels = 32
strides = [2, 4, 8, 16]  # ViTPyramid.strides for patch 8
# A RoI of side s is pooled from the level detectron2's ROIPooler picks for these strides,
# floor(4 + log2(s / 224)) (stride 2 below 56 px, 4 below 112, ...): mmdet's rule
# floor(log2(s / finest_scale)) gives that with finest_scale 28, not the 56 meant for strides 4..32.
finest_scale = 28

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.5, 1.5), keep_ratio=True),  # milder LSJ
    dict(
        type="RandomCrop",
        crop_type="absolute_range",
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True,
    ),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
total_batch_size = 2
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline, filter_cfg=dict(filter_empty_gt=True, min_size=8)),
)
test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))

model = dict(
    data_preprocessor=dict(pad_size_divisor=image_size[0]),
    backbone=dict(
        name="random_vit_test_patch8", img_size=image_size[0], window_size=4, global_blocks=(1,), drop_path_rate=0.0
    ),
    neck=dict(in_channels=[32, 32, 32, 32], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels, anchor_generator=dict(strides=strides + [32])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels, featmap_strides=strides, finest_scale=finest_scale),
        bbox_head=dict(in_channels=channels, conv_out_channels=channels, fc_out_channels=128),
        mask_roi_extractor=dict(out_channels=channels, featmap_strides=strides, finest_scale=finest_scale),
        mask_head=dict(in_channels=channels, conv_out_channels=channels),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)), rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=64))
    ),
    # score_thr 0: an undertrained smoke model still returns its top 50 boxes per image, so AP and
    # the evaluation path see real detections (the protocols keep mmdet's / detectron2's 0.05).
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200), rcnn=dict(score_thr=0.0, max_per_img=50)),
)

max_iters = 60
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=5),
    dict(type="MultiStepLR", begin=0, end=max_iters, by_epoch=False, milestones=[53, 58], gamma=0.1),
]
optim_wrapper = dict(type="OptimWrapper", paramwise_cfg=dict(num_layers=2), optimizer=dict(lr=1e-3))
lr_by_init = dict(_delete_=True)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=20))
log_processor = dict(window_size=10)
