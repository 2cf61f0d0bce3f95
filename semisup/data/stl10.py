"""The STL-10 source: raw binary files of column-major 96x96 images, the unlabeled split memory-mapped."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SOURCES, Dataset, resized
from .locate import locate

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


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
    d = locate("stl10", root, download, lambda r: [r / "stl10_binary"],
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
    return resized(Dataset("stl10", *parts, classes, True, extra), image_size)
