"""Pieces shared by the two dense tasks (detection, segmentation) on mmengine: the one dense runner
(``runner``: config reading and checks, schedule, run record, row; ``mm_runner``: mmengine's Runner
as the tasks use it), the backbone plugin and the layer-decay optimizer constructor registered in both
mmseg's and mmdet's registries (``mm_backbone``), the conv memory format, and resume by sampler
indices."""
