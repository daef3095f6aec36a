"""Images: the embedded default dataset (real photos bundled in scikit-image / scikit-learn) and
image folders on disk.

The embedded set needs no download: scikit-image's wheel ships a handful of real photographs and
scikit-learn ships two sample photos, and scikit-learn's 1,797 handwritten digits (``Digits``) give
a small real dataset with labels, split into unlabelled pretraining images and disjoint labelled sets. Everything in the demo (pretraining crops, backgrounds of the
generated COCO / ADE20K / classification sets) is cut from these.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

# Real colour photographs in skimage.data (no download: they are inside the wheel).
SKIMAGE_COLOR = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
# Real grey photographs, replicated to 3 channels.
SKIMAGE_GRAY = ("camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel")


@functools.lru_cache(maxsize=1)
def embedded_photos() -> tuple[np.ndarray, ...]:
    """All bundled real photographs as HxWx3 uint8 arrays (read-only), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_COLOR + SKIMAGE_GRAY:
        img = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":  # returns (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-8))).astype(np.uint8)
        out.append(img)
    out.extend(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)
    for im in out:
        im.setflags(write=False)
    return tuple(out)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def list_images(root: str | Path, skip_hidden: bool = False) -> list[Path]:
    """Sorted image files under ``root``, recursively, as ``Path.rglob`` finds them (symlinked
    sub-folders are not entered; unreadable sub-folders are passed over) but from ``os.scandir``
    entry types alone: no file is opened or stat-ed (symlinks aside), which matters at 1 M files.
    ``skip_hidden``: leave out files and folders whose name starts with '.' (``._x.jpg`` and the like)."""
    root = Path(root)
    files, folders = [], [str(root)]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for e in entries:
                    if skip_hidden and e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        folders.append(e.path)
                    elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                        files.append(Path(e.path))
        except OSError:
            continue
    return sorted(files)


def class_folders(directory: str | Path) -> list[str]:
    """The sorted names of the sub-folders of ``directory`` (ImageFolder classes), hidden ones left
    out; a missing or unlistable folder is a one-line ``DataError``."""
    from bench.core.errors import DataError

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found")
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{directory}: cannot list ({e.strerror})") from None


