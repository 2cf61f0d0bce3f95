"""Data as users have it: a few labelled images, a pool of unlabelled ones, maybe no test set.

Two sources, one core:

- ``pool``: ``root/labelled/<class>/*``, ``root/unlabelled/**`` (any nesting, no classes) and an optional
  ``root/test/<class>/*``.
- ``csv``: a manifest with the columns ``path,label`` (paths relative to the CSV's folder; an empty label
  means unlabelled), as labelling tools export it.

Every labelled image is labelled (``data.split=auto`` resolves to ``all`` for these sources); without a
test set a seeded part of each class (``data.val_fraction``, 0.2 by default) is held out for model
selection and every figure of the run is a validation figure. Images are decoded once under the policy
of ``data/images.py`` (EXIF orientation, RGB unless all are greyscale, shorter side to
``data.image_size`` then the centre crop) into a cache under ``$SEMISUP_CACHE`` keyed by every file's
path, size and mtime. The labelled and test images are then held in memory; the unlabelled pool stays on
disk and each batch's images are read from the cache file (:class:`DiskImages`), so the pool's size
does not set the memory a run needs.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..config import cache_root
from ..errors import DataError
from .dataset import SOURCES, Dataset, check_image_memory, human_bytes
from .images import is_grey, is_image, list_images, read_image, why

CACHE_VERSION = 1  # bump when the cache layout changes
CHUNK = 1024  # images decoded per write into the cache file


class DiskImages:
    """(N, C, H, W) uint8 images in a .npy file, read image by image with ``os.preadv``: indexing returns
    an in-memory array of just those images, and nothing else of the file is mapped into the process."""

    def __init__(self, path: str | Path, key: str = ""):
        self.path, self.key = str(path), key  # key: what the file was decoded from (the data fingerprint)
        mm = np.load(self.path, mmap_mode="r")
        if mm.dtype != np.uint8 or mm.ndim != 4:
            raise DataError(f"{self.path} is not a uint8 (N, C, H, W) image cache; delete it to rebuild it")
        self.shape, self.dtype, self.ndim, self._offset = tuple(mm.shape), mm.dtype, 4, mm.offset
        self._row = int(np.prod(self.shape[1:]))
        del mm
        self._fd = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.arange(self.shape[0])[idx] if isinstance(idx, slice) else np.asarray(idx, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"index out of range for {self.shape[0]} images")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(idx), self._row)
        for j, i in enumerate(idx):
            n = os.preadv(self._fd, [flat[j]], self._offset + int(i) * self._row)
            if n != self._row:
                raise DataError(f"{self.path} is truncated (image {i}); delete it so that it is rebuilt")
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getstate__(self):  # a copy (another process) opens its own file descriptor
        return {**self.__dict__, "_fd": None}

    def __repr__(self) -> str:
        return f"DiskImages({self.path!r}, shape={self.shape})"


# -- reading the two layouts into (labelled, unlabelled, test) file lists -------------------------------
def _images_in(d: Path) -> list[str]:
    try:
        return list_images(d)
    except OSError as e:
        raise DataError(f"cannot list the images under {d} ({why(e)}); check the folder's permissions") from None


def _classes_under(d: Path, what: str) -> dict[str, list[str]]:
    loose = sorted(e.name for e in os.scandir(d) if e.is_file() and is_image(e.name))
    if loose:
        raise DataError(f"{len(loose)} image(s) lie directly in {d} (e.g. {loose[0]}), outside any class folder; "
                        f"move each into {d}/<class>/ or, if unlabelled, into the unlabelled/ folder")
    out = {}
    for c in sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")):
        files = _images_in(d / c)
        if not files:
            raise DataError(f"{what} class folder {d / c} holds no images; add images to it or remove it")
        out[c] = files
    return out


def scan_pool(root: Path) -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]] | None]:
    """root/labelled/<class>/*, root/unlabelled/**, optional root/test/<class>/* -> file lists."""
    if not (root / "labelled").is_dir():
        raise DataError(f"{root} has no labelled/ folder; the pool source expects {root}/labelled/<class>/<image>, "
                        f"{root}/unlabelled/<any folders>/<image> and optionally {root}/test/<class>/<image>")
    labelled = _classes_under(root / "labelled", "labelled")
    if not labelled:
        raise DataError(f"{root / 'labelled'} holds no class folders; put each class's images in "
                        f"{root / 'labelled'}/<class>/")
    unlabelled = _images_in(root / "unlabelled") if (root / "unlabelled").is_dir() else []
    if not unlabelled:
        raise DataError(f"the unlabelled pool {root / 'unlabelled'} is empty or missing; put the unlabelled images "
                        "there (any nesting), or train on labelled images alone with the folder source")
    test = None
    if (root / "test").is_dir():
        t = _classes_under(root / "test", "test")
        unknown = sorted(set(t) - set(labelled))
        if unknown:
            raise DataError(f"test class folder(s) {', '.join(unknown)} in {root / 'test'} have no labelled "
                            f"images in {root / 'labelled'} (classes there: {', '.join(sorted(labelled))}); "
                            "rename or remove them")
        test = [(p, c) for c in sorted(t) for p in t[c]]
    return [(p, c) for c in sorted(labelled) for p in labelled[c]], unlabelled, test


def scan_manifest(path: Path) -> tuple[list[tuple[str, str]], list[str], None]:
    """A CSV with the columns path,label (header required); an empty label means unlabelled."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the manifest {path} ({why(e)}); it must be a UTF-8 CSV with columns "
                        "path,label") from None
    if not rows:
        raise DataError(f"the manifest {path} is empty; it needs a header line path,label and one line per image")
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in ("path", "label")]
    if unknown or "path" not in header or "label" not in header or len(set(header)) != len(header):
        what = f"unknown column {unknown[0]!r}" if unknown else f"columns {', '.join(header) or '(none)'}"
        raise DataError(f"the manifest {path} has {what}; its header must be exactly path,label (an empty label "
                        "marks an unlabelled image)")
    ip, il = header.index("path"), header.index("label")
    labelled, unlabelled, base = [], [], path.parent
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # blank lines
        if len(row) != len(header):
            raise DataError(f"{path} line {n} has {len(row)} fields but the header has {len(header)}; quote paths "
                            "that contain commas")
        p, label = (base / row[ip].strip()), row[il].strip()
        if not p.is_file():
            raise DataError(f"{path} line {n} names {row[ip].strip()!r}, but {p} does not exist; paths are relative "
                            f"to the manifest's folder {base}")
        (labelled.append((str(p), label)) if label else unlabelled.append(str(p)))
    if not labelled:
        raise DataError(f"the manifest {path} labels no image; give some lines a label")
    if not unlabelled:
        raise DataError(f"the manifest {path} has no unlabelled image (no line with an empty label); the csv "
                        "source learns from a pool of unlabelled images")
    return labelled, unlabelled, None


# -- decoding into the cache ------------------------------------------------------------------------
def _key(parts: list[list[str]], size: int | None) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, size]).encode())
    for files in parts:
        h.update(f"part of {len(files)}\n".encode())
        for p in files:  # any added, removed, replaced or touched file changes the key
            try:
                st = os.stat(p)
            except OSError as e:
                raise DataError(f"cannot read image {p} ({why(e)})") from None
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _shared_bytes(labelled: list[str], unlabelled: list[str]) -> int:
    """How many unlabelled files have the same bytes as a labelled one (sizes compared first, then hashes)."""
    def digest(p: str) -> str:
        with open(p, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()

    by_size = defaultdict(list)
    for p in labelled:
        by_size[os.path.getsize(p)].append(p)
    lab_hashes = None
    n = 0
    for p in unlabelled:
        if os.path.getsize(p) in by_size:
            if lab_hashes is None:
                lab_hashes = {digest(q) for q in labelled}
            n += digest(p) in lab_hashes
    return n


def _decode_into(out: np.ndarray, paths: list[str], size: int | None, channels: int, fit: str) -> None:
    for i, p in enumerate(paths):
        a = read_image(p, size, channels, fit)
        if a.shape != out.shape[1:]:
            raise DataError(f"images differ in size: the first is {out.shape[3]}x{out.shape[2]} but {p} is "
                            f"{a.shape[2]}x{a.shape[1]}; set data.image_size=N to bring them all to NxN")
        out[i] = a


def _decode_cache(d: Path, labelled, unlabelled, test, size: int | None) -> dict:
    """Decode every image into d/{labelled,unlabelled,test}.npy + meta.json (temp names, renamed last)."""
    every = [p for p, _ in labelled] + unlabelled + [p for p, _ in test or []]
    channels = 1 if all(is_grey(p) for p in every) else 3
    if size is None:
        h, w = read_image(every[0], None, channels).shape[1:]
    else:
        h = w = size
    per_image = channels * h * w
    check_image_memory(len(labelled) + len(test or []), channels, max(h, w))  # these two are held in memory
    d.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(d).free
    if len(every) * per_image > free:
        raise DataError(f"decoding {len(every)} images of {channels}x{h}x{w} needs "
                        f"{human_bytes(len(every) * per_image)} in the cache {d}, which has {human_bytes(free)} free; "
                        "free space there, point $SEMISUP_CACHE elsewhere, or choose a smaller data.image_size")
    if len(unlabelled) > 2000:
        print(f"semisup: decoding {len(every)} images ({channels}x{h}x{w}) into the cache {d}; later runs read it "
              "directly", file=sys.stderr)
    tmp = f".{os.getpid()}.tmp.npy"
    try:
        for part, paths in (("labelled", [p for p, _ in labelled]), ("unlabelled", unlabelled),
                            ("test", [p for p, _ in test or []])):
            # plain writes of one chunk at a time (not a writable memory map, whose dirty pages would count in
            # this process's memory): decoding 50,000 images needs the memory of CHUNK of them
            with open(d / f"{part}{tmp}", "wb") as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), channels, h, w)}
                np.lib.format.write_array_header_2_0(f, header)
                buf = np.empty((CHUNK, channels, h, w), np.uint8)
                for i in range(0, len(paths), CHUNK):
                    chunk = paths[i:i + CHUNK]
                    _decode_into(buf[:len(chunk)], chunk, size, channels, "crop")
                    f.write(buf[:len(chunk)].tobytes())
        meta = {"channels": channels, "shared": _shared_bytes([p for p, _ in labelled], unlabelled)}
        for part in ("labelled", "unlabelled", "test"):
            os.replace(d / f"{part}{tmp}", d / f"{part}.npy")
        (d / f"meta{tmp}.json").write_text(json.dumps(meta))
        os.replace(d / f"meta{tmp}.json", d / "meta.json")  # last: its presence marks a complete cache
    except OSError as e:
        raise DataError(f"cannot write the image cache {d} ({why(e)}); free space there or point $SEMISUP_CACHE "
                        "elsewhere") from None
    finally:
        for f in d.glob(f"*{tmp}*"):
            f.unlink(missing_ok=True)
    return meta


def load_pool(name: str, labelled, unlabelled, test, size: int | None) -> Dataset:
    classes = sorted({c for _, c in labelled})
    if len(classes) < 2:
        raise DataError(f"{name}: every labelled image has the class {classes[0]!r}; a classifier needs at least "
                        "two classes")
    key = _key([[p for p, _ in labelled], unlabelled, [p for p, _ in test or []]], size)
    d = cache_root() / "pool" / key
    meta = None
    if (d / "meta.json").is_file():
        try:
            meta = json.loads((d / "meta.json").read_text())
            arrays = {p: np.load(d / f"{p}.npy", mmap_mode="r") for p in ("labelled", "test")}
            unl = DiskImages(d / "unlabelled.npy", key)
            if len(arrays["labelled"]) != len(labelled) or len(unl) != len(unlabelled):
                meta = None
        except Exception:  # a damaged cache is rebuilt, never fatal
            meta = None
    if meta is None:
        meta = _decode_cache(d, labelled, unlabelled, test, size)
        unl = DiskImages(d / "unlabelled.npy", key)
    if meta["shared"]:
        print(f"semisup: warning: {meta['shared']} image(s) of the unlabelled pool are also labelled (same bytes); "
              "they are used as both", file=sys.stderr)
    index = {c: k for k, c in enumerate(classes)}
    lab_x = np.load(d / "labelled.npy")  # in memory: few, read at every step
    test_x = np.load(d / "test.npy")
    lab_y = np.array([index[c] for _, c in labelled], np.int64)
    test_y = np.array([index[c] for _, c in test or []], np.int64)
    return Dataset(name, lab_x, lab_y, test_x, test_y, classes, True, unl, fit="crop")


@SOURCES.register("pool")
def pool(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    """root/labelled/<class>/*, root/unlabelled/** and optionally root/test/<class>/*; natural images (hflip)."""
    if root is None:
        raise DataError("data.name=pool needs data.root=DIR holding labelled/<class>/*, unlabelled/** and optionally "
                        "test/<class>/*")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DataError(f"data.root={root!r} is not a folder; the pool source reads DIR/labelled/<class>/* and "
                        "DIR/unlabelled/**")
    return load_pool("pool", *scan_pool(r), image_size)


@SOURCES.register("csv")
def manifest(root=None, download=False, image_size=None, arrays=None) -> Dataset:
    """A CSV manifest path,label (data.root=FILE.csv); an empty label means unlabelled; no test set."""
    if root is None or not Path(root).expanduser().is_file():
        raise DataError(f"data.name=csv needs data.root=FILE.csv, a manifest with the columns path,label "
                        f"({'not given' if root is None else repr(root) + ' is not a file'})")
    return load_pool("csv", *scan_manifest(Path(root).expanduser()), image_size)
