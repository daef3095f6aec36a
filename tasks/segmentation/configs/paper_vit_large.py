# ADE20K semantic segmentation, UperNet on a ViT-L/16: the MAE paper's Table 5, ViT-L column.
# Everything not set here is paper_vit_base.py (sources [MAE], [mmseg], [BEiT] as cited there).
#
# The MAE paper publishes no ViT-L segmentation hyper-parameters ("we search for the optimal lr
# for each entry", appendix A.4), and mmsegmentation has no MAE ViT-L config. The architecture
# values below come from the ViT-L UperNet configs of the code [MAE] follows:
#   [BEiT-L]  microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/
#             upernet_beit_large_24_512_slide_160k_ade20k_pt2ft.py (the same file was named
#             upernet_beit_large_24_512_slide_160k_ade20k.py before unilm commit 86f74f0 added the
#             _pt / _pt2ft suffixes), and mmsegmentation 1.2.2
#             configs/beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py.
# Their optimiser (lr 2e-5, layer decay 0.95) is tuned for BEiT-L *after* ImageNet-22k intermediate
# fine-tuning (the file's header: "use this config for BEiT models which are self-supervised
# pretrained and then intermediate fine-tuned on imagenet"), and unilm has no ViT-L config for a
# self-supervised-only checkpoint, so it is not used. Our layer decay 0.75 follows the MAE
# repository's own ViT-B -> ViT-L change for ImageNet fine-tuning (facebookresearch/mae FINETUNE.md:
# --layer_decay 0.65 for ViT-B, 0.75 for ViT-L); the lr is 1e-4 for every initialisation. Both are
# our choices, to be searched as [MAE] did.
_base_ = ["./paper_vit_base.py"]

arch = "vit_large_patch16"
num_layers = 24
embed_dim = 1024

model = dict(
    backbone=dict(
        name="mae_vit_large_patch16",  # replaced by run.py with --backbone
        out_indices=[7, 11, 15, 23],  # [BEiT-L] out_indices for 24 blocks
        drop_path_rate=0.2,
    ),  # [BEiT-L] drop_path_rate=0.2
    decode_head=dict(in_channels=[1024] * 4, channels=1024),  # [BEiT-L] channels=1024
    auxiliary_head=dict(in_channels=1024),
)

optim_wrapper = dict(paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.75))  # ours (see above); 24 blocks
# No public ViT-L value for any initialisation: one lr (optimizer.lr, 1e-4) for all. _delete_ drops
# the ViT-B values inherited from paper_vit_base.py (BEiT's 7e-4 is for ViT-B with layer decay 0.65).
lr_by_init = dict(_delete_=True)