def read_class_folders(root: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(classes, [(image path, class index)])`` of an ImageFolder layout ``root/<class>/**/<image>``
    (torchvision's ``ImageFolder``: classes are the sorted sub-folders, images any depth below them,
    hidden names left out). With ``classes`` given (a train split's), a folder outside them is an error.
    A class folder without images is a one-line ``DataError``."""
    from bench.core.errors import DataError

    root = Path(root)
    names = class_folders(root)
    if classes is None:
        classes = names
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in names:
        if name not in index:
            raise DataError(f"{root / name}: class {_short(name)} is not a train class")
        images = list_images(root / name, skip_hidden=True)
        if not images:
            raise DataError(f"{root / name}: class folder has no images")
        samples.extend((p, index[name]) for p in images)
    return classes, samples


class LabelledImages:
    """``(transform(image), label)`` for a list of ``(image path, label)``: a map-style dataset. Images
    are decoded to (3, H, W) uint8 tensors by ``decode_rgb`` when the transform takes tensors
    (``TensorTransform``), else to RGB PIL images by ``load_rgb``; a bad file is a ``DataError`` naming it."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform=None):
        self.samples, self.classes, self.transform = samples, classes, transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = decode_rgb(path) if wants_tensor(self.transform) else load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


# --------------------------------------------------------------------------------------------------
# Decoding: torchvision's libjpeg-turbo / libpng decoders into uint8 tensors, PIL for everything else
# --------------------------------------------------------------------------------------------------
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _short(value, limit: int = 60) -> str:
    """repr() of a value, cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_rgb(path: str | Path):
    """An image file as an 8-bit RGB PIL image (palette, grey, 16-bit, CMYK and alpha handled); a
    file PIL cannot read, and a JPEG whose data libjpeg reports corrupt (``check_jpeg``), is a
    one-line ``DataError`` naming it."""
    check_jpeg(path)
    return _load_rgb_pil(path)


def _load_rgb_pil(path: str | Path):
    from PIL import Image

    from bench.core.errors import DataError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # scale wide greys to 8 bit
                a = np.asarray(img, dtype=np.float64)
                span = max(float(a.max() - a.min()), 1e-12)
                img = Image.fromarray(((a - a.min()) * (255.0 / span)).astype(np.uint8))
            if img.mode == "P":
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA"):  # transparent areas become white, not black
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img.convert("RGBA"))
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL.UnidentifiedImageError is an OSError; some plugins raise SyntaxError on broken files
        raise DataError(f"{path}: cannot read image ({_short(str(e), 100)})") from None


def pil_to_uint8(img):
    """An RGB PIL image as a (3, H, W) uint8 tensor (channels-last in memory, as torchvision's
    decoders return it: the layout torch's uint8 antialiased resize is fast on)."""
    import torch

    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def _png_is_plain(data) -> bool:
    """An 8-bit grey / RGB / palette PNG without transparency (``tRNS``) and within PIL's pixel
    limit: the PNGs torchvision decodes exactly as ``load_rgb`` does. Alpha, 16-bit, low-bit RGB
    and transparent palettes go through PIL (white background, min-max scaling of wide greys)."""
    from PIL import Image

    if len(data) < 33 or bytes(data[12:16]) != b"IHDR":
        return False
    width, height = int.from_bytes(bytes(data[16:20]), "big"), int.from_bytes(bytes(data[20:24]), "big")
    depth, colour = int(data[24]), int(data[25])
    if depth != 8 or colour not in (0, 2, 3):
        return False
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return False  # PIL warns (or refuses a decompression bomb): leave that to it
    pos = 8
    while pos + 8 <= len(data):  # chunks before the image data; tRNS must precede IDAT
        kind = bytes(data[pos + 4 : pos + 8])
        if kind == b"tRNS":
            return False
        if kind in (b"IDAT", b"IEND"):
            return True
        pos += 12 + int.from_bytes(bytes(data[pos : pos + 4]), "big")
    return False


# libjpeg's warnings for damaged entropy-coded data: it goes on and returns an image (grey or shifted
# blocks from the damage on), printing the message on stderr without the file's name. Pillow drops
# these warnings altogether.
LIBJPEG_CORRUPT = (
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Invalid SOS parameters",
    "Unsupported marker type",
    "Inconsistent progression sequence",
    "Huffman table 0x",
)
_stderr_lock = threading.Lock()
_stderr_file: dict[int, object] = {}  # pid -> a temp file that receives fd 2 during one decode


def _with_c_stderr(fn):
    """``(fn(), what C code wrote to stderr meanwhile)``: fd 2 is pointed at a temp file for the call
    (one file per process, reused), so libjpeg's messages can be read and tied to the file decoded."""
    import sys

    with _stderr_lock:
        f = _stderr_file.get(os.getpid())
        if f is None:
            f = _stderr_file[os.getpid()] = tempfile.TemporaryFile()
        f.seek(0)
        f.truncate()
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            out = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return out, f.read().decode("utf-8", "replace")


def _corrupt_message(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(LIBJPEG_CORRUPT):
            return line.strip()
    return None


def _decode_jpeg_checked(raw, mode, path):
    """torchvision's ``decode_jpeg``, with libjpeg's corrupt-data warnings raised as a ``DataError``
    naming ``path`` (any other C-level stderr output is passed on)."""
    import sys

    from torchvision.io import decode_jpeg

    from bench.core.errors import DataError

    img, text = _with_c_stderr(lambda: decode_jpeg(raw, mode=mode))
    message = _corrupt_message(text)
    if message is not None:
        raise DataError(f"{path or 'JPEG data'}: corrupt JPEG ({message})")
    if text:
        sys.stderr.write(text)
    return img


def check_jpeg(path: str | Path) -> None:
    """Raise a one-line ``DataError`` naming ``path`` when it is a JPEG whose data libjpeg reports
    corrupt or cut short; other files (and unreadable ones: the caller reports those) pass."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError):
        return
    if data[:3].tobytes() != JPEG_MAGIC:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        try:
            _decode_jpeg_checked(torch.from_numpy(data), ImageReadMode.UNCHANGED, path)
        except RuntimeError:  # truncated or not decodable: PIL's error message names it
            return


def _torchvision_decode(data, path=None):
    """(3, H, W) uint8 RGB from JPEG / PNG bytes with torchvision.io, or None where its result could
    differ from ``load_rgb``'s (CMYK/YCCK JPEGs, PNGs with alpha / 16 bit, anything it rejects). A
    JPEG whose data libjpeg reports corrupt is a ``DataError`` naming ``path``."""
    import warnings

    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_png

    raw = torch.from_numpy(data)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency)
            warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
            if data[:3].tobytes() == JPEG_MAGIC:
                img = _decode_jpeg_checked(raw, ImageReadMode.UNCHANGED, path)
                if img.shape[0] == 1:  # grey: replicate like PIL's L -> RGB, keep the HWC layout
                    img = img.permute(1, 2, 0).expand(-1, -1, 3).contiguous().permute(2, 0, 1)
                elif img.shape[0] != 3:  # CMYK / YCCK: PIL knows Adobe's inverted CMYK
                    return None
                limit = Image.MAX_IMAGE_PIXELS
                return img if not limit or img.shape[1] * img.shape[2] <= limit else None
            if data[:8].tobytes() == PNG_MAGIC and _png_is_plain(data):
                return decode_png(raw, mode=ImageReadMode.RGB)
    except RuntimeError:  # broken or truncated: PIL gives the error message
        return None
    return None


def decode_rgb(path: str | Path):
    """An image file as a (3, H, W) uint8 RGB tensor. JPEGs and plain PNGs are decoded by
    torchvision (``torchvision.io``); every other file -- and any file torchvision refuses -- goes
    through ``load_rgb``, so palette / alpha / 16-bit / CMYK images and broken files give exactly the
    PIL path's pixels and its one-line ``DataError``."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError):
        data = None
    if data is not None and len(data) >= 8:
        img = _torchvision_decode(data, path)
        if img is not None:
            return img
        if data[:3].tobytes() == JPEG_MAGIC:  # already checked by torchvision's libjpeg above
            return pil_to_uint8(_load_rgb_pil(path))
    return pil_to_uint8(load_rgb(path))


def wants_tensor(transform) -> bool:
    """Whether ``transform`` takes (3, H, W) uint8 tensors (then readers decode with ``decode_rgb``)."""
    return bool(getattr(transform, "tensor_input", False))


def _v2_equivalent(steps):
    """(v2 geometric transforms, mean, std) doing on uint8 tensors what the torchvision v1 /
    timm ``steps`` do on PIL images -- crop / resize / flip, then to-tensor, then normalise -- or
    None when a step has no exact v2 counterpart (RandAugment, timm's random interpolation, ...)."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    tensor_modes = (
        T.InterpolationMode.NEAREST,
        T.InterpolationMode.NEAREST_EXACT,
        T.InterpolationMode.BILINEAR,
        T.InterpolationMode.BICUBIC,
    )
    geometric, mean, std, to_tensor = [], None, None, False
    for t in steps:
        name = type(t).__name__
        if not to_tensor and type(t) is T.RandomResizedCrop and t.interpolation in tensor_modes:
            geometric.append(
                v2.RandomResizedCrop(
                    t.size, scale=t.scale, ratio=t.ratio, interpolation=t.interpolation, antialias=True
                )
            )
        elif not to_tensor and type(t) is T.Resize and t.interpolation in tensor_modes:
            geometric.append(v2.Resize(t.size, interpolation=t.interpolation, max_size=t.max_size, antialias=True))
        elif not to_tensor and type(t) is T.CenterCrop:
            geometric.append(v2.CenterCrop(t.size))
        elif not to_tensor and type(t) is T.RandomHorizontalFlip:
            geometric.append(v2.RandomHorizontalFlip(t.p))
        elif not to_tensor and (type(t) is T.ToTensor or name == "MaybeToTensor"):
            to_tensor = True
        elif to_tensor and mean is None and type(t) is T.Normalize:
            mean, std = t.mean, t.std
        else:
            return None
    if not to_tensor:
        return None
    return v2.Compose(geometric), mean, std


class TensorTransform:
    """A PIL pipeline (``reference``: torchvision / timm crop, resize, flip, to-tensor, normalise)
    that also runs on (3, H, W) uint8 tensors with ``torchvision.transforms.v2`` kernels (antialiased
    uint8 resize, ~2x faster than PIL's here). A PIL image goes through ``reference`` unchanged. The
    v2 transforms draw the same random numbers from torch's RNG as the v1 ones, so one seed gives the
    same crop box and flip on either path; pixels differ only by the resize kernels' rounding."""

    tensor_input = True

    def __init__(self, reference, tensor_ops, mean=None, std=None):
        import torch

        self.reference, self.tensor_ops = reference, tensor_ops
        self.transforms = getattr(reference, "transforms", [reference])
        self.scale = self.shift = None
        if mean is not None:  # (x / 255 - mean) / std as one multiply-add on the uint8 values
            std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = -torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img):
        import torch

        if not isinstance(img, torch.Tensor):
            return self.reference(img)
        if img.dtype != torch.uint8 or img.ndim != 3:
            raise TypeError(f"TensorTransform takes (3, H, W) uint8 image tensors, got {img.dtype} {tuple(img.shape)}")
        x = self.tensor_ops(img).to(torch.float32, memory_format=torch.contiguous_format)
        if self.scale is None:
            return x.div_(255.0)
        return x.mul_(self.scale).add_(self.shift)

    def __repr__(self):
        return f"TensorTransform(tensor: {self.tensor_ops}, PIL: {self.reference})"


def as_tensor_transform(reference):
    """``reference`` wrapped in a ``TensorTransform`` when all its steps have v2 counterparts,
    else ``reference`` itself (readers then hand it PIL images)."""
    found = _v2_equivalent(getattr(reference, "transforms", [reference]))
    return reference if found is None else TensorTransform(reference, *found)


# --------------------------------------------------------------------------------------------------
# Pretraining datasets
# --------------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrain_transform(img_size: int, scale=(0.2, 1.0), tensor: bool = True):
    """MAE's pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip + normalise.
    ``tensor=True``: a ``TensorTransform`` (uint8 tensors through v2, PIL images through the v1
    pipeline); ``tensor=False``: the plain v1 PIL pipeline."""
    from torchvision import transforms as T

    reference = T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return as_tensor_transform(reference) if tensor else reference


class EmbeddedCrops:
    """The embedded default dataset: random crops of the bundled real photographs. ``length`` is the
    number of samples per epoch (photos are cycled); each sample is a fresh random crop. The photos
    are kept as uint8 tensors when ``transform`` takes them, else as PIL images."""

    def __init__(self, transform, length: int = 1024):
        if wants_tensor(transform):
            import torch

            self.images = [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in embedded_photos()]
        else:
            from PIL import Image

            self.images = [Image.fromarray(np.ascontiguousarray(a)) for a in embedded_photos()]
        self.transform, self.length = transform, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.transform(self.images[i % len(self.images)])


class ImageFolderImages:
    """Every image under a folder (ImageFolder layout or flat), labels ignored.

    Construction only lists the files and decodes the first readable one (ImageNet's 1.28 M files
    are ready after one directory walk, not after opening every file). A file that cannot be decoded
    when its turn comes is skipped with a warning naming it, and its samples come from the next
    readable file; a folder in which no file can be read is a ``DataError`` (at construction)."""

    def __init__(self, root: str | Path, transform):
        import warnings

        from bench.core.errors import DataError

        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        files = list_images(root)
        if not files:
            raise DataError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.root, self.files, self.transform = root, files, transform
        self.bad: set[int] = set()
        problems = []
        for i in range(len(files)):
            try:
                self._load(i)
                break
            except DataError as e:
                self.bad.add(i)
                problems.append(e)
        else:
            raise DataError(
                f"image folder {root}: none of its {len(files)} image files can be read (first: {files[0]})"
            )
        for e in problems:
            warnings.warn(self._skip_message(e), stacklevel=2)

    def _load(self, i):
        return decode_rgb(self.files[i]) if wants_tensor(self.transform) else load_rgb(self.files[i])

    def _skip_message(self, error) -> str:
        return (
            f"image folder {self.root}: skipping 1 unreadable image ({error}); its samples use the next readable file"
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import warnings

        from bench.core.errors import DataError

        n = len(self.files)
        for k in range(n):
            j = (i + k) % n
            if j in self.bad:
                continue
            try:
                img = self._load(j)
            except DataError as e:
                self.bad.add(j)
                warnings.warn(self._skip_message(e), stacklevel=2)
                continue
            return self.transform(img)
        raise DataError(f"image folder {self.root}: none of its {n} image files can be read (first: {self.files[0]})")


# --------------------------------------------------------------------------------------------------
# scikit-learn's handwritten digits: unlabelled pretraining images and disjoint labelled splits
# --------------------------------------------------------------------------------------------------
DIGITS_SIZE = 64  # the 8x8 scans are upscaled once to this many pixels (bicubic)
DIGITS_PER_CLASS = {"labelled": 10, "eval": 80}  # per digit; every other image is "pretrain"
DIGITS_SPLITS = ("pretrain", "labelled", "eval")


@functools.lru_cache(maxsize=1)
def _digits():
    """(images (1797, 3, S, S) uint8, labels (1797,) int64, split name per image). The split is fixed
    (numpy seed 0, per class): 10 labelled and 80 eval images per digit, the remaining 897 for
    pretraining; the three sets are disjoint."""
    import torch
    import torch.nn.functional as F
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
    from bench.core.errors import BenchError

    if split not in DIGITS_SPLITS:
        raise BenchError(f"unknown digits split {split!r}; known: {', '.join(DIGITS_SPLITS)}")
    x, y, names = _digits()
    idx = np.flatnonzero(names == split)
    return x[idx], y[idx], idx


class Digits:
    """One split of scikit-learn's 1,797 real handwritten digits (``sklearn.datasets.load_digits``,
    8x8 scans upscaled to 64 px, grey replicated to 3 channels), one epoch = each image once.
    ``labels=False``: items are ``transform(image)`` (self-supervised pretraining never sees a
    label); ``labels=True``: ``(transform(image), digit)``. Images are uint8 tensors when
    ``transform`` takes them, else PIL images."""

    classes = [str(c) for c in range(10)]

    def __init__(self, split: str, transform, labels: bool = False):
        x, y, self.indices = digits_split(split)
        if wants_tensor(transform):
            self.images = list(x)
        else:
            from PIL import Image

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
    from PIL import Image

    from bench.core.io import atomic_open

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


def pretrain_dataset(data: str, img_size: int, epoch_size: int = 1024):
    """``data='embedded'`` (default photos, ``epoch_size`` crops per epoch), ``'digits'`` (the
    unlabelled pretraining split of the sklearn digits, one epoch = each image once) or an image folder."""
    tf = pretrain_transform(img_size)
    if data in ("embedded", "", None):
        return EmbeddedCrops(tf, epoch_size)
    if data == "digits":
        return Digits("pretrain", tf)
    return ImageFolderImages(data, tf)
