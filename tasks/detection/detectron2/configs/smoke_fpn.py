# CPU smoke run of the Table 4 protocol (mask_rcnn_vit_fpn_b_100ep.py, same modules and wiring),
# shrunk as the mmdet engine's tasks/detection/configs/smoke_fpn.py is: random_vit_test_patch8,
# 64 px, 32-channel FPN and heads, BN instead of SyncBN (one process), 60 iterations at batch 2.
# Features p1..p4 (+ p5 from the FPN) at strides 2..32. Not a protocol.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from tasks.detection.detectron2.backbone import last_level_max_pool

from .mask_rcnn_vit_fpn_b_100ep import dataloader, lr_multiplier, model, optimizer, train

image_size = 64
channels = 32
features = ["p1", "p2", "p3", "p4", "p5"]

model.backbone.bottom_up.update(
    name="random_vit_test_patch8",
    img_size=image_size,
    window_size=4,
    global_blocks=(1,),
    drop_path_rate=0.0,
    norm="BN",
    square_pad=image_size,
)
model.backbone.in_features = features[:4]
model.backbone.out_channels = channels
model.backbone.norm = "BN"
model.backbone.top_block = L(last_level_max_pool)(in_feature="p4")  # p5 = max-pool of the stride-16 map
model.proposal_generator.in_features = features
model.proposal_generator.head.in_channels = channels
model.proposal_generator.anchor_generator.strides = [2, 4, 8, 16, 32]
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.batch_size_per_image = 64
model.proposal_generator.pre_nms_topk = (500, 500)
model.proposal_generator.post_nms_topk = (200, 200)
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_in_features = features[:4]
model.roi_heads.box_pooler.scales = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
model.roi_heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
model.roi_heads.box_head.conv_dims = [channels] * 4
model.roi_heads.box_head.fc_dims = [128]
model.roi_heads.box_head.conv_norm = "BN"
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)
model.roi_heads.box_predictor.test_score_thresh = 0.0
model.roi_heads.box_predictor.test_topk_per_image = 50
model.roi_heads.mask_in_features = features[:4]
model.roi_heads.mask_pooler.scales = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [channels] * 5
model.roi_heads.mask_head.conv_norm = "BN"

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
lr_by_init = {}

dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
dataloader.test.num_workers = 0

__all__ = ["dataloader", "lr_by_init", "lr_multiplier", "model", "optimizer", "train"]
