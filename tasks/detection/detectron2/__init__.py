"""detectron2 as a detection engine beside mmdet: any registry backbone as a detectron2 ``Backbone``.

    from tasks.detection.detectron2 import RegistryBackbone     # registers it in BACKBONE_REGISTRY
    from tasks.detection.detectron2.run import run_detectron2   # the engine

In a LazyConfig (``from detectron2.config import LazyCall as L``)::

    model.backbone = L(RegistryBackbone)(name="mae_vit_base_patch16", checkpoint="mae_pretrain_vit_base.pth")

Importing this package without a working detectron2 (not installed, or built without its
compiled ops) is a ``BenchError`` whose one line says how to install it.
"""

from tasks.detection.detectron2.install import require_detectron2

require_detectron2()

from tasks.detection.detectron2.backbone import FeatureMaps, RegistryBackbone, check_model  # noqa: E402

__all__ = ["FeatureMaps", "RegistryBackbone", "check_model", "require_detectron2"]
