"""Semantic segmentation on ADE20K (UperNet via mmsegmentation), as in He et al. 2021, Sec. 5.

``ade_data`` has the class names (mmseg's), a generator for small ADE20K-layout datasets, a validator for an
ADE20K folder (generated or the real ADEChallengeData2016) and a plain-numpy mIoU reference.
"""

from tasks.segmentation.ade_data import (
    ADE20KSplitSummary,
    ade20k_metainfo,
    ade20k_pairs,
    confusion_miou,
    make_ade20k_dataset,
    render_ade20k_sample,
    validate_ade20k,
)

__all__ = [
    "ADE20KSplitSummary",
    "ade20k_metainfo",
    "ade20k_pairs",
    "confusion_miou",
    "make_ade20k_dataset",
    "render_ade20k_sample",
    "validate_ade20k",
]
