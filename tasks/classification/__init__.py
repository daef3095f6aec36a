"""Image classification transfer (iNaturalist 2017/2018/2019, Places205/365): data readers in the
real on-disk formats (``datasets``), small generated sets in those formats (``generate``), the runs
(``run``; ``bench cls`` in ``cli``), their convergence curve (``curve``) and raw-pixel floors (``floors``)."""

from tasks.classification.datasets import (
    DATASETS,
    SPLITS,
    ClassificationSplit,
    ImageDataset,
    load_rgb,
    make_dataset,
    make_image_folder,
    make_inat_dataset,
    make_places205_dataset,
    make_places365_dataset,
    read_image_folder,
    read_inat,
    read_places205,
    read_places365,
    read_split,
    read_splits,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "ClassificationSplit",
    "ImageDataset",
    "load_rgb",
    "make_dataset",
    "make_image_folder",
    "make_inat_dataset",
    "make_places205_dataset",
    "make_places365_dataset",
    "read_image_folder",
    "read_inat",
    "read_places205",
    "read_places365",
    "read_split",
    "read_splits",
]
