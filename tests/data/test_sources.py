"""Dataset sources: every registered reader on small files written in the real formats, plus errors."""
import gzip
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from writers import RNG, write_cifar, write_folder, write_idx, write_image, write_mnist, write_stl, write_svhn

import semisup.data.folder as F
from semisup.config import DataConfig
from semisup.data import cifar, idx, in_memory, stl10, svhn
from semisup.data.dataset import SOURCES, Dataset, load_dataset
from semisup.data.idx import read_idx
from semisup.errors import ConfigError, DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # never touch the user's ~/.cache or $SEMISUP_DATA from a test
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEMISUP_DATA", raising=False)


# every registered source: (build files under root) -> (root or None, expected train/test shapes)
def build(name: str, tmp: Path):
    if name in ("mnist", "fashion_mnist"):
        write_mnist(tmp / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw", gz=False)
        return str(tmp), (12, 1, 28, 28), 7
    if name in ("cifar10", "cifar100"):
        write_cifar(tmp, name == "cifar100")
        return str(tmp), ((30 if name == "cifar10" else 6), 3, 32, 32), 4
    if name == "svhn":
        pytest.importorskip("scipy")
        write_svhn(tmp)
        return str(tmp), (9, 3, 32, 32), 5
    if name == "stl10":
        write_stl(tmp)
        return str(tmp), (5, 3, 96, 96), 4
    if name == "digits":
        return None, (1201, 1, 8, 8), 596
    if name == "folder":
        return str(write_folder(tmp)), (9, 3, 8, 8), 6
    if name == "arrays":
        return None, (4, 1, 5, 5), 2
    if name in ("pool", "csv"):  # labelled/<class>/*, unlabelled/**, test/<class>/* (csv: no test set)
        write_folder(tmp / "p", n=(3, 2))
        (tmp / "p" / "train").rename(tmp / "p" / "labelled")
        for i in range(4):
            write_image(tmp / "p" / "unlabelled" / "a" / f"u{i}.png", RNG.integers(0, 256, (8, 8, 3), np.uint8))
        if name == "pool":
            return str(tmp / "p"), (9, 3, 8, 8), 6
        rel = [q.relative_to(tmp / "p") for q in sorted((tmp / "p").rglob("*.png")) if "test" not in q.parts]
        lines = ["path,label"] + [f"{q.as_posix()},{q.parent.name if q.parts[0] == 'labelled' else ''}" for q in rel]
        (tmp / "p" / "m.csv").write_text("\n".join(lines) + "\n")
        return str(tmp / "p" / "m.csv"), (9, 3, 8, 8), 0
    raise AssertionError(f"source {name!r} has no test builder: add one to tests/data/test_sources.py")


def tiny_arrays(**kw) -> dict:
    d = {"train_x": RNG.integers(0, 256, (4, 5, 5), np.uint8), "train_y": np.array([0, 1, 2, 1]),
         "test_x": RNG.integers(0, 256, (2, 5, 5), np.uint8), "test_y": np.array([2, 0])}
    return {**d, **kw}


@pytest.mark.parametrize("name", SOURCES.names())
def test_every_source_loads(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))  # the folder, pool and csv sources cache here
    root, train_shape, n_test = build(name, tmp_path)
    ds = load_dataset(DataConfig(name=name, root=root), tiny_arrays() if name == "arrays" else None)
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.train_x.shape == train_shape and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (n_test, *train_shape[1:]) and ds.test_x.dtype == np.uint8
    assert ds.train_y.dtype == ds.test_y.dtype == np.int64
    assert 0 <= ds.train_y.min() and ds.train_y.max() < ds.num_classes == len(ds.classes)
    assert ds.channels == train_shape[1] and ds.image_size == train_shape[2]
    ref = ds.train_x.astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, ref.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(ds.std, ref.std(axis=(0, 2, 3)), atol=1e-9)
    assert isinstance(ds.hflip, bool) and name in repr(ds)
    if name not in ("arrays", "digits"):
        big = load_dataset(DataConfig(name=name, root=root, image_size=12))  # every source can resize
        assert big.train_x.shape == (train_shape[0], train_shape[1], 12, 12) and big.train_x.dtype == np.uint8


def test_importing_any_data_module_registers_every_source():
    """Each ``@SOURCES.register(name)`` written in a reader module is registered once any module of
    semisup.data is imported (here the dataset module alone, in a fresh interpreter): the package imports
    every reader, and nothing else has to."""
    readers = Path(F.__file__).parent.glob("*.py")
    declared = sorted(n for p in readers for n in re.findall(r'@SOURCES\.register\("(\w+)"\)', p.read_text()))
    code = "from semisup.data.dataset import SOURCES; print(' '.join(SOURCES.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == declared and len(declared) >= 11


