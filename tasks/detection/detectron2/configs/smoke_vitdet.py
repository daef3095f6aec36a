# CPU smoke run of the ViTDet protocol (mask_rcnn_vitdet_b_100ep.py, same modules and wiring),
# shrunk as the mmdet engine's tasks/detection/configs/smoke_vitdet.py is: the tiny registry ViT
# (random_vit_test_patch8: dim 32, depth 2, patch 8; window 4, block 1 global), 64 px images, 32-channel
# pyramid and heads, fewer sampled anchors / RoIs, 60 iterations at batch 2, lr 1e-3, fp32.
# Patch 8 halves every stride: the features are p1..p4 at 2/4/8/16 (+ p5 at 32), so the RPN, anchors
# and RoI poolers use those. Not a protocol: numbers from it only show the pipeline works.
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

image_size = 64
channels = 32
features = ["p1", "p2", "p3", "p4", "p5"]

model.backbone.update(
    name="random_vit_test_patch8",
    img_size=image_size,
    window_size=4,
    global_blocks=(1,),
    out_channels=channels,
    drop_path_rate=0.0,
    square_pad=image_size,
)
model.proposal_generator.in_features = features
model.proposal_generator.head.in_channels = channels
model.proposal_generator.anchor_generator.strides = [2, 4, 8, 16, 32]
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]  # 8 x stride, as mmdet's smoke
model.proposal_generator.batch_size_per_image = 64
model.proposal_generator.pre_nms_topk = (500, 500)
model.proposal_generator.post_nms_topk = (200, 200)
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_in_features = features[:4]
model.roi_heads.box_pooler.scales = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
model.roi_heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
model.roi_heads.box_head.conv_dims = [channels] * 4
model.roi_heads.box_head.fc_dims = [128]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)
# score threshold 0: an undertrained smoke model still returns its top 50 boxes per image
model.roi_heads.box_predictor.test_score_thresh = 0.0
model.roi_heads.box_predictor.test_topk_per_image = 50
model.roi_heads.mask_in_features = features[:4]
model.roi_heads.mask_pooler.scales = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [channels] * 4 + [channels]

train.amp.enabled = False
train.ddp.fp16_compression = False
train.max_iter = 60
train.checkpointer.period = 20
train.log_period = 10
train.device = "cpu"
lr_multiplier.scheduler.milestones = [53, 58]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 5 / train.max_iter
optimizer.lr = 1e-3
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=2, lr_decay_rate=0.7)

dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size),  # milder LSJ
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
dataloader.test.num_workers = 0

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
