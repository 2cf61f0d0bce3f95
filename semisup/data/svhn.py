"""The SVHN source: the MATLAB files ``train_32x32.mat`` and ``test_32x32.mat`` (read with scipy)."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .dataset import SOURCES, Dataset, resized, why
from .locate import locate


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
    d = locate("svhn", root, download, lambda r: [r, r / "svhn", r / "SVHN"],
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
    return resized(Dataset("svhn", *parts, [str(i) for i in range(10)], False), image_size)
