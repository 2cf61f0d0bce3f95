"""Image files as users have them -> uint8 (C, H, W) arrays: one decoding policy for training and predict.

- EXIF orientation is applied (phone photos), then the mode is converted: images are RGB unless every
  image of the dataset is greyscale; palette and RGBA images become RGB (alpha dropped, as PIL's and
  torchvision's ``convert("RGB")`` do), greyscale ones are replicated when the dataset is RGB.
- ``fit`` says how an image becomes ``size`` x ``size``: ``crop`` (the pool and csv sources, and predict
  for their runs) scales the shorter side to ``size`` and keeps the centre square, so nothing is
  stretched; ``stretch`` (the folder source, kept as it always was) resizes the whole image to the square.
  Both use PIL's bilinear filter, which widens its support when it shrinks (antialiased).
  ``size=None`` keeps the image's own size (every image must then have the same one).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not Path(name).name.startswith(".")


def list_images(path: str | Path) -> list[str]:
    """Every image file under ``path`` (a file or a folder, searched recursively; hidden entries skipped),
    sorted so that the order, hence a seeded split, never depends on the file system."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    out = []
    for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [os.path.join(dirpath, f) for f in filenames if is_image(f)]
    return sorted(out)


def is_grey(path: str) -> bool:
    """From the header only (PIL opens lazily): does the file hold a greyscale image?"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in GREY_MODES
    except Exception as e:  # UnidentifiedImageError, OSError, ...
        raise DataError(f"cannot read image {path} ({why(e)}); remove it or replace it with a valid image") from None


def read_image(path: str, size: int | None, channels: int, fit: str = "crop") -> np.ndarray:
    """One file -> (channels, H, W) uint8 under the policy above; a bad file is a one-line DataError."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":  # palette: through RGBA so a transparent index does not pick a random colour
                im = im.convert("RGBA")
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size, size):
                w, h = im.size
                if fit == "crop":
                    s = min(w, h)
                    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)  # the centre square, then scaled
                    im = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
                else:
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(im)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
        raise DataError(f"cannot read image {path} ({why(e)}); remove it or replace it with a valid image") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)


def read_images(paths: list[str], size: int | None, channels: int, fit: str = "crop") -> np.ndarray:
    """Several files -> (N, C, H, W) uint8; without ``size`` they must share one size."""
    out = [read_image(p, size, channels, fit) for p in paths]
    for p, a in zip(paths, out):
        if a.shape != out[0].shape:
            raise DataError(f"images differ in size: {paths[0]} is {out[0].shape[2]}x{out[0].shape[1]} but {p} is "
                            f"{a.shape[2]}x{a.shape[1]}; set data.image_size=N to bring them all to NxN")
    return np.stack(out) if out else np.empty((0, channels, size or 1, size or 1), np.uint8)
