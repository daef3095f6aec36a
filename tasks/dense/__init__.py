"""Pieces shared by the two dense tasks (detection, segmentation) on mmengine: the backbone plugin
and the layer-decay optimizer constructor, registered in both mmseg's and mmdet's registries."""
