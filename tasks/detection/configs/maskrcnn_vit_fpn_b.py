# Variant A, ViT-B: the MAE paper's COCO protocol (He et al. 2021, Table 4 / Sec. A.3), i.e. the
# ViT + FPN Mask R-CNN of [Li21] (Li et al., arXiv 2111.11429), on mmdet 3.3 modules.
# Source key as in coco_lsj_100e.py; [tv] = torchvision maskrcnn_resnet50_fpn_v2, which implements
# [Li21]'s "upgraded modules" (BN in FPN and heads, 2-conv RPN, 4conv1fc box head).
# What run.py sets from the command line: backbone name / checkpoint, FPN in_channels (= embed dim),
# num_layers (= depth), num_classes, the lr for the initialisation (lr_by_init).
_base_ = ["./coco_lsj_100e.py"]

protocol = "maskrcnn_fpn"  # results-row protocol
variant = "fpn"
norm_cfg = dict(type="SyncBN", requires_grad=True)  # [Li21] synchronous BN wherever BN is used
# [ViTDet] initialises the FPN convs and the box head's fc with detectron2's c2_xavier_fill
# (kaiming_uniform_(a=1): bound sqrt(3 / fan_in), bias 0); mmdet's defaults are Xavier-uniform.
C2_XAVIER_FILL = dict(type="Kaiming", a=1, mode="fan_in", nonlinearity="leaky_relu", distribution="uniform", bias=0)

model = dict(
    type="MaskRCNN",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],  # ImageNet RGB (MAE/DeiT/BEiT/MoCo v3)
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=1024,
    ),  # = image_size: every input padded to 1024x1024, train and test
    backbone=dict(
        type="RegistryViT",
        name="mae_vit_base_patch16",
        checkpoint=None,
        img_size=1024,  # pos_embed resampled to the 64x64 grid [Li21]
        variant="fpn",  # [Li21] Fig. 1: blocks d/4, 2d/4, 3d/4, d -> 4x (2 deconv, BN+GELU), 2x, 1x, 0.5x
        norm="SyncBN",  # the norm between the two 4x deconvolutions [Li21]
        drop_path_rate=0.1,  # ViT-B value attributed to [Li21]: not re-checked (see the optimiser note below)
        use_rel_pos=True,  # [Li21] relative position bias in every block, zero-init when not pretrained
        window_size=14,  # [Li21] windowed attention in most blocks; 14 = the 224/16 pre-training grid, as
        # in [ViTDet]'s ViT-B model config (Li21's own value not re-checked)
        global_blocks=(2, 5, 8, 11),
    ),  # [Li21] global attention in the 4 evenly spaced output blocks
    neck=dict(
        type="FPN",
        in_channels=[768, 768, 768, 768],  # adapter keeps embed_dim channels
        out_channels=256,
        num_outs=5,  # p2-p6, p6 = max-pool of p5 (detectron2 LastLevelMaxPool)
        norm_cfg=norm_cfg,
        init_cfg=dict(C2_XAVIER_FILL, layer="Conv2d"),
    ),  # [Li21] (1) BN after the FPN convolutions [tv]
    rpn_head=dict(
        type="RPNHead",
        in_channels=256,
        feat_channels=256,
        num_convs=2,  # [Li21] (2) two conv layers in the RPN [tv conv_depth=2]
        anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    ),
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        bbox_head=dict(
            type="Shared4Conv1FCBBoxHead",  # [Li21] (3) 4 convs with BN + 1 fc [tv FastRCNNConvFCHead]
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,  # run.py: number of categories in the annotation file
            norm_cfg=norm_cfg,
            init_cfg=[  # mmdet's own predictor inits (= detectron2's), the fc as [ViTDet]'s
                dict(type="Normal", std=0.01, override=dict(name="fc_cls")),
                dict(type="Normal", std=0.001, override=dict(name="fc_reg")),
                dict(C2_XAVIER_FILL, override=dict(name="shared_fcs")),
            ],
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2]
            ),
            reg_class_agnostic=False,
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        mask_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        mask_head=dict(
            type="ViTDetFCNMaskHead",  # FCNMaskHead, predictor init normal(0.001) as detectron2's
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            norm_cfg=norm_cfg,  # [Li21] (4) BN after the mask head convolutions [tv MaskRCNNHeads]
            loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0),
        ),
    ),
    # Standard Mask R-CNN training/testing settings (mmdet configs/_base_/models/mask-rcnn_r50_fpn.py,
    # = detectron2 defaults).
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type="MaxIoUAssigner",
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                # every anchor tied for a box's best IoU is positive, however low that IoU: the
                # matcher of ViTDet / detectron2 (Matcher allow_low_quality_matches, no minimum)
                min_pos_iou=0.0,
                match_low_quality=True,
                ignore_iof_thr=-1,
            ),
            sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(
                type="MaxIoUAssigner",
                pos_iou_thr=0.5,
                neg_iou_thr=0.5,
                min_pos_iou=0.5,
                match_low_quality=False,  # detectron2's RoI matcher: no low-quality matches
                ignore_iof_thr=-1,
            ),
            sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False,
        ),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5),
    ),
)

# Optimiser: AdamW (0.9, 0.999), wd 0.1 [ViTDet]. The MAE paper (App. A.3) "search[es] for
# hyper-parameters for each entry in Table 4 (including all competitors) ... the learning rate, weight
# decay, drop path rate, and fine-tuning epochs", and refers to [Li21] (its ref. [35], then "in
# preparation") for the values; no per-entry table or public config of [Li21] was found for this.
# lr 8e-5 (pre-trained inits) / 1.6e-4 (random init, MoCo v3) at batch 64, drop path 0.1 (B) / 0.3 (L)
# and one 100-epoch schedule for every entry are values attributed to [Li21]'s tuning that could not be
# re-checked against a source (docs/protocol.md). Layer-wise lr decay: none (1.0) here; ViTDet
# introduced 0.7 (B) / 0.8 (L).
# Weight decay: ViTDet's rule (detectron2 common/optim.py, the only released code of the recipe; [Li21]
# gives none): off for norm layers and pos_embed, on for biases and relative position tables.
optim_wrapper = dict(
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=1.0, no_decay="vitdet"), optimizer=dict(lr=8e-5)
)
lr_by_init = dict(random=1.6e-4, mocov3=1.6e-4)  # read by run.py; other inits use optimizer.lr (not re-checked)
