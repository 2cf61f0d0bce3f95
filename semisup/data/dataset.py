"""The :class:`Dataset` every source returns, the registry of sources and :func:`load_dataset`.

A source is a plain factory registered in ``SOURCES`` with the signature
``(root=None, download=False, image_size=None, arrays=None) -> Dataset``; its images are uint8 and
channels-first. Each reader module (``idx``, ``cifar``, ``svhn``, ``stl10``, ``in_memory``, ``folder``,
``pool``) parses its format itself so that loading is fast and every failure becomes a one-line
:class:`DataError` that says what is wrong and how to fix it; importing :mod:`semisup.data` imports them
all, so every source is registered before a name is looked up. Readers never write into the user's data
directory. Also here: what every reader shares once it has arrays, the memory check and the resize.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import Registry

SOURCES = Registry("dataset")


def why(e: BaseException) -> str:
    """One line naming an exception, for messages that must never show a traceback."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@dataclass(eq=False)  # eq=False: comparing datasets element-wise is never what anyone wants
class Dataset:
    name: str
    train_x: np.ndarray  # (N, C, H, W) uint8
    train_y: np.ndarray  # (N,) int64 in [0, K)
    test_x: np.ndarray  # (M, C, H, W) uint8
    test_y: np.ndarray  # (M,) int64 in [0, K)
    classes: list[str]
    hflip: bool  # is a horizontal flip label-preserving? (False for digits: a flipped 2 is not a 2)
    extra_x: np.ndarray | None = None  # (E, C, H, W) uint8, images without labels (STL-10 unlabeled, a pool)
    fit: str = "stretch"  # how image files were brought to image_size (data/images.py): stretch | crop
    _stats: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        self.train_y, self.test_y = np.asarray(self.train_y), np.asarray(self.test_y)
        k = len(self.classes)
        if k == 0:
            raise DataError(f"{self.name}: the dataset has no classes")
        parts = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
        for part, x, y in parts:
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
                raise DataError(f"{self.name}: {part} images must be a uint8 array (N, C, H, W), got "
                                f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
            if x.shape[1:] != self.train_x.shape[1:]:
                raise DataError(f"{self.name}: test images are {x.shape[1:]} but train images "
                                f"{self.train_x.shape[1:]} (C, H, W); both splits must share one shape")
            if y.dtype.kind not in "iu":
                raise DataError(f"{self.name}: {part} labels must be integers, got {y.dtype}")
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(f"{self.name}: {len(x)} {part} images but {y.shape} labels; "
                                "every image needs exactly one label")
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise DataError(f"{self.name}: {part} labels span [{y.min()}, {y.max()}] but there are {k} "
                                f"classes, so labels must lie in [0, {k})")
        self.train_y = self.train_y.astype(np.int64, copy=False)
        self.test_y = self.test_y.astype(np.int64, copy=False)
        if len(self.train_x) == 0:
            raise DataError(f"{self.name}: the train split holds no images")
        if self.extra_x is not None and (self.extra_x.dtype != np.uint8
                                         or self.extra_x.shape[1:] != self.train_x.shape[1:]):
            raise DataError(f"{self.name}: extra images must be uint8 {self.train_x.shape[1:]}, "
                            f"got {self.extra_x.dtype} {self.extra_x.shape[1:]}")

    def __repr__(self) -> str:
        extra = f", extra={len(self.extra_x)}" if self.extra_x is not None else ""
        return (f"Dataset({self.name!r}, train={tuple(self.train_x.shape)}, test={len(self.test_x)}"
                f"{extra}, classes={self.num_classes}, hflip={self.hflip})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.train_x.shape[2], self.train_x.shape[3]

    @property
    def image_size(self) -> int:
        """Height; every built-in source is square (non-square only via the arrays source)."""
        return self.train_x.shape[2]

    @property
    def mean(self) -> tuple[float, ...]:
        return self._channel_stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._channel_stats()[1]

    def _channel_stats(self) -> tuple:
        # Exact per-channel moments from a 256-bin histogram: no float copy of the whole train set.
        if self._stats is None:
            v = np.arange(256, dtype=np.float64)
            mean, std = [], []
            for c in range(self.channels):
                h = np.zeros(256, np.float64)
                for i in range(0, len(self.train_x), 4096):
                    h += np.bincount(self.train_x[i:i + 4096, c].ravel(), minlength=256)
                m = h @ v / h.sum()
                mean.append(float(m / 255))
                std.append(float(math.sqrt(max(h @ (v * v) / h.sum() - m * m, 0.0)) / 255))
            self._stats = (tuple(mean), tuple(std))
        return self._stats


def load_dataset(cfg: DataConfig, arrays: dict | None = None) -> Dataset:
    """Read the dataset named by ``cfg.name``; ``cfg.hflip`` (when set) overrides its flip default."""
    if arrays is not None and cfg.name != "arrays":
        raise ConfigError(f"arrays were passed but data.name={cfg.name!r}; set data.name=arrays to use them")
    ds = SOURCES.get(cfg.name)(root=cfg.root, download=cfg.download, image_size=cfg.image_size, arrays=arrays)
    if cfg.hflip is not None:
        ds.hflip = cfg.hflip
    return ds


# -- what every reader shares: the memory check and the resize ------------------------------------
def available_memory() -> int:
    """Bytes of memory the machine can still give (MemAvailable; the physical size where /proc is absent)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def human_bytes(n: float) -> str:
    """A byte count for messages, in binary units with one decimal: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_image_memory(n_images: int, channels: int, size: int) -> None:
    """Refuse, before allocating, to decode or resize ``n_images`` to size x size when the uint8 arrays
    would not fit in the memory the machine has available."""
    need = n_images * channels * size * size
    have = available_memory()
    if need > have:
        raise DataError(f"data.image_size={size} needs {human_bytes(need)} for {n_images} images of "
                        f"{size}x{size}x{channels} uint8, but {human_bytes(have)} of memory is available; choose a "
                        "smaller data.image_size")


def resized(ds: Dataset, size: int | None) -> Dataset:
    """Resize every split to size x size (bilinear, antialiased) when a size is asked for."""
    if size is None or ds.image_hw == (size, size):
        return ds
    n = len(ds.train_x) + len(ds.test_x) + (0 if ds.extra_x is None else len(ds.extra_x))
    check_image_memory(n, ds.train_x.shape[1], size)
    import torch
    import torch.nn.functional as F

    def resize(x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), x.shape[1], size, size), np.uint8)
        for i in range(0, len(x), 4096):
            t = torch.from_numpy(np.ascontiguousarray(x[i:i + 4096])).float()  # (b, C, H, W)
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[i:i + 4096] = t.round().clamp(0, 255).to(torch.uint8).numpy()
        return out

    extra = None if ds.extra_x is None else resize(ds.extra_x)
    return Dataset(ds.name, resize(ds.train_x), ds.train_y, resize(ds.test_x), ds.test_y, ds.classes,
                   ds.hflip, extra)
