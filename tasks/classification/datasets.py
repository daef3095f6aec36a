"""Image-classification data in the real on-disk formats, and small generated sets in those formats.

Readers (each returns a ``ClassificationSplit``; nothing needs re-packing):

- iNaturalist 2017 / 2018 / 2019 (visipedia/inat_comp): ``train{year}.json`` / ``val{year}.json`` in
  COCO style (``images`` with ``id`` and ``file_name``; ``annotations`` with ``image_id`` and
  ``category_id``; ``categories`` with ``id`` and ``name``). ``file_name`` is relative to the root and
  starts with the image folder: ``train_val_images/<supercategory>/<species>/<hash>.jpg`` (2017),
  ``train_val2018/<supercategory>/<category id>/<hash>.jpg`` (2018),
  ``train_val2019/<group>/<category id>/<hash>.jpg`` (2019).
- Places365-Standard (CSAILVision/places365): ``categories_places365.txt`` (``/a/airfield 0``),
  ``places365_train_standard.txt`` (``/a/airfield/00000001.jpg 0``, images under ``data_256/``,
  as ``train_256_places365standard.tar`` unpacks; torchvision renames it ``data_256_standard/``) and
  ``places365_val.txt`` (``Places365_val_00000001.jpg 165``, images under ``val_256/``). The high
  resolution folders ``data_large/`` and ``val_large/`` are used when the 256 ones are absent.
- Places205: ``trainvalsplit_places205/{train,val}_places205.csv``, one ``a/abbey/00000001.jpg 0``
  per line (space separated, despite the name), images under
  ``data/vision/torralba/deeplearning/images256/`` (as ``imagesPlaces205_resize.tar`` unpacks) or
  ``images256/``. Class names come from the folders of the train list (``/a/abbey``).
- Image folders: ``root/{train,val}/<class>/*.jpg`` (classes = sorted train sub-folders).
- ``digits``: an image folder holding scikit-learn's real handwritten digits (``make_digits_dataset``:
  the 100 labelled / 800 eval images of ``bench.core.data.Digits``, disjoint from its pretraining split).

The label space of every split is the train one: validation labels outside it are an error.

Generators (``make_*``) write the same formats from scikit-learn's handwritten digits (1,797 real
8x8 images, 10 classes), upsampled and drawn over crops of the bundled real photographs; the label of
every image is its digit, and the class names are real species / place names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.data import (
    LabelledImages,
    class_folders,
    embedded_photos,
    list_images,
    load_rgb,  # noqa: F401  (re-exported by tasks.classification)
)
from bench.core.errors import BenchError, DataError
from bench.core.io import load_json

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


@dataclass
class ClassificationSplit:
    """One split of a classification dataset: ``samples`` are (image path, label in 0..C-1)."""

    samples: list[tuple[Path, int]]
    classes: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------------------------------
# Small helpers shared by the readers


def _short(value, limit: int = 60) -> str:
    """repr() of a user value, cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise BenchError(f"unknown split {_short(split)}; expected one of {', '.join(SPLITS)}")


