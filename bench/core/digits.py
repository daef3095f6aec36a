"""scikit-learn's 1,797 real handwritten digits: unlabelled pretraining images and disjoint labelled
splits (``Digits``), and the labelled ones as an image folder for the classification tasks."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.core.errors import BenchError
from bench.core.io import atomic_open
from bench.core.transforms import wants_tensor

DIGITS_SIZE = 64  # the 8x8 scans are upscaled once to this many pixels (bicubic)
DIGITS_PER_CLASS = {"labelled": 10, "eval": 80}  # per digit; every other image is "pretrain"
DIGITS_SPLITS = ("pretrain", "labelled", "eval")


@functools.lru_cache(maxsize=1)
def _digits():
    """(images (1797, 3, S, S) uint8, labels (1797,) int64, split name per image). The split is fixed
    (numpy seed 0, per class): 10 labelled and 80 eval images per digit, the remaining 897 for
    pretraining; the three sets are disjoint."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # values 0..16 -> 0..255
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bicubic", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(d.target.astype(np.int64))
    split = np.full(len(labels), "pretrain", dtype=object)
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        n_lab = DIGITS_PER_CLASS["labelled"]
        split[idx[:n_lab]] = "labelled"
        split[idx[n_lab : n_lab + DIGITS_PER_CLASS["eval"]]] = "eval"
    return x, labels, split


def digits_split(split: str):
    """(images (N, 3, 64, 64) uint8, labels (N,), indices into ``load_digits()``) of one split."""
    if split not in DIGITS_SPLITS:
        raise BenchError(f"unknown digits split {split!r}; known: {', '.join(DIGITS_SPLITS)}")
    x, y, names = _digits()
    idx = np.flatnonzero(names == split)
    return x[idx], y[idx], idx


class Digits:
    """One split of scikit-learn's 1,797 real handwritten digits (``sklearn.datasets.load_digits``,
    8x8 scans upscaled to the model's input size, grey replicated to 3 channels), one epoch = each image once.
    ``labels=False``: items are ``transform(image)`` (self-supervised pretraining never sees a
    label); ``labels=True``: ``(transform(image), digit)``. Images are uint8 tensors when
    ``transform`` takes them, else PIL images."""

    classes = [str(c) for c in range(10)]

    def __init__(self, split: str, transform, labels: bool = False):
        x, y, self.indices = digits_split(split)
        if wants_tensor(transform):
            self.images = list(x)
        else:
            self.images = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x]
        self.targets = y.tolist()
        self.split, self.transform, self.labels = split, transform, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.transform(self.images[i])
        return (img, self.targets[i]) if self.labels else img


def write_digits_folder(root: str | Path, train: str = "labelled", val: str = "eval") -> Path:
    """The labelled digits as an image folder for the classification tasks (``root/{train,val}/<digit>/
    <index>.png``, 64 px RGB): ``train`` = the 100 labelled images, ``val`` = the 800 eval images,
    both disjoint from the pretraining split. Written atomically per file; existing files are kept."""
    root = Path(root)
    for folder, split in (("train", train), ("val", val)):
        x, y, idx = digits_split(split)
        for img, label, i in zip(x, y.tolist(), idx.tolist()):
            path = root / folder / str(label) / f"{i:04d}.png"
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(f, format="PNG")
    return root
