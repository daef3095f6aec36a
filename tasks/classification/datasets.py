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

The generators that write these formats live in ``tasks.classification.generate``
(``generate_dataset``; ``bench data``); their names are re-exported here.

Held-out part for hyperparameter selection (``heldout_split``): carved from the training split with a
fixed seed. iNat 2018 / 2019 hold out a fixed number of images per class (``HELDOUT_PER_CLASS``, 3):
their train splits are long-tailed but their val splits are nearly balanced (about 3 images per
class), so a class-balanced part is what val looks like; a stratified fraction would weigh the head
classes as train does. The other datasets hold out a class-stratified 10 % (their val follows train's
class mix, or is balanced as train is).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.data import (
    LabelledImages,
    class_folders,
    list_images,
    load_rgb,  # noqa: F401  (re-exported by tasks.classification)
)
from bench.core.errors import BenchError, DataError
from bench.core.io import load_json
from tasks.classification.formats import (  # noqa: F401  (the format names, re-exported)
    DATASETS,
    INAT_IMAGE_DIRS,
    INAT_YEARS,
    PLACES205_IMAGE_DIRS,
    PLACES205_LISTS,
    PLACES365_CATEGORIES,
    PLACES365_IMAGE_DIRS,
    PLACES365_LISTS,
    SPLITS,
    _short,
)
from tasks.classification.generate import (  # noqa: F401  (generators, re-exported: their old import path)
    GENERATORS,
    generate_dataset,
    make_dataset,
    make_digits_dataset,
    make_image_folder,
    make_inat_dataset,
    make_places205_dataset,
    make_places365_dataset,
)


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
    if dataset not in DATASETS:
        raise BenchError(f"unknown dataset {_short(dataset)}; expected one of {', '.join(DATASETS)}")
    try:
        if dataset.startswith("inat"):
            out = _read_inat(root, int(dataset[4:]), splits)
        elif dataset == "places365":
            out = _read_places365(root, splits)
        elif dataset == "places205":
            out = _read_places205(root, splits)
        else:
            out = _read_image_folder(root, splits, dataset)
    except DataError as e:
        if not (root.is_dir() and any(root.iterdir())) or _MISSING.search(str(e)):
            raise DataError(
                f"{e}; {dataset} expects {LAYOUTS[dataset]} (a small one: bench data {dataset} --out DIR)"
            ) from None
        raise
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


# What a missing file or folder is called by the readers: such errors carry the layout and the generator.
_MISSING = re.compile(r"(file|folder) not found|no .* image folder|no class folders")
LAYOUTS = {
    "inat2017": "train2017.json, val2017.json and train_val_images/<supercategory>/<species>/*.jpg",
    "inat2018": "train2018.json, val2018.json and train_val2018/<supercategory>/<category id>/*.jpg",
    "inat2019": "train2019.json, val2019.json and train_val2019/<group>/<category id>/*.jpg",
    "places205": "trainvalsplit_places205/{train,val}_places205.csv and images256/<letter>/<class>/*.jpg",
    "places365": "categories_places365.txt, places365_train_standard.txt, places365_val.txt, data_256/, val_256/",
    "folder": "train/<class>/*.jpg and val/<class>/*.jpg",
    "digits": "train/<digit>/*.png and val/<digit>/*.png",
}


# The held-out part of a training split, for hyperparameter selection that never looks at val: a fixed
# seed (not the run's), so every grid point, initialisation and seed sees the same carve.
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0
HELDOUT_PER_CLASS = 3  # iNat 2018 / 2019: about what their val has per class (see the module docstring)
BALANCED_HELDOUT = ("inat2018", "inat2019")


def heldout_split(
    split: ClassificationSplit,
    fraction: float = HELDOUT_FRACTION,
    seed: int = HELDOUT_SEED,
    per_class: int | None = None,
) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(rest, held out) of a training ``split``, drawn per class with ``numpy.random.default_rng(seed)``
    over the reader's (sorted) order. Of each class with n >= 2 images, ``round(fraction * n)`` (class-
    stratified) or, with ``per_class``, ``per_class`` images (class-balanced) are held out: at least 1,
    never all. Both parts keep the split's classes."""
    if not 0 < fraction < 1:
        raise BenchError(f"held-out fraction must be between 0 and 1, got {fraction}")
    if per_class is not None and per_class < 1:
        raise BenchError(f"held-out images per class must be >= 1, got {per_class}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(split.samples):
        by_class.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n = len(indices)
        want = per_class if per_class is not None else max(1, round(fraction * n))
        m = min(n - 1, want) if n >= 2 else 0
        held.update(int(i) for i in rng.permutation(indices)[:m])
    if not held:
        raise DataError(f"{split.name}: no class has 2 or more images, so nothing can be held out for selection")
    rest = [s for i, s in enumerate(split.samples) if i not in held]
    out = [s for i, s in enumerate(split.samples) if i in held]
    return (
        ClassificationSplit(rest, split.classes, f"{split.name}-minus-heldout"),
        ClassificationSplit(out, split.classes, f"{split.name}-heldout"),
    )


def heldout_for(dataset: str, split: ClassificationSplit) -> tuple[ClassificationSplit, ClassificationSplit]:
    """The held-out carve a selection run of ``dataset`` uses: class-balanced for iNat 2018 / 2019,
    class-stratified otherwise (see the module docstring)."""
    return heldout_split(split, per_class=HELDOUT_PER_CLASS if dataset in BALANCED_HELDOUT else None)


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
