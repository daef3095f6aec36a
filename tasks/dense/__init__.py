"""Pieces shared by the two dense tasks (detection's mmdet engine, segmentation) on mmengine:
``runner`` (config reading and the trust gate, schedule and batch, the row; no mmengine), ``workdir``
(the work folder on ``bench.core.workdir``: settings guard, resume order, fresh start), ``mm_runner``
(mmengine's Runner as the tasks use it, and ``run_dense``), the backbone plugin and layer-decay
constructor registered in mmseg's and mmdet's registries (``mm_backbone``), the conv memory format,
and resume by sampler indices (``resume``). Imports point down that list; import-linter keeps them so."""
