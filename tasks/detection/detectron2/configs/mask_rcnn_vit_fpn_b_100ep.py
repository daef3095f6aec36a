# The MAE paper's COCO protocol (He et al. 2021, Table 4 / Sec. A.3): the ViT + FPN Mask R-CNN of
# [Li21] (Li, Xie, Lin, He, Girshick, arXiv 2111.11429), ViT-B, 100 epochs, on detectron2 modules.
# The same protocol as the mmdet engine's tasks/detection/configs/maskrcnn_vit_fpn_b.py (whose
# comments give each value's source); here: [common] detectron2's model-zoo configs
# (common/models/mask_rcnn_fpn.py, train.py, optim.py, data/coco.py), the LSJ data, schedule and
# AMP of mask_rcnn_vitdet_b_100ep.py (the same as [Li21]: 1024 LSJ 0.1-2.0, batch 64, 184375 iters,
# steps at 88.9 % / 96.3 %, 250 warm-up iterations).
# Not verified here ([Li21] has no released code): the window size 14 and the per-initialisation
# drop path; the lr 8e-5 / 1.6e-4 by initialisation is quoted from [Li21] through the task brief.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from tasks.detection.detectron2.backbone import RegistryBackbone

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, optimizer, train

norm = "SyncBN"  # [Li21] synchronous BN in the adapter, FPN and heads ("upgraded modules")

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.pixel_mean = [123.675, 116.28, 103.53]  # ImageNet RGB, as the ViT was pretrained
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
model.backbone = L(FPN)(
    bottom_up=L(RegistryBackbone)(
        name="mae_vit_base_patch16",
        checkpoint=None,
        variant="fpn",  # [Li21] Fig. 1: blocks d/4, 2d/4, 3d/4, d -> x4 (2 deconv, BN+GELU), x2, x1, x0.5
        img_size=1024,
        drop_path_rate=0.1,
        use_rel_pos=True,  # [Li21] relative position bias (BEiT table), zero-init when not pretrained
        window_size=14,
        global_blocks=(2, 5, 8, 11),  # [Li21] global attention in the 4 output blocks
        norm=norm,
        square_pad=1024,  # every input padded to 1024 x 1024 (as the mmdet engine's pad_size_divisor)
    ),
    in_features=["p2", "p3", "p4", "p5"],
    out_channels=256,
    norm=norm,  # [Li21] (1) BN in the FPN
    top_block=L(LastLevelMaxPool)(),
)
model.proposal_generator.head.conv_dims = [-1, -1]  # [Li21] (2) two convolutions in the RPN head
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]  # [Li21] (3) 4conv1fc box head with BN
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = norm
model.roi_heads.mask_head.conv_norm = norm  # [Li21] (4) BN in the mask head

# [Li21]: AdamW, wd 0.1, no layer-wise lr decay; lr 8e-5 for pre-trained initialisations, 1.6e-4 for
# random init and MoCo v3 (lr_by_init, read by run_detectron2).
optimizer.lr = 8e-5
optimizer.params.lr_factor_func = None
lr_by_init = dict(random=1.6e-4, mocov3=1.6e-4)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train", "lr_by_init"]
