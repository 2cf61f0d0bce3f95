"""Sources that read no files: scikit-learn's 8x8 digits, and numpy arrays handed over through the Python API."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .dataset import SOURCES, Dataset, resized


# -- sklearn digits: 8x8, no official test split ---------------------------------------------------
@SOURCES.register("digits")
def digits(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    # A fixed stratified third per class (seed 0, never the run seed) so the test set never changes.
    rng = np.random.default_rng(0)
    test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == k))[: int((y == k).sum()) // 3]
                                   for k in range(10)]))
    train = np.setdiff1d(np.arange(len(y)), test)
    return resized(Dataset("digits", x[train], y[train], x[test], y[test], [str(i) for i in range(10)], False),
                   image_size)


# -- arrays: numpy arrays handed over through the Python API ---------------------------------------
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y", "classes", "hflip")


def _as_images(x, key: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W); ambiguous shapes count as channels-first
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"arrays[{key!r}] has shape {np.shape(x)}; pass (N, H, W), (N, H, W, C) or (N, C, H, W) "
                        "with C = 1 or 3")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind != "f":
        raise DataError(f"arrays[{key!r}] has dtype {x.dtype}; pass uint8 (0..255) or float in [0, 1]")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"arrays[{key!r}] is float with values in [{x.min():.4g}, {x.max():.4g}] "
                        "(or NaN/inf); float images must lie in [0, 1]: divide by 255 or pass uint8")
    return np.round(x * 255).astype(np.uint8)


def _as_labels(y, key: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"arrays[{key!r}] must be a 1-D array of integer class ids, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


@SOURCES.register("arrays")
def arrays(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    """Images uint8 or float in [0, 1], labels in [0, K); K = len(classes) or the largest label + 1."""
    if not isinstance(arrays, dict):
        raise DataError("data.name=arrays needs load_dataset(cfg, arrays={'train_x': ..., 'train_y': ..., "
                        "'test_x': ..., 'test_y': ...})")
    unknown = sorted(set(arrays) - set(ARRAY_KEYS))
    missing = [k for k in ARRAY_KEYS[:4] if k not in arrays]
    if unknown or missing:
        raise DataError(f"arrays: {'unknown key ' + repr(unknown[0]) if unknown else 'missing ' + repr(missing[0])}; "
                        f"keys are {', '.join(ARRAY_KEYS)} (classes and hflip optional)")
    xs = [_as_images(arrays[k], k) for k in ("train_x", "test_x")]
    ys = [_as_labels(arrays[k], k) for k in ("train_y", "test_y")]
    classes = arrays.get("classes")
    if classes is None:
        classes = [str(i) for i in range(1 + int(max(y.max(initial=0) for y in ys)))]
    ds = Dataset("arrays", xs[0], ys[0], xs[1], ys[1], list(classes), bool(arrays.get("hflip", False)))
    return resized(ds, image_size)