# -- real data -------------------------------------------------------------------------------------
@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_real_debian_install():
    ds = load_dataset(DataConfig(name="fashion_mnist"))  # found via the default search paths
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == np.uint8
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.hflip
    assert 0.28 < ds.mean[0] < 0.29 and 0.35 < ds.std[0] < 0.36  # the well-known 0.2860 / 0.3530
    assert not load_dataset(DataConfig(name="fashion_mnist", hflip=False)).hflip  # config override wins


# -- exact content per format ----------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "plain"])
def test_idx_layouts_exact(tmp_path, gz, layout):
    d = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    ref = write_mnist(d, gz)
    ds = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert np.array_equal(ds.train_x[:, 0], ref["train"][0]) and np.array_equal(ds.test_y, ref["test"][1])


def test_plain_idx_layout_not_trusted_in_default_roots(tmp_path, monkeypatch):
    # ./data/train-images... could be the other MNIST: only <root>/FashionMNIST/raw is searched there
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(idx, "DEBIAN_FASHION", str(tmp_path / "nowhere"))
    write_mnist(tmp_path / "data", gz=True)
    with pytest.raises(DataError, match="not found"):
        idx.fashion_mnist()
    write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True)
    assert len(load_dataset(DataConfig(name="mnist")).train_x) == 12


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_exact(tmp_path, hundred):
    ref = write_cifar(tmp_path, hundred)
    ds = load_dataset(DataConfig(name="cifar100" if hundred else "cifar10", root=str(tmp_path)))
    assert np.array_equal(ds.train_x, ref["train"][0]) and np.array_equal(ds.train_y, ref["train"][1])
    assert np.array_equal(ds.test_x, ref["test"][0]) and ds.classes[:2] == ["c0", "c1"] and ds.hflip


def test_svhn_exact(tmp_path):
    pytest.importorskip("scipy")
    ref = write_svhn(tmp_path)
    ds = load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    assert np.array_equal(ds.train_x, ref["train"][0]) and np.array_equal(ds.train_y, ref["train"][1])
    assert ds.train_y.min() == 0 and not ds.hflip  # label 10 -> 0; digits are not flip-invariant


def test_stl10_exact_and_lazy_unlabeled(tmp_path):
    ref = write_stl(tmp_path)
    ds = load_dataset(DataConfig(name="stl10", root=str(tmp_path)))
    assert np.array_equal(ds.train_x, ref["train"][0]) and np.array_equal(ds.test_y, ref["test"][1])
    assert np.array_equal(ds.extra_x, ref["unlabeled"][0]) and isinstance(ds.extra_x.base, np.memmap)
    assert ds.classes == stl10.STL10_CLASSES
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert load_dataset(DataConfig(name="stl10", root=str(tmp_path))).extra_x is None


def test_digits_fixed_stratified_test_split():
    a, b = in_memory.digits(), in_memory.digits()
    assert np.array_equal(a.test_y, b.test_y) and np.array_equal(a.test_x, b.test_x)
    counts = np.bincount(a.test_y)
    full = np.bincount(np.concatenate([a.train_y, a.test_y]))
    assert counts.tolist() == (full // 3).tolist()
    assert a.train_x.max() == 255 and not a.hflip


# -- folder ----------------------------------------------------------------------------------------
def test_folder_pixels_grayscale_and_cache(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs", gray=True, n=(2, 1))
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_image(root / "train" / "cat" / "0.png", img)
    ds = F.folder(str(root))
    assert ds.train_x.shape == (6, 1, 8, 8) and ds.classes == ["cat", "dog", "emu"]
    assert np.array_equal(ds.train_x[0, 0], img) and ds.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    caches = list((tmp_path / "cache" / "folder").glob("*.npy"))
    assert len(caches) == 1 and not list(root.rglob("*.npy"))  # cached outside the user's data

    def no_decode(*a):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(F, "_decode_all", no_decode)
    again = F.folder(str(root))
    assert np.array_equal(again.train_x, ds.train_x) and np.array_equal(again.test_y, ds.test_y)
    monkeypatch.undo()
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))
    write_image(root / "test" / "dog" / "new.png", img)  # a new file changes the key: decoded afresh
    assert len(F.folder(str(root)).test_x) == 4
    assert len(list((tmp_path / "cache" / "folder").glob("*.npy"))) == 2