def _is_label(token: str) -> bool:
    """A non-negative decimal integer in ASCII digits (int() alone also takes '+1', '1_0', '١'),
    short enough for int() (which refuses over 4,300 digits)."""
    return token.isascii() and token.isdigit() and len(token) <= 18


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # Universal newlines, then split on '\n' only, so line numbers match what editors show.
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _read_list(path: Path) -> list[tuple[int, str, int]]:
    """(line number, image path, label) for each non-blank ``<image> <label>`` line."""
    entries = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not _is_label(parts[1]):
            raise DataError(f"{path}:{lineno}: expected '<image> <label>', got {_short(line)}")
        entries.append((lineno, parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{path}: lists no images")
    return entries


def _contiguous_index(ids: list[int], source: Path) -> dict[int, int]:
    """Map sorted label ids to 0..C-1, warning when they are not already 0..C-1."""
    ids = sorted(ids)
    if ids != list(range(len(ids))):
        warnings.warn(
            f"{source}: the {len(ids)} category ids are not contiguous 0..{len(ids) - 1}; "
            f"mapped them to 0..{len(ids) - 1} in id order",
            stacklevel=3,
        )
    return {cid: i for i, cid in enumerate(ids)}


def _files_in(directory: str) -> set[str]:
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if e.is_file()}
    except (OSError, ValueError):  # missing folder, or a name with a NUL byte
        return set()


def _check_files_exist(samples: list[tuple[Path, int]], listing: Path, image_root: Path) -> None:
    """Fail (never drop) when listed images are missing; one directory listing per folder."""
    present: dict[str, set[str]] = {}
    missing = []
    for path, _ in samples:
        directory, name = os.path.split(str(path))
        if directory not in present:
            present[directory] = _files_in(directory)
        if name not in present[directory]:
            missing.append(path)
    if missing:
        shown = ", ".join(_short(os.path.relpath(p, image_root), 200) for p in missing[:5])
        raise DataError(f"{listing}: {len(missing)} listed image file(s) missing under {image_root}, first: {shown}")


def _first_existing_dir(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no {what} image folder (looked for {', '.join(candidates)})")


# --------------------------------------------------------------------------------------------------
# iNaturalist 2017 / 2018 / 2019


def _field(record, key: str, kind: type, path: Path, where: str):
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} must be a JSON object, got {_short(record)}")
    if key not in record:
        raise DataError(f"{path}: {where} has no {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(
            f"{path}: {where}.{key} must be {'an integer' if kind is int else 'a string'}, got {_short(value)}"
        )
    return value


def _inat_records(path: Path) -> tuple[dict[int, str], list[tuple[str, int]]]:
    """Validated contents of one iNat JSON: {category id: name} and [(file_name, category id)]."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {_short(data)}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing key {key!r}")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {_short(data[key])}")

    categories: dict[int, str] = {}
    for i, record in enumerate(data["categories"]):
        cid = _field(record, "id", int, path, f"categories[{i}]")
        name = _field(record, "name", str, path, f"categories[{i}]")
        if cid in categories:
            raise DataError(f"{path}: categories[{i}].id {cid} is listed twice")
        categories[cid] = name

    file_names: dict[int, str] = {}
    for i, record in enumerate(data["images"]):
        iid = _field(record, "id", int, path, f"images[{i}]")
        file_name = _field(record, "file_name", str, path, f"images[{i}]")
        if iid in file_names:
            raise DataError(f"{path}: images[{i}].id {iid} is listed twice")
        file_names[iid] = file_name

    labels: dict[int, int] = {}
    for i, record in enumerate(data["annotations"]):
        iid = _field(record, "image_id", int, path, f"annotations[{i}]")
        cid = _field(record, "category_id", int, path, f"annotations[{i}]")
        if iid not in file_names:
            raise DataError(f"{path}: annotations[{i}].image_id {iid} is not in 'images'")
        if labels.get(iid, cid) != cid:
            raise DataError(f"{path}: annotations[{i}] gives image {iid} a second category ({labels[iid]} and {cid})")
        labels[iid] = cid

    unlabelled = [iid for iid in file_names if iid not in labels]
    if unlabelled:
        first = unlabelled[0]
        raise DataError(
            f"{path}: {len(unlabelled)} image(s) have no annotation, first: "
            f"id {first} ({_short(file_names[first], 120)})"
        )
    if not file_names:
        raise DataError(f"{path}: 'images' is empty")
    return categories, [(file_names[iid], labels[iid]) for iid in file_names]


def _read_inat(root: Path, year: int, splits: tuple[str, ...]) -> dict[str, ClassificationSplit]:
    if year not in INAT_YEARS:
        raise BenchError(f"unknown iNaturalist year {_short(year)}; expected one of {INAT_YEARS}")
    train_json = root / f"train{year}.json"
    train_categories, train_items = _inat_records(train_json)
    index = _contiguous_index(list(train_categories), train_json)
    classes = [train_categories[cid] for cid in sorted(train_categories)]

    out = {}
    for split in splits:
        json_path = train_json if split == "train" else root / f"val{year}.json"
        items = train_items if split == "train" else _inat_records(json_path)[1]
        samples = []
        for file_name, cid in items:
            if cid not in index:
                where = "'categories'" if split == "train" else f"the train categories ({train_json.name})"
                raise DataError(f"{json_path}: category_id {cid} (image {_short(file_name, 120)}) is not in {where}")
            samples.append((root / file_name, index[cid]))
        _check_files_exist(samples, json_path, root)
        out[split] = ClassificationSplit(samples, classes, f"inat{year}/{split}")
    return out


def read_inat(root: str | Path, year: int, split: str) -> ClassificationSplit:
    """iNaturalist ``year`` (2017, 2018 or 2019) ``split`` from ``root/{train,val}{year}.json``.

    Images are ``root / file_name``. Classes are the categories of the train JSON in id order;
    ids that are not 0..C-1 are mapped to it (with a warning).
    """
    _check_split(split)
    return _read_inat(Path(root), year, (split,))[split]


# --------------------------------------------------------------------------------------------------
# Places365-Standard


def _places365_categories(root: Path) -> tuple[list[str], dict[int, int], Path]:
    path = root / PLACES365_CATEGORIES
    names: dict[int, str] = {}
    seen: set[str] = set()
    for lineno, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not _is_label(parts[1]):
            raise DataError(f"{path}:{lineno}: expected '<category> <id>', got {_short(line)}")
        label, name = int(parts[1]), parts[0]
        if label in names or name in seen:
            raise DataError(f"{path}:{lineno}: category {_short(name)} or id {label} is listed twice")
        names[label] = name
        seen.add(name)
    if not names:
        raise DataError(f"{path}: lists no categories")
    index = _contiguous_index(list(names), path)
    return [names[label] for label in sorted(names)], index, path


def _read_places365(root: Path, splits: tuple[str, ...]) -> dict[str, ClassificationSplit]:
    classes, index, categories_path = _places365_categories(root)
    out = {}
    for split in splits:
        listing = root / PLACES365_LISTS[split]
        entries = _read_list(listing)
        image_dir = _first_existing_dir(root, PLACES365_IMAGE_DIRS[split], f"Places365 {split}")
        samples = _list_samples(
            entries, index, listing, image_dir, f"is not a category of {categories_path.name} (the train label set)"
        )
        out[split] = ClassificationSplit(samples, classes, f"places365/{split}")
    return out


def _list_samples(entries, index: dict, listing: Path, image_dir: Path, not_in_train: str) -> list:
    """(path, class index) for the ``(lineno, image, label)`` entries of a Places list file; a label
    outside the train label set is named with its line, and every listed image must exist."""
    samples = []
    for lineno, image, label in entries:
        if label not in index:
            raise DataError(f"{listing}:{lineno}: label {label} {not_in_train}")
        samples.append((image_dir / image.lstrip("/"), index[label]))
    _check_files_exist(samples, listing, image_dir)
    return samples


def read_places365(root: str | Path, split: str) -> ClassificationSplit:
    """Places365-Standard ``split``; classes from ``categories_places365.txt`` (``/a/airfield``...)."""
    _check_split(split)
    return _read_places365(Path(root), (split,))[split]


# --------------------------------------------------------------------------------------------------
# Places205


def _places205_class(image: str, listing: Path, lineno: int) -> str:
    folder = os.path.dirname(image.lstrip("/"))
    if not folder:
        raise DataError(f"{listing}:{lineno}: image {_short(image)} is not inside a class folder")
    return "/" + folder


def _read_places205(root: Path, splits: tuple[str, ...]) -> dict[str, ClassificationSplit]:
    train_listing = root / PLACES205_LISTS["train"]
    train_entries = _read_list(train_listing)
    # The train list fixes the label space and the class names (its folders, e.g. '/a/abbey').
    folder_of: dict[int, str] = {}
    label_of: dict[str, int] = {}
    for lineno, image, label in train_entries:
        folder = _places205_class(image, train_listing, lineno)
        if folder_of.setdefault(label, folder) != folder or label_of.setdefault(folder, label) != label:
            raise DataError(
                f"{train_listing}:{lineno}: label {label} and folder {_short(folder)} disagree with an earlier line"
            )
    index = _contiguous_index(list(folder_of), train_listing)
    classes = [folder_of[label] for label in sorted(folder_of)]
    image_dir = _first_existing_dir(root, PLACES205_IMAGE_DIRS, "Places205")

    out = {}
    for split in splits:
        listing = root / PLACES205_LISTS[split]
        entries = train_entries if split == "train" else _read_list(listing)
        samples = _list_samples(
            entries, index, listing, image_dir, f"does not occur in {train_listing.name} (the train label set)"
        )
        out[split] = ClassificationSplit(samples, classes, f"places205/{split}")
    return out


def read_places205(root: str | Path, split: str) -> ClassificationSplit:
    """Places205 ``split`` from ``root/trainvalsplit_places205/{split}_places205.csv``."""
    _check_split(split)
    return _read_places205(Path(root), (split,))[split]


# --------------------------------------------------------------------------------------------------
# Image folders


def _check_not_linked_inside(folder: Path, root: Path) -> None:
    """A symlinked split or class folder may point anywhere but into the dataset itself: a class
    folder linked to the root would put the validation images into training."""
    if not folder.is_symlink():
        return
    target, real_root = Path(os.path.realpath(folder)), Path(os.path.realpath(root))
    if target == real_root or real_root in target.parents:
        raise DataError(
            f"{folder}: is a symlink into the dataset itself ({target}); the same images would "
            f"be read twice (e.g. in train and val)"
        )


def _read_image_folder(root: Path, splits: tuple[str, ...], name: str = "folder") -> dict[str, ClassificationSplit]:
    _check_not_linked_inside(root / "train", root)
    classes = class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders")
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for split in splits:
        split_dir = root / split
        _check_not_linked_inside(split_dir, root)
        samples = []
        for name in class_folders(split_dir):
            if name not in index:
                raise DataError(
                    f"{split_dir / name}: class {_short(name)} is not a train class (no folder {root / 'train' / name})"
                )
            _check_not_linked_inside(split_dir / name, root)
            images = list_images(split_dir / name, skip_hidden=True)
            if split == "train" and not images:
                raise DataError(f"{split_dir / name}: class folder has no images")
            samples.extend((p, index[name]) for p in images)
        if not samples:
            raise DataError(f"{split_dir}: no images")
        out[split] = ClassificationSplit(samples, classes, f"{name}/{split}")
    return out


def read_image_folder(root: str | Path, split: str) -> ClassificationSplit:
    """``root/{split}/<class>/*.jpg``; classes are the sorted sub-folders of ``root/train``."""
    _check_split(split)
    return _read_image_folder(Path(root), (split,))[split]


# --------------------------------------------------------------------------------------------------
# Dispatch


def _read(dataset: str, root: str | Path, splits: tuple[str, ...]) -> dict[str, ClassificationSplit]:
    for split in splits:
        _check_split(split)
    root = Path(root)
    if dataset in ("inat2017", "inat2018", "inat2019"):
        out = _read_inat(root, int(dataset[4:]), splits)
    elif dataset == "places365":
        out = _read_places365(root, splits)
    elif dataset == "places205":
        out = _read_places205(root, splits)
    elif dataset in ("folder", "digits"):
        out = _read_image_folder(root, splits, dataset)
    else:
        raise BenchError(f"unknown dataset {_short(dataset)}; expected one of {', '.join(DATASETS)}")
    classes = next(iter(out.values())).classes
    if len(classes) < 2:
        raise DataError(
            f"{root}: {dataset} has {len(classes)} class ({_short(classes)}); classification needs "
            f"at least 2 (with one, every prediction is right)"
        )
    if len(out) == 2:
        _check_disjoint(out["train"], out["val"], root)
    return out


def _check_disjoint(train: ClassificationSplit, val: ClassificationSplit, root: Path) -> None:
    """No image file may be listed in both train and val (the score would include trained images)."""
    seen = {os.path.normpath(p) for p, _ in train.samples}
    both = [p for p, _ in val.samples if os.path.normpath(p) in seen]
    if both:
        raise DataError(
            f"{root}: {len(both)} image(s) are in both train and val, first: "
            f"{_short(os.path.relpath(both[0], root), 200)}"
        )


# The held-out part of a training split, for hyperparameter selection that never looks at val: a fixed
# seed (not the run's), so every grid point, initialisation and seed sees the same carve.
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0


def heldout_split(
    split: ClassificationSplit, fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED
) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(rest, held out) of a training ``split``, stratified by class: ``round(fraction * n)`` images of
    each class with n >= 2 images (at least 1, never all of them) are held out, drawn with
    ``numpy.random.default_rng(seed)`` over the reader's (sorted) order. Both keep the split's classes."""
    if not 0 < fraction < 1:
        raise BenchError(f"held-out fraction must be between 0 and 1, got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(split.samples):
        by_class.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n = len(indices)
        m = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        held.update(int(i) for i in rng.permutation(indices)[:m])
    if not held:
        raise DataError(f"{split.name}: no class has 2 or more images, so nothing can be held out for selection")
    rest = [s for i, s in enumerate(split.samples) if i not in held]
    out = [s for i, s in enumerate(split.samples) if i in held]
    return (
        ClassificationSplit(rest, split.classes, f"{split.name}-minus-heldout"),
        ClassificationSplit(out, split.classes, f"{split.name}-heldout"),
    )


def read_split(dataset: str, root: str | Path, split: str) -> ClassificationSplit:
    """One split of ``dataset`` (one of ``DATASETS``) stored at ``root`` in its real format."""
    return _read(dataset, root, (split,))[split]


def read_splits(dataset: str, root: str | Path) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(train, val) of ``dataset``; reads the train annotations once."""
    out = _read(dataset, root, SPLITS)
    return out["train"], out["val"]


# --------------------------------------------------------------------------------------------------
# Torch dataset


class ImageDataset(LabelledImages):
    """A ``ClassificationSplit`` as a map-style dataset of (transform(image), label)
    (``bench.core.data.LabelledImages``: uint8 tensors from torchvision's decoders for a tensor
    transform such as the eval one, RGB PIL images for timm's training transform, whose RandAugment
    works on PIL images)."""

    def __init__(self, split: ClassificationSplit, transform=None):
        super().__init__(split.samples, split.classes, transform)
        self.split = split


# --------------------------------------------------------------------------------------------------
# Generators: small sets in the exact formats above, from scikit-learn's handwritten digits

MAX_CLASSES = 10  # the ten digits
MAX_PER_CLASS = 174  # the rarest digit (8) has 174 images

# Real species (scientific name, iNat 2017/2018 supercategory, kingdom, phylum, class, order, family,
# genus). Only supercategories that iNat 2019 also has (Plants, Birds, Insects, Reptiles,
# Amphibians, Fungi), so every year can hold them.
INAT_SPECIES = (
    ("Abies concolor", "Plantae", "Plantae", "Tracheophyta", "Pinopsida", "Pinales", "Pinaceae", "Abies"),
    ("Amanita muscaria", "Fungi", "Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita"),
    ("Cardinalis cardinalis", "Aves", "Animalia", "Chordata", "Aves", "Passeriformes", "Cardinalidae", "Cardinalis"),
    ("Danaus plexippus", "Insecta", "Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus"),
    ("Lithobates catesbeianus", "Amphibia", "Animalia", "Chordata", "Amphibia", "Anura", "Ranidae", "Lithobates"),
    ("Rosa californica", "Plantae", "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa"),
    (
        "Sceloporus occidentalis",
        "Reptilia",
        "Animalia",
        "Chordata",
        "Reptilia",
        "Squamata",
        "Phrynosomatidae",
        "Sceloporus",
    ),
    ("Terrapene carolina", "Reptilia", "Animalia", "Chordata", "Reptilia", "Testudines", "Emydidae", "Terrapene"),
    (
        "Tetraneuris scaposa",
        "Plantae",
        "Plantae",
        "Tracheophyta",
        "Magnoliopsida",
        "Asterales",
        "Asteraceae",
        "Tetraneuris",
    ),
    ("Yucca schidigera", "Plantae", "Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Asparagaceae", "Yucca"),
)
INAT2019_GROUPS = {
    "Plantae": "Plants",
    "Aves": "Birds",
    "Insecta": "Insects",
    "Reptilia": "Reptiles",
    "Amphibia": "Amphibians",
    "Fungi": "Fungi",
}
INAT_IMAGE_DIRS = {2017: "train_val_images", 2018: "train_val2018", 2019: "train_val2019"}

# Real Places365 categories (checked against categories_places365.txt), in its alphabetical order.
PLACES365_CLASSES = (
    "/a/airfield",
    "/b/beach",
    "/c/coast",
    "/f/field/wild",
    "/f/forest_path",
    "/h/highway",
    "/k/kitchen",
    "/l/library/indoor",
    "/m/mountain",
    "/s/swimming_pool/outdoor",
)
# Real Places205 categories, as folders of images256/.
PLACES205_CLASSES = (
    "a/abbey",
    "a/airport_terminal",
    "c/coast",
    "f/field/wild",
    "f/forest_path",
    "h/highway",
    "k/kitchen",
    "m/mountain",
    "o/ocean",
    "s/swimming_pool/outdoor",
)
FOLDER_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def render_digit(digit: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """An 8x8 digit (values 0..16) upsampled to ``size`` and drawn in a bright colour over a darkened
    crop of one of the bundled real photos; HxWx3 uint8."""
    photos = embedded_photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) // 2 + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    background = Image.fromarray(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    background = np.asarray(background.resize((size, size), Image.BILINEAR), dtype=np.float32)
    ink = Image.fromarray((np.asarray(digit, dtype=np.float32) * (255.0 / 16.0)).astype(np.uint8))
    alpha = np.asarray(ink.resize((size, size), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    colour = rng.integers(170, 256, size=3).astype(np.float32)
    out = 0.45 * background * (1.0 - alpha) + colour * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _digit_sets(num_classes: int, n_train: int, n_val: int, image_size: int, seed: int):
    """{'train': [(image, label)], 'val': [...]} with disjoint source digits, class by class."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise BenchError(f"num_classes must be 1..{MAX_CLASSES} (one per digit), got {num_classes}")
    if n_train < 1 or n_val < 1 or n_train + n_val > MAX_PER_CLASS:
        raise BenchError(
            f"need n_train_per_class >= 1, n_val_per_class >= 1 and their sum <= "
            f"{MAX_PER_CLASS} (the rarest digit), got {n_train} and {n_val}"
        )
    if image_size < 8:
        raise BenchError(f"image_size must be at least 8, got {image_size}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    sets = {"train": [], "val": []}
    for label in range(num_classes):
        chosen = rng.permutation(np.flatnonzero(digits.target == label))
        for split, indices in (("train", chosen[:n_train]), ("val", chosen[n_train : n_train + n_val])):
            for i in indices:
                sets[split].append((render_digit(digits.images[i], rng, image_size), label))
    return sets


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


@contextlib.contextmanager
def _new_folder(root: str | Path):
    """Yield a temp folder next to ``root``; it becomes ``root`` only if the block finishes."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BenchError(f"{root}: already exists and is not an empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def make_inat_dataset(
    root: str | Path,
    year: int = 2018,
    n_train_per_class: int = 40,
    n_val_per_class: int = 10,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write an iNaturalist ``year`` set at ``root``: ``train{year}.json``, ``val{year}.json`` and the
    images under the year's folder, with the fields documented in visipedia/inat_comp."""
    if year not in INAT_YEARS:
        raise BenchError(f"unknown iNaturalist year {_short(year)}; expected one of {INAT_YEARS}")
    sets = _digit_sets(num_classes, n_train_per_class, n_val_per_class, image_size, seed)
    species = INAT_SPECIES[:num_classes]
    categories = []
    for cid, (name, supercategory, *taxonomy) in enumerate(species):
        category = {"id": cid, "name": name}
        if year in (2017, 2018):
            category["supercategory"] = supercategory
        if year in (2018, 2019):
            category.update(zip(("kingdom", "phylum", "class", "order", "family", "genus"), taxonomy))
        categories.append(category)

    def folder(cid: int) -> str:
        name, supercategory = species[cid][:2]
        if year == 2017:
            return f"{INAT_IMAGE_DIRS[year]}/{supercategory}/{name}"
        group = supercategory if year == 2018 else INAT2019_GROUPS[supercategory]
        return f"{INAT_IMAGE_DIRS[year]}/{group}/{cid}"

    with _new_folder(root) as tmp:
        image_id = 0
        for split in SPLITS:
            images, annotations = [], []
            for image, label in sets[split]:
                digest = hashlib.md5(f"{seed}/{year}/{image_id}".encode()).hexdigest()
                file_name = f"{folder(label)}/{digest}.jpg"
                _save_jpeg(image, tmp / file_name)
                images.append(
                    {
                        "id": image_id,
                        "width": image_size,
                        "height": image_size,
                        "file_name": file_name,
                        "license": 1,
                        "rights_holder": "scikit-learn digits (UCI)",
                    }
                )
                annotations.append({"id": image_id, "image_id": image_id, "category_id": label})
                image_id += 1
            data = {
                "info": {
                    "year": year,
                    "version": "1.0",
                    "description": f"iNaturalist {year} format, handwritten digits content",
                    "contributor": "maebench",
                    "url": "",
                    "date_created": "",
                },
                "images": images,
                "categories": categories,
                "annotations": annotations,
                "licenses": [{"id": 1, "name": "BSD-3-Clause", "url": ""}],
            }
            (tmp / f"{split}{year}.json").write_text(json.dumps(data), encoding="utf-8")
    return Path(root)


def make_places365_dataset(
    root: str | Path,
    n_train_per_class: int = 40,
    n_val_per_class: int = 10,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a Places365-Standard set at ``root``: ``categories_places365.txt``,
    ``places365_train_standard.txt`` + ``data_256/`` and ``places365_val.txt`` + ``val_256/``."""
    sets = _digit_sets(num_classes, n_train_per_class, n_val_per_class, image_size, seed)
    names = PLACES365_CLASSES[:num_classes]
    with _new_folder(root) as tmp:
        # Like the real file: '<name> <id>' lines, no newline after the last one.
        (tmp / PLACES365_CATEGORIES).write_text(
            "\n".join(f"{name} {i}" for i, name in enumerate(names)), encoding="utf-8"
        )
        lines, counts = [], [0] * num_classes
        for image, label in sets["train"]:
            counts[label] += 1
            relative = f"{names[label]}/{counts[label]:08d}.jpg"
            _save_jpeg(image, tmp / "data_256" / relative.lstrip("/"))
            lines.append(f"{relative} {label}\n")
        (tmp / PLACES365_LISTS["train"]).write_text("".join(lines), encoding="utf-8")
        # The real validation images are numbered in an order unrelated to their class.
        order = np.random.default_rng(seed + 1).permutation(len(sets["val"]))
        lines = []
        for number, k in enumerate(order, start=1):
            image, label = sets["val"][k]
            file_name = f"Places365_val_{number:08d}.jpg"
            _save_jpeg(image, tmp / "val_256" / file_name)
            lines.append(f"{file_name} {label}\n")
        (tmp / PLACES365_LISTS["val"]).write_text("".join(lines), encoding="utf-8")
    return Path(root)


def make_places205_dataset(
    root: str | Path,
    n_train_per_class: int = 40,
    n_val_per_class: int = 10,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a Places205 set at ``root``: ``trainvalsplit_places205/{train,val}_places205.csv`` and the
    images under ``data/vision/torralba/deeplearning/images256/`` (as the official tar unpacks)."""
    sets = _digit_sets(num_classes, n_train_per_class, n_val_per_class, image_size, seed)
    names = PLACES205_CLASSES[:num_classes]
    with _new_folder(root) as tmp:
        counts = [0] * num_classes
        for split in SPLITS:
            lines = []
            for image, label in sets[split]:
                counts[label] += 1
                relative = f"{names[label]}/{counts[label]:08d}.jpg"
                _save_jpeg(image, tmp / PLACES205_IMAGE_DIRS[1] / relative)
                lines.append(f"{relative} {label}\n")
            listing = tmp / PLACES205_LISTS[split]
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("".join(lines), encoding="utf-8")
    return Path(root)


def make_image_folder(
    root: str | Path,
    n_train_per_class: int = 40,
    n_val_per_class: int = 10,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/<digit>_<name>/<n>.jpg`` (``0_zero`` ... so sorted order is digit order)."""
    sets = _digit_sets(num_classes, n_train_per_class, n_val_per_class, image_size, seed)
    with _new_folder(root) as tmp:
        for split in SPLITS:
            for n, (image, label) in enumerate(sets[split]):
                _save_jpeg(image, tmp / split / f"{label}_{FOLDER_CLASSES[label]}" / f"{n:06d}.jpg")
    return Path(root)


def make_digits_dataset(
    root: str | Path,
    n_train_per_class: int | None = None,
    n_val_per_class: int | None = None,
    num_classes: int = 10,
    image_size: int | None = None,
) -> Path:
    """Write ``root/{train,val}/<digit>/<index>.png``: scikit-learn's real handwritten digits, train =
    the labelled images, val = the eval images of ``bench.core.data.Digits`` (10 and 80 per digit, 64 px),
    both disjoint from its pretraining split (``bench pretrain --data digits``). The options take the
    first ``n`` images of each of the first ``num_classes`` digits, or resize them (bicubic), as the
    other generators' options do; left at None they keep the whole split at 64 px."""
    from bench.core.data import DIGITS_PER_CLASS, write_digits_folder

    keep = {"train": n_train_per_class, "val": n_val_per_class}
    for split, n, most in (
        ("train", n_train_per_class, DIGITS_PER_CLASS["labelled"]),
        ("val", n_val_per_class, DIGITS_PER_CLASS["eval"]),
    ):
        if n is not None and not 1 <= n <= most:
            raise BenchError(
                f"digits: {split} has {most} images per digit; n_{split}_per_class must be 1..{most}, got {n}"
            )
    if not 2 <= num_classes <= MAX_CLASSES:
        raise BenchError(f"digits: num_classes must be 2..{MAX_CLASSES}, got {num_classes}")
    if image_size is not None and image_size < 8:
        raise BenchError(f"image_size must be at least 8, got {image_size}")
    with _new_folder(root) as tmp:
        write_digits_folder(tmp)
        for split in SPLITS:
            for label in range(MAX_CLASSES):
                folder = tmp / split / str(label)
                files = sorted(folder.iterdir())
                for k, path in enumerate(files):
                    if label >= num_classes or (keep[split] is not None and k >= keep[split]):
                        path.unlink()
                    elif image_size is not None:
                        with Image.open(path) as img:
                            small = img.resize((image_size, image_size), Image.BICUBIC)
                        small.save(path, format="PNG")
                if label >= num_classes:
                    folder.rmdir()
    return Path(root)


GENERATORS = {
    "inat2017": lambda root, **kw: make_inat_dataset(root, 2017, **kw),
    "inat2018": lambda root, **kw: make_inat_dataset(root, 2018, **kw),
    "inat2019": lambda root, **kw: make_inat_dataset(root, 2019, **kw),
    "places205": make_places205_dataset,
    "places365": make_places365_dataset,
    "folder": make_image_folder,
    "digits": make_digits_dataset,
}


def make_dataset(dataset: str, root: str | Path, **kwargs) -> Path:
    """Write a small generated set of ``dataset`` (one of ``DATASETS``) at ``root``."""
    if dataset not in GENERATORS:
        raise BenchError(f"unknown dataset {_short(dataset)}; expected one of {', '.join(DATASETS)}")
    return GENERATORS[dataset](root, **kwargs)
