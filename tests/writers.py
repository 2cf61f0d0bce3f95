"""Small files in the real on-disk formats (IDX, CIFAR pickles, SVHN .mat, STL-10 binary, image folders),
written by the data and loop tests: semisup's readers are tested on what torchvision and the datasets ship."""
import gzip
import pickle
from pathlib import Path

import numpy as np

from semisup.data.idx import IDX_FILES
from semisup.data.stl10 import STL10_CLASSES

RNG = np.random.default_rng(0)


def write_idx(path: Path, a: np.ndarray, gz: bool) -> Path:
    raw = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()
    path = path.with_name(path.name + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(d: Path, gz: bool, n=(12, 7)) -> dict:
    out = {}
    for part, count in zip(("train", "test"), n):
        x, y = RNG.integers(0, 256, (count, 28, 28), np.uint8), np.arange(count) % 10
        xs, ys = IDX_FILES[part]
        write_idx(d / xs, x, gz)
        write_idx(d / ys, y, gz)
        out[part] = (x, y)
    return out


def write_cifar(root: Path, hundred: bool, n=(6, 4)) -> dict:
    k, key = (100, "fine_labels") if hundred else (10, "labels")
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir(parents=True)
    files = (["train"], ["test"]) if hundred else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    out = {}
    for part, names, count in zip(("train", "test"), files, n):
        xs, ys = [], []
        for f in names:
            x = RNG.integers(0, 256, (count, 3, 32, 32), np.uint8)
            y = list(RNG.integers(0, k, count))
            with open(d / f, "wb") as fh:  # rows: 1024 red, 1024 green, 1024 blue values, as in the release
                pickle.dump({"data": x.reshape(count, 3072), key: y, "batch_label": f}, fh, protocol=2)
            xs.append(x)
            ys += y
        out[part] = (np.concatenate(xs), np.array(ys))
    meta, names_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(d / meta, "wb") as fh:
        pickle.dump({names_key: [f"c{i}" for i in range(k)]}, fh, protocol=2)
    return out


def write_svhn(d: Path) -> dict:
    import scipy.io

    out = {}
    for part, count in (("train", 9), ("test", 5)):
        x = RNG.integers(0, 256, (count, 3, 32, 32), np.uint8)
        y = np.arange(count) % 10
        mat_y = np.where(y == 0, 10, y).reshape(-1, 1)  # SVHN stores digit 0 as 10
        scipy.io.savemat(d / f"{part}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": mat_y})
        out[part] = (x, y)
    return out


def write_stl(root: Path, unlabeled: int = 3) -> dict:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    out = {}
    for part, count in (("train", 5), ("test", 4), ("unlabeled", unlabeled)):
        x = RNG.integers(0, 256, (count, 3, 96, 96), np.uint8)
        (d / f"{part}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())  # column-major, as released
        y = np.arange(count) % 10
        if part != "unlabeled":
            (d / f"{part}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[part] = (x, y)
    (d / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return out


def write_image(path: Path, a: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def write_folder(root: Path, classes=("cat", "dog", "emu"), n=(3, 2), size=8, gray=False, ext="png") -> Path:
    for part, count in zip(("train", "test"), n):
        for c in classes:
            for i in range(count):
                shape = (size, size) if gray else (size, size, 3)
                write_image(root / part / c / f"{i}.{ext}", RNG.integers(0, 256, shape, np.uint8))
    return root


