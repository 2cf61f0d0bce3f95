"""The CIFAR-10 and CIFAR-100 sources: torchvision's pickled batches."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SOURCES, Dataset, resized, why
from .locate import locate

# torchvision's class names, used when a download lacks its meta file (CIFAR-10 meta is optional)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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

    d = locate(name, root, download, lambda r: [r / folder],
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
    return resized(_cifar("cifar10", "cifar-10-batches-py", train, ["test_batch"], "labels", "batches.meta",
                          "label_names", "CIFAR10", root, download), image_size)


@SOURCES.register("cifar100")
def cifar100(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    return resized(_cifar("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                          "fine_label_names", "CIFAR100", root, download), image_size)
