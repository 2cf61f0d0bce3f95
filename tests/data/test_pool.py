"""The pool and csv sources: a user's labelled / unlabelled / optional test images, decoded to a disk cache."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tree
from PIL import Image

from semisup import cli
from semisup.config import DataConfig, from_dict
from semisup.data.dataset import load_dataset
from semisup.data.images import list_images, read_image
from semisup.data.pool import DiskImages
from semisup.data.splits import all_split
from semisup.data.stream import Unlabelled
from semisup.errors import DataError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))


def _img(path, colour, size=(20, 16), mode="RGB", seed=0):
    """A noisy image of one colour (the class), saved in ``mode``."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour)[None, None] + rng.integers(-25, 26, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("P")
    elif mode == "L":
        im = im.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_pool(root, per_class=6, unlabelled=24, test=True, sizes=((20, 16),)):
    for k, (c, col) in enumerate(COLOURS.items()):
        for i in range(per_class):
            _img(root / "labelled" / c / f"{i}.png", col, sizes[i % len(sizes)], seed=10 * k + i)
            if test:
                _img(root / "test" / c / f"{i}.png", col, seed=100 + 10 * k + i)
    cols = list(COLOURS.values())
    for i in range(unlabelled):  # nested folders, mixed modes
        mode = ("RGB", "RGBA", "P")[i % 3]
        _img(root / "unlabelled" / f"batch{i % 2}" / "deep" / f"u{i}.png", cols[i % 3], mode=mode, seed=1000 + i)
    return root


def main(*argv):
    return cli.main([str(a) for a in argv])


TRAIN = ["--model.name=smallcnn", "--model.width=1", "--train.steps=6", "--train.eval_every=3",
         "--train.batch_size=6", "--train.mu=2", "--run.threads=1", "--run.progress=false",
         "--run.tensorboard=false", "--data.image_size=16"]


def test_pool_reads_labelled_unlabelled_and_test_with_the_crop_policy(tmp_path):
    root = make_pool(tmp_path / "p", sizes=((20, 16), (16, 30)))
    ds = load_dataset(DataConfig(name="pool", root=str(root), image_size=16))
    assert ds.classes == ["blue", "green", "red"] and ds.fit == "crop"
    assert ds.train_x.shape == (18, 3, 16, 16) and np.bincount(ds.train_y).tolist() == [6, 6, 6]
    assert ds.test_x.shape == (18, 3, 16, 16) and isinstance(ds.extra_x, DiskImages) and len(ds.extra_x) == 24
    # the cache holds exactly what the decoding policy gives, in sorted file order
    files = list_images(root / "unlabelled")
    for i in (0, 5, 23):
        assert np.array_equal(ds.extra_x[[i]][0], read_image(files[i], 16, 3, "crop"))
    assert np.array_equal(ds.extra_x[2:4], ds.extra_x[[2, 3]])
    # a second load reads the cache (no decoding): same arrays
    again = load_dataset(DataConfig(name="pool", root=str(root), image_size=16))
    assert np.array_equal(again.train_x, ds.train_x) and again.extra_x.path == ds.extra_x.path
    # touching a file changes the cache key
    _img(root / "unlabelled" / "batch0" / "deep" / "u0.png", (0, 0, 0), seed=5)
    assert load_dataset(DataConfig(name="pool", root=str(root), image_size=16)).extra_x.path != ds.extra_x.path