def test_folder_mixed_modes_jpeg_resize_and_parallel(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "j", ext="jpg", n=(10, 3), size=20)
    write_image(root / "train" / "cat" / "-grey.png", np.full((20, 20), 77, np.uint8))
    write_image(root / "train" / "dog" / "big.png", RNG.integers(0, 256, (40, 30, 4), np.uint8))  # RGBA
    with pytest.raises(DataError, match=r"images differ in size: .* is 20x20 but .*big.png is 30x40; set "
                                        r"data.image_size"):
        F.folder(str(root))
    monkeypatch.setattr(F, "PARALLEL_MIN_CPUS", 1)  # exercise the forked decode on a tiny folder
    monkeypatch.setattr(F, "PARALLEL_MIN_FILES", 1)
    ds = load_dataset(DataConfig(name="folder", root=str(root), image_size=16))
    assert ds.train_x.shape == (32, 3, 16, 16) and ds.test_x.shape == (9, 3, 16, 16)
    grey = ds.train_x[ds.train_y == 0][0]  # "-grey.png" sorts first in cat/
    assert (grey == 77).all()  # grey image replicated into R, G and B


@pytest.mark.parametrize("case, match", [
    ("not_image", r"cannot read image .*notes.txt \(UnidentifiedImageError"),
    ("truncated", r"cannot read image .*0.png"),
    ("class_mismatch", r"different class folders \(only in train: emu; only in test: yak\)"),
    ("empty_class", r"class folder .*train/dog is empty"),
    ("no_classes", r"holds no class folders"),
    ("no_test", r"has no test/ folder"),
])
def test_folder_errors(tmp_path, case, match):
    root = write_folder(tmp_path / "f")
    if case == "not_image":
        (root / "train" / "dog" / "notes.txt").write_text("hello")
    elif case == "truncated":
        p = root / "test" / "cat" / "0.png"
        p.write_bytes(p.read_bytes()[:40])
    elif case == "class_mismatch":
        os.rename(root / "test" / "emu", root / "test" / "yak")
    elif case == "empty_class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif case == "no_classes":
        for c in ("cat", "dog", "emu"):
            for f in (root / "train" / c).iterdir():
                f.unlink()
            (root / "train" / c).rmdir()
    elif case == "no_test":
        os.rename(root / "test", root / "tests")
    with pytest.raises(DataError, match=match) as e:
        F.folder(str(root))
    assert "\n" not in str(e.value)


def test_folder_needs_root():
    with pytest.raises(DataError, match="data.root=DIR"):
        load_dataset(DataConfig(name="folder"))


# -- arrays ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHW1", "NHWC", "N1HW", "NCHW", "float"])
def test_arrays_layouts(layout):
    base = RNG.integers(0, 256, (4, 3, 6, 7), np.uint8)  # (N, C, H, W), non-square on purpose
    grey = base[:, :1]
    x = {"NHW": grey[:, 0], "NHW1": grey.transpose(0, 2, 3, 1), "NHWC": base.transpose(0, 2, 3, 1),
         "N1HW": grey, "NCHW": base, "float": base / 255.0}[layout]
    ds = in_memory.arrays(arrays={"train_x": x, "train_y": [0, 1, 1, 0], "test_x": x[:2],
                                  "test_y": np.array([1.0, 0.0]), "classes": ["a", "b", "c"], "hflip": True})
    expect = grey if layout in ("NHW", "NHW1", "N1HW") else base
    assert np.array_equal(ds.train_x, expect) and ds.image_hw == (6, 7)
    assert ds.num_classes == 3 and ds.hflip and ds.test_y.dtype == np.int64


@pytest.mark.parametrize("change, match", [
    ({"train_y": np.array([0, 1, 5, 1])}, r"train labels span \[0, 5\] but there are 3 classes"),
    ({"test_y": np.array([-1, 0])}, r"test labels span \[-1, 0\]"),
    ({"train_y": np.array([0, 1, 2])}, r"4 train images but \(3,\) labels"),
    ({"train_x": np.full((4, 5, 5), 2.0)}, r"float with values in \[2, 2\]"),
    ({"train_x": np.full((4, 5, 5), np.nan)}, r"values in \[nan, nan\] \(or NaN/inf\)"),
    ({"train_x": np.zeros((4, 5, 5), np.int32)}, r"dtype int32; pass uint8"),
    ({"train_x": np.zeros((4, 5, 5, 4), np.uint8)}, r"has shape \(4, 5, 5, 4\)"),
    ({"test_x": np.zeros((2, 6, 6), np.uint8)}, r"test images are \(1, 6, 6\) but train images \(1, 5, 5\)"),
    ({"train_y": np.array([0.5, 1, 2, 1])}, r"integer class ids"),
    ({"colour": 1}, r"unknown key 'colour'"),
    ({"test_y": None}, r"missing 'test_y'"),
])
def test_arrays_errors(change, match):
    a = {k: v for k, v in tiny_arrays(classes=["a", "b", "c"], **change).items() if v is not None}
    with pytest.raises(DataError, match=match):
        load_dataset(DataConfig(name="arrays"), a)


def test_arrays_dispatch_errors():
    with pytest.raises(ConfigError, match="set data.name=arrays"):
        load_dataset(DataConfig(name="digits"), tiny_arrays())
    with pytest.raises(DataError, match="needs load_dataset"):
        load_dataset(DataConfig(name="arrays"))
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset(DataConfig(name="imagenet"))


