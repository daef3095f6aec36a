"""Decoding image files into 8-bit RGB: torchvision's libjpeg-turbo / libpng decoders into uint8
tensors where their pixels equal PIL's, PIL for everything else, one-line ``DataError``s naming the
file for anything unreadable.

Sizes come from the file's header before anything is allocated (``image_size``): an image over the
pixel limit (PIL's ``Image.MAX_IMAGE_PIXELS``, which a user may raise) is refused before it is
decoded, and so is a file far larger than its header's pixels can need (a small image with gigabytes
appended), before its bytes are read.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core.errors import DataError, short_repr

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A file may hold at most this many bytes per declared pixel (uncompressed float RGBA: 16) plus room for
# metadata (EXIF, ICC profiles, thumbnails); anything larger is not an image of that size.
MAX_BYTES_PER_PIXEL = 16
METADATA_BYTES = 16 << 20


def max_pixels() -> int | None:
    """The pixel limit (width x height) of one image: PIL's ``Image.MAX_IMAGE_PIXELS`` (None: none)."""
    return Image.MAX_IMAGE_PIXELS or None


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the header of the image file ``path`` (PIL parses the header only), or
    None when PIL cannot identify the file (``load_rgb`` then reports why). A one-line ``DataError``
    naming the file when the image is over ``max_pixels()`` or the file is larger than its pixels can
    need (``MAX_BYTES_PER_PIXEL`` per pixel + ``METADATA_BYTES``)."""
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in our words
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: image is over the pixel limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError):  # not identified: load_rgb gives PIL's message
        return None
    if limit and width * height > limit:
        raise DataError(
            f"{path}: image is {width}x{height} = {width * height} pixels, over the pixel limit of {limit} "
            f"(PIL.Image.MAX_IMAGE_PIXELS); refused before decoding"
        )
    size, bound = os.path.getsize(path), MAX_BYTES_PER_PIXEL * width * height + METADATA_BYTES
    if size > bound:
        raise DataError(
            f"{path}: file is {size} bytes, more than a {width}x{height} image can need ({bound}); "
            f"refused before reading it"
        )
    return width, height


def load_rgb(path: str | Path):
    """An image file as an 8-bit RGB PIL image (palette, grey, 16-bit, CMYK and alpha handled); a
    file PIL cannot read, one over the size limits (``image_size``), and a JPEG whose data libjpeg
    reports corrupt (``check_jpeg``), is a one-line ``DataError`` naming it."""
    if image_size(path) is not None:
        check_jpeg(path)
    return _load_rgb_pil(path)


def _load_rgb_pil(path: str | Path):
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
        raise DataError(f"{path}: cannot read image ({short_repr(str(e), 100)})") from None


def pil_to_uint8(img):
    """An RGB PIL image as a (3, H, W) uint8 tensor (channels-last in memory, as torchvision's
    decoders return it: the layout torch's uint8 antialiased resize is fast on)."""
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def _png_is_plain(data) -> bool:
    """An 8-bit grey / RGB / palette PNG without transparency (``tRNS``): the PNGs torchvision
    decodes exactly as ``load_rgb`` does. Alpha, 16-bit, low-bit RGB and transparent palettes go
    through PIL (white background, min-max scaling of wide greys)."""
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR":
        return False
    depth, colour = int(data[24]), int(data[25])
    if depth != 8 or colour not in (0, 2, 3):
        return False
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
    from torchvision.io import decode_jpeg

    img, text = _with_c_stderr(lambda: decode_jpeg(raw, mode=mode))
    message = _corrupt_message(text)
    if message is not None:
        raise DataError(f"{path or 'JPEG data'}: corrupt JPEG ({message})")
    if text:
        sys.stderr.write(text)
    return img


def _read_bytes(path) -> np.ndarray | None:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError):
        return None


def check_jpeg(path: str | Path) -> None:
    """Raise a one-line ``DataError`` naming ``path`` when it is a JPEG whose data libjpeg reports
    corrupt or cut short; other files (and unreadable ones: the caller reports those) pass. The
    caller has checked the file's size against its header (``image_size``)."""
    from torchvision.io import ImageReadMode

    data = _read_bytes(path)
    if data is None or data[:3].tobytes() != JPEG_MAGIC:
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
    JPEG whose data libjpeg reports corrupt is a ``DataError`` naming ``path``. The caller has
    checked the header's pixel count (``image_size``)."""
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
                return img
            if data[:8].tobytes() == PNG_MAGIC and _png_is_plain(data):
                return decode_png(raw, mode=ImageReadMode.RGB)
    except RuntimeError:  # broken or truncated: PIL gives the error message
        return None
    return None


def decode_rgb(path: str | Path):
    """An image file as a (3, H, W) uint8 RGB tensor. The header is checked first (``image_size``);
    JPEGs and plain PNGs are then decoded by torchvision (``torchvision.io``); every other file -- and
    any file torchvision refuses -- goes through PIL, so palette / alpha / 16-bit / CMYK images and
    broken files give exactly ``load_rgb``'s pixels and its one-line ``DataError``."""
    if image_size(path) is None:  # PIL cannot identify it: its error message
        return pil_to_uint8(_load_rgb_pil(path))
    data = _read_bytes(path)
    if data is not None and len(data) >= 8:
        img = _torchvision_decode(data, path)
        if img is not None:
            return img
        if data[:3].tobytes() == JPEG_MAGIC:  # already checked by torchvision's libjpeg above
            return pil_to_uint8(_load_rgb_pil(path))
    return pil_to_uint8(_load_rgb_pil(path))  # not a JPEG: nothing for check_jpeg