def test_decoding_policy_exif_modes_and_centre_crop(tmp_path):
    # a 40 x 20 image: left half black, centre white band, right half grey -> the centre square is the band
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 10:30] = 255
    a[:, 30:] = 128
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = read_image(str(tmp_path / "wide.png"), 10, 3, "crop")
    # the band fills the crop; the bilinear filter blends its first and last columns with their neighbours
    assert out.shape == (3, 10, 10) and out[:, :, 1:-1].min() == 255 and out[:, :, 0].max() > 128
    assert read_image(str(tmp_path / "wide.png"), 10, 3, "stretch")[0, 5, 0] == 0  # stretch keeps the black edge
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 30 x 10 landscape file shows as 10 x 30
    im = Image.fromarray(np.full((10, 30, 3), 90, np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(str(tmp_path / "rot.jpg"), None, 3).shape == (3, 30, 10)
    # palette, RGBA and greyscale become RGB (or L when the dataset is grey)
    for mode in ("P", "RGBA", "L"):
        _img(tmp_path / f"{mode}.png", (200, 10, 10), mode=mode)
        assert read_image(str(tmp_path / f"{mode}.png"), 8, 3).shape == (3, 8, 8)
    assert read_image(str(tmp_path / "L.png"), 8, 1).shape == (1, 8, 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        read_image(str(tmp_path / "bad.png"), 8, 3)


def test_a_greyscale_pool_has_one_channel(tmp_path):
    root = tmp_path / "g"
    for k, c in enumerate(("a", "b")):
        for i in range(3):
            _img(root / "labelled" / c / f"{i}.png", (60 + 100 * k,) * 3, mode="L", seed=i)
    for i in range(4):
        _img(root / "unlabelled" / f"{i}.png", (100,) * 3, mode="L", seed=50 + i)
    ds = load_dataset(DataConfig(name="pool", root=str(root), image_size=12))
    assert ds.train_x.shape[1] == 1 and ds.extra_x.shape[1:] == (1, 12, 12) and len(ds.test_x) == 0


def test_csv_manifest_relative_paths_and_empty_labels(tmp_path):
    root = make_pool(tmp_path / "p", test=False)
    rows = [("path", "label")]
    rows += [(p.relative_to(root).as_posix(), p.parent.name) for p in sorted((root / "labelled").rglob("*.png"))]
    rows += [(p.relative_to(root).as_posix(), "") for p in sorted((root / "unlabelled").rglob("*.png"))]
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = load_dataset(DataConfig(name="csv", root=str(root / "manifest.csv"), image_size=16))
    pool = load_dataset(DataConfig(name="pool", root=str(root), image_size=16))
    assert ds.classes == pool.classes and np.array_equal(ds.train_y, pool.train_y)
    assert np.array_equal(ds.train_x, pool.train_x) and len(ds.extra_x) == 24 and len(ds.test_x) == 0


def test_the_all_split_labels_everything_but_a_seeded_validation_part():
    y = np.repeat(np.arange(3), [10, 5, 2])
    s = all_split(y, 3, seed=0, val_fraction=0.2)
    assert np.bincount(y[s.val], minlength=3).tolist() == [2, 1, 1]  # at least 1, leaving at least 1
    assert len(np.intersect1d(s.val, s.labelled)) == 0 and len(s.labelled) + len(s.val) == 17
    assert np.array_equal(s.unlabelled, s.labelled)  # include_labelled: FixMatch's convention
    assert np.array_equal(all_split(y, 3, seed=0, val_fraction=0.2).val, s.val)
    assert not np.array_equal(all_split(y, 3, seed=1, val_fraction=0.2).val, s.val)
    with pytest.raises(DataError, match="at least 2 per class"):
        all_split(np.array([0, 0, 1]), 2, seed=0, val_fraction=0.5)
    # split=auto resolves to all for the pool and csv sources only
    assert from_dict({"data": {"name": "pool"}}).data.split == "all"
    assert from_dict({"data": {"name": "digits"}}).data.split == "balanced"


def test_unlabelled_takes_only_the_asked_images_in_order(tmp_path):
    part = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    extra = (np.arange(5 * 3 * 2 * 2) % 251).astype(np.uint8).reshape(5, 3, 2, 2)
    np.save(tmp_path / "e.npy", extra)
    ref = torch.cat([part, torch.from_numpy(extra)])
    idx = np.array([8, 0, 4, 3, 8, 6])
    for ex in (extra, DiskImages(tmp_path / "e.npy")):
        u = Unlabelled(part, ex)
        assert len(u) == 9 and torch.equal(u.take(idx), ref[idx])
    assert torch.equal(Unlabelled(part).take(idx[idx < 4]), part[idx[idx < 4]])


def test_a_pool_without_test_set_reports_validation_figures(tmp_path, capsys):
    root = make_pool(tmp_path / "p", per_class=10, test=False)
    out = tmp_path / "run"
    assert main("train", "--data.name=pool", f"--data.root={root}", f"--run.out={out}", *TRAIN) == 0
    err = capsys.readouterr()
    assert "no test set" in err.err and '"val_top1"' in err.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated_on"] == "val" and "val_top1" in summary["final"] and "test_top1" not in summary["best"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("test" not in r and r["val"]["top1"] >= 0 for r in recs)
    assert json.loads((out / "split.json").read_text())["counts"]["val"] == [2, 2, 2]  # 0.2 of 10
    assert main("eval", out) == 2 and "use --split val" in capsys.readouterr().err
    assert main("eval", out, "--split", "val") == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(recs[-1]["val"]["top1"])
    from semisup.report import build_report

    html = Path(build_report([str(out)], str(tmp_path / "report"), tsne_points=9)).read_text()
    assert "final validation top-1" in html and "features of 6 validation images" in html


def test_a_pool_with_a_test_folder_reports_test_figures(tmp_path, capsys):
    root = make_pool(tmp_path / "p")
    out = tmp_path / "run"
    assert main("train", "--data.name=pool", f"--data.root={root}", f"--run.out={out}", *TRAIN) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated_on"] == "test" and sum(json.loads((out / "split.json").read_text())["counts"]["val"]) == 0


def _bad_pools(tmp_path):
    def empty_pool(r):
        make_pool(r, unlabelled=0)

    def loose(r):
        make_pool(r)
        _img(r / "labelled" / "stray.png", (1, 2, 3))

    def test_class(r):
        make_pool(r)
        _img(r / "test" / "purple" / "0.png", (1, 2, 3))

    def one_class(r):
        _img(r / "labelled" / "only" / "0.png", (1, 2, 3))
        _img(r / "unlabelled" / "0.png", (1, 2, 3))

    return {"empty unlabelled pool": (empty_pool, "pool", "unlabelled pool .* is empty"),
            "images outside a class folder": (loose, "pool", "1 image.* lie directly in .*labelled"),
            "test class not labelled": (test_class, "pool", "test class folder.* purple .* no labelled"),
            "one class only": (one_class, "pool", "every labelled image has the class 'only'")}


def _manifest(tmp_path, lines):
    root = make_pool(tmp_path / "m", test=False)
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


@pytest.mark.parametrize("case", ["empty unlabelled pool", "images outside a class folder", "test class not labelled",
                                  "one class only", "manifest names a missing file", "manifest unknown column",
                                  "manifest one class"])
def test_bad_inputs_give_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    if case.startswith("manifest"):
        lines = {"manifest names a missing file": ["path,label", "labelled/red/0.png,red", "nope/x.png,"],
                 "manifest unknown column": ["path,label,score", "labelled/red/0.png,red,1"],
                 "manifest one class": ["path,label", "labelled/red/0.png,red", "labelled/red/1.png,red",
                                        "unlabelled/batch0/deep/u0.png,"]}[case]
        name, root = "csv", _manifest(tmp_path, lines)
        match = {"manifest names a missing file": "line 3 names 'nope/x.png', but .* does not exist",
                 "manifest unknown column": "unknown column 'score'",
                 "manifest one class": "every labelled image has the class 'red'"}[case]
    else:
        build, name, match = _bad_pools(tmp_path)[case]
        root = tmp_path / "p"
        build(root)
    (tmp_path / "runs").mkdir()
    before = tree(tmp_path)
    code = main("train", f"--data.name={name}", f"--data.root={root}", f"--run.out={tmp_path / 'runs' / 'r'}", *TRAIN)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("semisup: error: ")
    import re

    assert re.search(match, err[0]), err[0]
    assert tree(tmp_path) == before  # the data, the runs folder and the cache untouched


def test_an_image_both_labelled_and_unlabelled_is_reported_once_with_the_count(tmp_path, capsys):
    root = make_pool(tmp_path / "p", test=False)
    for i in range(2):  # the same bytes under another name
        (root / "unlabelled" / f"copy{i}.png").write_bytes((root / "labelled" / "red" / f"{i}.png").read_bytes())
    load_dataset(DataConfig(name="pool", root=str(root), image_size=16))
    warn = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(warn) == 1 and "2 image(s) of the unlabelled pool are also labelled" in warn[0]


def test_resume_sees_a_changed_unlabelled_pool(tmp_path, capsys):
    root = make_pool(tmp_path / "p", test=False)
    out = tmp_path / "run"
    args = ["--data.name=pool", f"--data.root={root}", f"--run.out={out}", *TRAIN]
    assert main("train", *args) == 0
    _img(root / "unlabelled" / "new.png", (5, 5, 5))
    capsys.readouterr()
    assert main("train", "--resume", *args) == 2
    assert "training data" in capsys.readouterr().err
