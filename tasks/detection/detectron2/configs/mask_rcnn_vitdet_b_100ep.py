# ViTDet Mask R-CNN, ViT-B, 100 epochs (Li, Mao, Girshick, He, arXiv 2203.16527) on a registry backbone.
# Sources: [vitdet] detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and
# [lsj] projects/ViTDet/configs/common/coco_loader_lsj.py at commit 02b5c4e (projects/ is not part
# of the installed package, so their few lines are repeated here; tests/test_detectron2.py checks
# this config equals the original, backbone aside, when the vendored source is present);
# [common] detectron2's own model-zoo configs (installed): common/models/mask_rcnn_vitdet.py,
# common/train.py, common/optim.py, common/data/coco.py, reused as they are.
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from tasks.detection.detectron2.backbone import RegistryBackbone

# [common] Mask R-CNN with ViTDet's heads: LN in the 4conv1fc box head and the mask head, 2-conv RPN,
# ImageNet RGB pixel mean/std. Its backbone (detectron2's ViT + SimpleFeaturePyramid) is replaced by
# the same network on a registry ViT: ViT-B, window 14, global blocks 2/5/8/11, decomposed relative
# position, drop path 0.1, 1024 input, scales (4, 2, 1, 0.5) -> 256 ch with LN, p6 by max-pool,
# square padding to 1024 (all [common] mask_rcnn_vitdet.py values).
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone = L(RegistryBackbone)(
    name="mae_vit_base_patch16",
    checkpoint=None,  # e.g. mae_pretrain_vit_base.pth; [vitdet] train.init_checkpoint
    variant="simple",
    img_size=1024,
    out_channels=256,
    drop_path_rate=0.1,
    use_rel_pos="decomposed",
    window_size=14,
    global_blocks=(2, 5, 8, 11),
    square_pad=1024,
)

# [common] train.py with [vitdet]'s AMP and fp16 gradient compression; 100 ep = 184375 iters at 64 img/iter
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.max_iter = 184375

# [vitdet] step schedule at 163889 / 177546, 250-iteration linear warm-up from 0.001
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# [common] optim.py AdamW (lr 1e-4, betas 0.9/0.999, wd 0.1, no wd on norms); [vitdet] layer-wise lr
# decay 0.7 over 12 blocks and no wd on pos_embed. Biases and relative position tables keep wd 0.1.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

# [common] coco.py data with [lsj] large-scale jitter: flip, resize 0.1-2.0 of 1024, 1024 crop, RGB,
# 64 images per iteration, boxes recomputed from masks after cropping; test: shorter side 1024.
image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
dataloader.train.mapper.recompute_boxes = True
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
