"""Small classification sets in the real on-disk formats that ``tasks.classification.datasets`` reads,
written from scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes): upsampled and drawn
over crops of the bundled real photographs for iNat / Places / image folders (the label of every image
is its digit, the class names are real species / place names), or the real scans themselves
(``digits``). ``generate_dataset(name, root, **opts)`` is the one entry point (``bench data``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.data import embedded_photos
from bench.core.errors import BenchError
from tasks.classification.formats import (
    DATASETS,
    INAT_IMAGE_DIRS,
    INAT_YEARS,
    PLACES205_IMAGE_DIRS,
    PLACES205_LISTS,
    PLACES365_CATEGORIES,
    PLACES365_LISTS,
    SPLITS,
    _short,
)

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


def generate_dataset(name: str, root: str | Path, **opts) -> Path:
    """Write the small set ``name`` (one of ``DATASETS``: digits, folder, inat2017/2018/2019,
    places205/365) at ``root`` in its real layout and return the root its reader takes. ``opts`` are
    the generator's own options (n_train_per_class, n_val_per_class, num_classes, image_size, and
    seed except for digits); an unknown one is a one-line BenchError naming it."""
    import inspect

    if name not in GENERATORS:
        raise BenchError(f"unknown dataset {_short(name)}; expected one of {', '.join(DATASETS)}")
    target = make_inat_dataset if name.startswith("inat") else GENERATORS[name]
    known = [p for p in inspect.signature(target).parameters if p not in ("root", "year")]
    for key in opts:
        if key not in known:
            raise BenchError(f"{name}: unknown option {_short(key)}; known: {', '.join(known)}")
    return Path(GENERATORS[name](root, **opts))


def make_dataset(dataset: str, root: str | Path, **kwargs) -> Path:
    """``generate_dataset`` under its older name."""
    return generate_dataset(dataset, root, **kwargs)
