"""The `folder` source: root/{train,test}/<class>/<image>, decoded once and cached as .npy.

Decoding 60k JPEGs takes a few seconds; the decoded arrays are cached under ``$SEMISUP_CACHE``
(default ``~/.cache/semisup``), keyed by the folder's path, file count, newest mtime and the
requested size, and written atomically, so the next load takes well under a second. The user's
data directory is never written.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..config import cache_root
from ..errors import DataError
from .dataset import SOURCES, Dataset, check_image_memory, why

# -- folder: root/{train,test}/<class>/<image> -----------------------------------------------------
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
CACHE_VERSION = 1  # bump when the cached array layout changes
PARALLEL_MIN_CPUS, PARALLEL_MIN_FILES = 4, 8192  # below either, decode in this process


def _scan(root: Path, part: str) -> tuple[dict[str, list[str]], int]:
    """Class name -> sorted image paths of one split, and the newest mtime (ns) of files and folders."""
    d = root / part
    if not d.is_dir():
        raise DataError(f"{root} has no {part}/ folder; the folder source expects {root}/train/<class>/<image> "
                        f"and {root}/test/<class>/<image>")
    newest, out = d.stat().st_mtime_ns, {}
    for c in sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")):
        entries = [e for e in os.scandir(d / c) if not e.name.startswith(".")]  # skip .DS_Store and friends
        if not entries:
            raise DataError(f"class folder {d / c} is empty; add images to it or remove it from train/ and test/")
        newest = max([newest, (d / c).stat().st_mtime_ns] + [e.stat().st_mtime_ns for e in entries])
        out[c] = sorted(e.path for e in entries)
    if not out:
        raise DataError(f"{d} holds no class folders; put each class's images in {d}/<class>/")
    return out, newest


def _decode(paths: list[str], size: int | None) -> tuple[list[np.ndarray], str | None]:
    """Decode images to (H, W) or (H, W, 3) uint8; stops at the first unreadable file and names it."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if im.mode in GRAY_MODES else "RGB")
                if size and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                out.append(np.asarray(im))
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ...
            return out, f"cannot read image {p} ({why(e)}); remove it or replace it with a valid image"
    return out, None


def _decode_all(paths: list[str], size: int | None) -> list[np.ndarray]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [paths[i:i + 2048] for i in range(0, len(paths), 2048)]
    workers = min(os.cpu_count() or 1, 8, len(chunks))
    # Small JPEGs decode at ~20k/s on one core; threads do not help (PIL holds the GIL for such small
    # images) and on 2 busy cores forked workers measured 0.6x-1.4x, so they start only at 4+ cores.
    # fork (not spawn) never re-runs the user's script in the workers.
    if (workers >= PARALLEL_MIN_CPUS and len(paths) >= PARALLEL_MIN_FILES
            and "fork" in multiprocessing.get_all_start_methods()):
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
            results = list(ex.map(_decode, chunks, [size] * len(chunks)))
    else:
        results = [_decode(c, size) for c in chunks]
    images = []
    for imgs, err in results:
        if err:
            raise DataError(err)
        images += imgs
    return images


def _stack(images: list[np.ndarray], paths: list[str]) -> np.ndarray:
    """(N, C, H, W): RGB when any image is colour (grey ones are replicated), else one channel."""
    hw = images[0].shape[:2]
    for im, p in zip(images, paths):
        if im.shape[:2] != hw:
            raise DataError(f"images differ in size: {paths[0]} is {hw[1]}x{hw[0]} but {p} is "
                            f"{im.shape[1]}x{im.shape[0]}; set data.image_size=N to resize them all to NxN")
    x = np.empty((len(images), 3 if any(im.ndim == 3 for im in images) else 1, *hw), np.uint8)
    for i, im in enumerate(images):
        x[i] = im.transpose(2, 0, 1) if im.ndim == 3 else im[None]  # (1, H, W) broadcasts to 3 channels
    return x


def load_folder(root: Path, size: int | None):
    """Decode (or read from the cache) -> train_x, train_y, test_x, test_y, classes."""
    try:
        (train, t_new), (test, s_new) = _scan(root, "train"), _scan(root, "test")
    except OSError as e:  # unreadable folder (permissions, a dangling link)
        raise DataError(f"cannot list the images under {root} ({why(e)}); check the folder's permissions") from None
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DataError(f"train/ and test/ in {root} hold different class folders (only in train: "
                        f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'}); "
                        "give both the same classes")
    classes = sorted(train)
    paths, labels = [], []
    for split in (train, test):
        for k, c in enumerate(classes):
            paths += split[c]
            labels += [k] * len(split[c])
    n_train = sum(len(v) for v in train.values())
    # Any added, removed or touched file changes the count or the newest mtime, hence the key.
    key = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), len(paths), max(t_new, s_new),
                                     size]).encode()).hexdigest()[:20]
    cache = cache_root() / "folder" / f"{key}.npy"
    x = None
    if cache.is_file():
        try:
            x = np.load(cache)
            x = x if x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(paths) else None
        except Exception:  # a damaged cache is rebuilt, never fatal
            x = None
    if x is None:
        if size:
            check_image_memory(len(paths), 3, size)  # RGB at most
        x = _stack(_decode_all(paths, size), paths)
        try:  # temp file + rename: a crash or a concurrent run never leaves a half-written cache
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{key}.{os.getpid()}.tmp.npy")
            np.save(tmp, x)
            os.replace(tmp, cache)
        except OSError as e:
            warnings.warn(f"could not cache decoded images at {cache} ({why(e)}); the next load decodes again",
                          stacklevel=3)
    y = np.array(labels, np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes


@SOURCES.register("folder")
def folder(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    """``root/train/<class>/*`` and ``root/test/<class>/*``; natural images assumed (hflip True)."""
    if root is None:
        raise DataError("data.name=folder needs data.root=DIR holding train/<class>/* and test/<class>/* images")
    return Dataset("folder", *load_folder(Path(root).expanduser(), image_size), True)


