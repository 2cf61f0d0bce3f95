"""Dataset readers: a registry of plain factories that return a uint8, channels-first :class:`Dataset`.

Each reader parses its on-disk format itself (IDX, CIFAR pickles, SVHN .mat, STL-10 binary, image
folders) so loading is fast and every failure becomes a one-line :class:`DataError` that says what is
wrong and how to fix it. torchvision is only used to download (``data.download=true``). Readers
never write into the user's data directory: the folder source caches its decoded arrays under
``$SEMISUP_CACHE`` (default ``~/.cache/semisup``). Every factory has the signature
``(root=None, download=False, image_size=None, arrays=None) -> Dataset``.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import Registry

SOURCES = Registry("dataset")
# torchvision's class names, used when a download lacks its meta file (CIFAR-10 meta is optional)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


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


# -- locating files --------------------------------------------------------------------------------
def default_roots() -> list[Path]:
    env = os.environ.get("SEMISUP_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path.home() / ".cache/semisup/data", Path("data")]


def _locate(name: str, root: str | None, download: bool, dirs: Callable[[Path], list[Path]],
            has: Callable[[Path], bool], fetch: Callable[[str], object], how: str,
            extra: tuple[str, ...] = ()) -> Path:
    """First directory (over the search roots) holding the files; downloads when allowed."""
    roots = [Path(root).expanduser()] if root else default_roots() + [Path(e) for e in extra]
    tried = []
    for r in roots:
        for d in dirs(r):
            tried.append(str(d))
            if has(d):
                return d
    if download:
        dest = roots[0]
        try:
            fetch(str(dest))
        except Exception as e:  # torchvision raises URLError, RuntimeError, ...: the user needs one line
            raise DataError(f"downloading {name} into {dest} failed ({why(e)}); without a network, copy "
                            f"the files there by hand and set data.root={dest}") from None
        for d in dirs(dest):
            if has(d):
                return d
        raise DataError(f"downloaded {name} into {dest} but found no files in {', '.join(map(str, dirs(dest)))}")
    raise DataError(f"{name} not found; tried {', '.join(tried)}. Get it with {how}, or set data.root=DIR "
                    "(or $SEMISUP_DATA) to where it is")


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


def _bytes(n: float) -> str:
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
        raise DataError(f"data.image_size={size} needs {_bytes(need)} for {n_images} images of {size}x{size}x"
                        f"{channels} uint8, but {_bytes(have)} of memory is available; choose a smaller "
                        "data.image_size")


def _resized(ds: Dataset, size: int | None) -> Dataset:
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


# -- MNIST / Fashion-MNIST: IDX files --------------------------------------------------------------
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_path(d: Path, stem: str) -> Path | None:
    for p in (d / stem, d / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of uint8 data (optionally gzipped): magic 0 0 0x08 ndim, big-endian dims."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except Exception as e:  # BadGzipFile (OSError), EOFError when truncated, zlib.error when garbled
        raise DataError(f"{path} is truncated or corrupt ({why(e)}); delete it and download it again") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path} is not an IDX file of {ndim}-D uint8 data (magic bytes {raw[:4].hex() or 'none'}, "
                        f"expected {bytes([0, 0, 8, ndim]).hex()}); replace it with the original file")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", ndim, 4)]
    if len(raw) != head + math.prod(dims):
        raise DataError(f"{path}: its header says {dims} ({head + math.prod(dims)} bytes) but the file holds "
                        f"{len(raw)} bytes; it is truncated or corrupt, download it again")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims).copy()


def _idx_dataset(name: str, tv_dir: str, tv_cls: str, classes: list[str], hflip: bool, root, download,
                 how: str, extra: tuple[str, ...] = ()) -> Dataset:
    # The plain layout (files directly in the directory) is only trusted where the user points us or at
    # a known install path: in ./data it could be the other MNIST and silently train on wrong data.
    plain = {Path(root).expanduser()} if root else {Path(e) for e in extra}
    stems = [s for pair in IDX_FILES.values() for s in pair]

    def fetch(dest: str):
        import torchvision.datasets as tvd

        getattr(tvd, tv_cls)(dest, train=True, download=True)

    d = _locate(name, root, download, lambda r: [r / tv_dir / "raw"] + ([r] if r in plain else []),
                lambda d: all(_idx_path(d, s) for s in stems), fetch, how, extra)
    out = {}
    for part, (xs, ys) in IDX_FILES.items():
        px, py = _idx_path(d, xs), _idx_path(d, ys)
        x, y = read_idx(px, 3), read_idx(py, 1)
        if len(x) != len(y):
            raise DataError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels; one of them is "
                            "from another release or damaged, download both again")
        out[part] = (x[:, None], y.astype(np.int64))  # (N, 1, 28, 28)
    return Dataset(name, *out["train"], *out["test"], classes, hflip)


@SOURCES.register("mnist")
def mnist(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    how = "data.download=true (needs a network)"
    return _resized(_idx_dataset("mnist", "MNIST", "MNIST", [str(i) for i in range(10)], False,
                                 root, download, how), image_size)


@SOURCES.register("fashion_mnist")
def fashion_mnist(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    how = "data.download=true (needs a network), `apt-get install dataset-fashion-mnist`"
    return _resized(_idx_dataset("fashion_mnist", "FashionMNIST", "FashionMNIST", FASHION_CLASSES, True,
                                 root, download, how, (DEBIAN_FASHION,)), image_size)


# -- CIFAR: torchvision's pickled batches ----------------------------------------------------------
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            out = pickle.load(f, encoding="latin1")  # the batches were pickled by Python 2
    except Exception as e:  # truncated or foreign files raise EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"cannot read {path} ({why(e)}); it is truncated or not a CIFAR file, download it again") \
            from None
    if not isinstance(out, dict):
        raise DataError(f"{path} is not a CIFAR file (holds a {type(out).__name__}, not a dict)")
    return out


def _cifar(name, folder, train_files, test_files, label_key, meta, names_key, tv_cls, root, download):
    def fetch(dest: str):
        import torchvision.datasets as tvd

        getattr(tvd, tv_cls)(dest, train=True, download=True)

    d = _locate(name, root, download, lambda r: [r / folder],
                lambda d: all((d / f).is_file() for f in train_files + test_files), fetch,
                "data.download=true (needs a network)")

    def read(files):
        xs, ys = [], []
        for f in files:
            b = _unpickle(d / f)
            try:
                x = np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32)  # rows are R(1024) G B planes
                y = np.asarray(b[label_key], np.int64)
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(f"{d / f} is not a {name} batch ({why(e)}); download it again") from None
            if len(x) != len(y):
                raise DataError(f"{d / f} holds {len(x)} images but {len(y)} labels; download it again")
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    classes = _unpickle(d / meta).get(names_key) if (d / meta).is_file() else None
    if classes is None and name == "cifar10":
        classes = CIFAR10_CLASSES
    if classes is None:
        raise DataError(f"{d / meta} is missing or lacks {names_key!r}; download {name} again")
    return Dataset(name, *read(train_files), *read(test_files), list(classes), True)


@SOURCES.register("cifar10")
def cifar10(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _resized(_cifar("cifar10", "cifar-10-batches-py", train, ["test_batch"], "labels", "batches.meta",
                           "label_names", "CIFAR10", root, download), image_size)


@SOURCES.register("cifar100")
def cifar100(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    return _resized(_cifar("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                           "fine_label_names", "CIFAR100", root, download), image_size)


# -- SVHN: MATLAB files ----------------------------------------------------------------------------
@SOURCES.register("svhn")
def svhn(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    try:
        import scipy.io
    except ImportError:
        raise DataError("reading SVHN's .mat files needs scipy: pip install scipy") from None

    def fetch(dest: str):
        import torchvision.datasets as tvd

        for split in ("train", "test"):
            tvd.SVHN(dest, split=split, download=True)

    files = ("train_32x32.mat", "test_32x32.mat")
    d = _locate("svhn", root, download, lambda r: [r, r / "svhn", r / "SVHN"],
                lambda d: all((d / f).is_file() for f in files), fetch, "data.download=true (needs a network)")
    parts = []
    for f in files:
        try:
            m = scipy.io.loadmat(d / f)
            x, y = np.asarray(m["X"]), np.asarray(m["y"], np.int64).reshape(-1)
        except Exception as e:  # scipy raises ValueError, MatReadError, KeyError, ...
            raise DataError(f"cannot read {d / f} ({why(e)}); it is truncated or not SVHN, download it again") \
                from None
        if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
            raise DataError(f"{d / f}: X has shape {x.shape} and y {len(y)} labels; expected X (32, 32, 3, N)")
        y[y == 10] = 0  # SVHN stores the digit 0 as label 10
        parts += [np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False), y]  # (N, 3, H, W)
    return _resized(Dataset("svhn", *parts, [str(i) for i in range(10)], False), image_size)


# -- STL-10: raw binary, column-major 96x96 images -------------------------------------------------
def _stl_images(path: Path, lazy: bool = False) -> np.ndarray:
    raw = np.memmap(path, np.uint8, mode="r") if lazy else np.fromfile(path, np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataError(f"{path} holds {raw.size} bytes, not a whole number of 3x96x96 images; download it again")
    x = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored column-major (W before H)
    return x if lazy else np.ascontiguousarray(x)  # unlabeled (2.7 GB) stays a lazy memory-mapped view


@SOURCES.register("stl10")
def stl10(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    def fetch(dest: str):
        import torchvision.datasets as tvd

        tvd.STL10(dest, split="train", download=True)

    need = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    d = _locate("stl10", root, download, lambda r: [r / "stl10_binary"],
                lambda d: all((d / f).is_file() for f in need), fetch, "data.download=true (needs a network)")
    parts = []
    for split in ("train", "test"):
        x, y = _stl_images(d / f"{split}_X.bin"), np.fromfile(d / f"{split}_y.bin", np.uint8).astype(np.int64)
        if len(x) != len(y) or (len(y) and (y.min() < 1 or y.max() > 10)):
            raise DataError(f"{d}/{split}_y.bin holds {len(y)} labels in [{y.min(initial=0)}, {y.max(initial=0)}] "
                            f"for {len(x)} images; expected one label in 1..10 per image, download it again")
        parts += [x, y - 1]  # labels 1..10 -> 0..9
    names = d / "class_names.txt"
    classes = [c.strip() for c in names.read_text().splitlines() if c.strip()] if names.is_file() else STL10_CLASSES
    extra = _stl_images(d / "unlabeled_X.bin", lazy=True) if (d / "unlabeled_X.bin").is_file() else None
    return _resized(Dataset("stl10", *parts, classes, True, extra), image_size)


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
    return _resized(Dataset("digits", x[train], y[train], x[test], y[test], [str(i) for i in range(10)], False),
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
    return _resized(ds, image_size)


from . import folder as _folder  # noqa: E402,F401  (registers the `folder` source; it imports Dataset from here)
from . import pool as _pool  # noqa: E402,F401  (registers the `pool` and `csv` sources)
