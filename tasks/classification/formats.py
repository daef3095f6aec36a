"""The on-disk formats of the classification datasets, shared by the readers (``datasets.py``) and the
generators (``generate.py``): names of the datasets and splits, and the official file and folder names."""

from __future__ import annotations

DATASETS = ("inat2017", "inat2018", "inat2019", "places205", "places365", "folder", "digits")
SPLITS = ("train", "val")
INAT_YEARS = (2017, 2018, 2019)

PLACES365_CATEGORIES = "categories_places365.txt"
PLACES365_LISTS = {"train": "places365_train_standard.txt", "val": "places365_val.txt"}
# Image folders in order of preference: as the official tars unpack, then torchvision's names.
PLACES365_IMAGE_DIRS = {
    "train": ("data_256", "data_256_standard", "data_large", "data_large_standard"),
    "val": ("val_256", "val_large"),
}
PLACES205_LISTS = {
    "train": "trainvalsplit_places205/train_places205.csv",
    "val": "trainvalsplit_places205/val_places205.csv",
}
PLACES205_IMAGE_DIRS = ("images256", "data/vision/torralba/deeplearning/images256")
INAT_IMAGE_DIRS = {2017: "train_val_images", 2018: "train_val2018", 2019: "train_val2019"}


def _short(value, limit: int = 60) -> str:
    """repr() of a user value, cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
