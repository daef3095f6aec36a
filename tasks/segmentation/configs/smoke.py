# CPU smoke test of the ADE20K UperNet pipeline: the paper protocol (paper_vit_base.py) shrunk to
# 64-pixel crops, a tiny decode head, batch 4 and 30 iterations, for the generated ADE20K-layout
# data (tasks/segmentation/ade_data.py: make_ade20k_dataset(..., image_size=(64, 64))) and tiny
# backbones such as random_vit_test_patch8. It checks that everything runs end to end
# (data -> UperNet -> IoUMetric -> results row); its numbers mean nothing about any paper.
# Every value not set here is the paper's (see paper_vit_base.py for the sources).
_base_ = ["./paper_vit_base.py"]

arch = None  # any registry architecture; run.py fills in channels and depth from it
crop_size = (64, 64)  # smoke: 64-pixel crops
norm_cfg = dict(type="BN", requires_grad=True)  # one CPU process: plain BN

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        name="random_vit_test_patch8",
        img_size=crop_size,
        out_indices=None,  # evenly spaced blocks (backbones/adapters.py), whatever the depth
        norm="BN",
    ),
    decode_head=dict(channels=64, norm_cfg=norm_cfg),  # smoke: small head
    auxiliary_head=dict(channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(mode="whole", _delete_=True),
)  # smoke: whole 64-pixel images, no sliding window

train_pipeline = [  # the paper's pipeline with scale (2048, 512) -> (256, 64) and crop 64
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 64), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4,  # smoke
    num_workers=0,  # smoke: load in the main process
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 30  # smoke
warmup_iters = 3  # smoke: the paper's warmup is ~1% of training; 10% here
optim_wrapper = dict(
    type="OptimWrapper",  # smoke: fp32 on CPU
    _delete_=True,
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),  # smoke: 10x lr for 30 steps
    constructor="ViTLayerDecayOptimizerConstructor",
    paramwise_cfg=dict(num_layers=2, layer_decay_rate=0.65),
)  # num_layers: run.py sets the backbone's depth
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