# -- missing data and downloads --------------------------------------------------------------------
def test_missing_names_every_path_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEMISUP_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(idx, "DEBIAN_FASHION", str(tmp_path / "usr-share"))  # the real one may be installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="fashion_mnist"))
    msg = str(e.value)
    for p in (tmp_path / "env" / "FashionMNIST" / "raw", tmp_path / "home" / ".cache/semisup/data/FashionMNIST/raw",
              Path("data/FashionMNIST/raw"), Path(idx.DEBIAN_FASHION)):
        assert str(p) in msg
    assert "data.download=true" in msg and "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", [n for n in SOURCES.names()
                                  if n not in ("digits", "folder", "arrays", "pool", "csv")])
def test_missing_with_explicit_root(tmp_path, name):
    if name == "svhn":
        pytest.importorskip("scipy")
    with pytest.raises(DataError, match=rf"{name} not found; tried {tmp_path}.*data.download=true"):
        load_dataset(DataConfig(name=name, root=str(tmp_path)))


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train=True, download=False):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    with pytest.raises(DataError, match=rf"downloading fashion_mnist into {tmp_path} failed \(RuntimeError: Error "
                                        r"downloading train-images-idx3-ubyte.gz:\)") as e:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=True))
    assert "\n" not in str(e.value)


def test_download_then_read(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def fake(root, train=True, download=False):  # what torchvision leaves on disk
        calls.append(root)
        write_mnist(Path(root) / "MNIST" / "raw", gz=False)

    monkeypatch.setattr(tvd, "MNIST", fake)
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=True))
    assert calls == [str(tmp_path)] and len(ds.train_x) == 12 and not ds.hflip
    load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=True))
    assert len(calls) == 1  # files present: no second download


# -- corrupted files -------------------------------------------------------------------------------
def test_idx_corruption(tmp_path):
    d = tmp_path / "MNIST" / "raw"
    write_mnist(d, gz=True)
    imgs = d / "train-images-idx3-ubyte.gz"
    good = imgs.read_bytes()
    cfg = DataConfig(name="mnist", root=str(tmp_path))
    imgs.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is truncated or corrupt \(EOFError"):
        load_dataset(cfg)
    imgs.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:])  # garbled deflate stream
    with pytest.raises(DataError, match=r"truncated or corrupt"):
        load_dataset(cfg)
    raw = gzip.decompress(good)
    imgs.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))  # bad magic (ndim 1)
    with pytest.raises(DataError, match=r"not an IDX file of 3-D uint8 data \(magic bytes 00000801"):
        load_dataset(cfg)
    imgs.write_bytes(gzip.compress(raw[:-5]))  # header promises more bytes than there are
    with pytest.raises(DataError, match=r"header says \[12, 28, 28\] \(9424 bytes\) but the file holds 9419"):
        load_dataset(cfg)
    imgs.write_bytes(good)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"holds 12 images but .*train-labels-idx1-ubyte.gz holds 11 labels"):
        load_dataset(cfg)
    p = write_idx(tmp_path / "x", np.zeros(3, np.uint8), gz=False)
    assert read_idx(p, 1).tolist() == [0, 0, 0]


def test_cifar_corruption(tmp_path):
    write_cifar(tmp_path, hundred=False)
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = f.read_bytes()
    f.write_bytes(good[:100])
    with pytest.raises(DataError, match=r"cannot read .*data_batch_3 .*truncated or not a CIFAR file"):
        cifar.cifar10(str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 5}, fh)
    with pytest.raises(DataError, match=r"data_batch_3 holds 6 images but 5 labels"):
        cifar.cifar10(str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump({"pixels": 1}, fh)
    with pytest.raises(DataError, match=r"data_batch_3 is not a cifar10 batch \(KeyError"):
        cifar.cifar10(str(tmp_path))


def test_svhn_corruption(tmp_path):
    pytest.importorskip("scipy")
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB garbage")
    with pytest.raises(DataError, match=r"cannot read .*test_32x32.mat"):
        svhn.svhn(str(tmp_path))


def test_stl10_corruption(tmp_path):
    write_stl(tmp_path)
    d = tmp_path / "stl10_binary"
    (d / "test_X.bin").write_bytes((d / "test_X.bin").read_bytes()[:-7])
    with pytest.raises(DataError, match=r"test_X.bin holds 110585 bytes, not a whole number of 3x96x96"):
        stl10.stl10(str(tmp_path))
    write_stl(tmp_path / "b")
    (tmp_path / "b" / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2, 0, 4, 5]))
    with pytest.raises(DataError, match=r"train_y.bin holds 5 labels in \[0, 5\] for 5 images"):
        stl10.stl10(str(tmp_path / "b"))
