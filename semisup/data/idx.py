"""The MNIST and Fashion-MNIST sources: IDX files, optionally gzipped, as torchvision and Debian ship them."""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SOURCES, Dataset, resized, why
from .locate import locate

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist

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

    d = locate(name, root, download, lambda r: [r / tv_dir / "raw"] + ([r] if r in plain else []),
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
    return resized(_idx_dataset("mnist", "MNIST", "MNIST", [str(i) for i in range(10)], False,
                                root, download, how), image_size)


@SOURCES.register("fashion_mnist")
def fashion_mnist(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    how = "data.download=true (needs a network), `apt-get install dataset-fashion-mnist`"
    return resized(_idx_dataset("fashion_mnist", "FashionMNIST", "FashionMNIST", FASHION_CLASSES, True,
                                root, download, how, (DEBIAN_FASHION,)), image_size)
