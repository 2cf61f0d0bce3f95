"""A trained run on new images: semisup.load / `semisup predict` / `semisup export`, without the training data."""
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import ROOT, run_cli
from PIL import Image

import semisup
from semisup import config as C
from semisup.cli import main
from semisup.data.images import list_images, read_images
from semisup.data.transforms import to_float
from semisup.errors import UserError
from semisup.metrics import classification_metrics
from semisup.models import MODELS, build_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
COLOURS = {"blue": (80, 90, 150), "green": (90, 140, 90), "red": (150, 90, 80)}


def write_images(root, seed=0):
    """root/{train,test}/<colour>/*.png, 16x16 RGB: class = colour, each image's shifted at random and noisy, so
    that the classes overlap a little (learnable, with some mistakes left for predict and eval to agree on).
    The test set adds what decoding must get right: images of another size (stretched to 16x16, as the folder
    source does) and a greyscale one."""
    rng = np.random.default_rng(seed)
    for part, n in (("train", 10), ("test", 8)):
        for c, rgb in COLOURS.items():
            (root / part / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                side = 16 if part == "train" or i < 5 else 20 + i  # 16, then 25x25 .. 27x27
                shift = rng.normal(0, 35, 3)
                a = np.clip(np.array(rgb) + shift + rng.normal(0, 60, (side, side, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(a)
                if part == "test" and c == "green" and i == 0:
                    im = im.convert("L")
                im.save(root / part / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run (20 steps of FixMatch, smallcnn) on a folder of PNGs, shared by the module."""
    tmp = tmp_path_factory.mktemp("inference")
    data = write_images(tmp / "data")
    out = tmp / "run"
    env = {"SEMISUP_CACHE": str(tmp / "cache")}  # the folder source's decoded-image cache
    res = run_cli("train", "--data.name=folder", f"--data.root={data}", "--data.image_size=16",
                  "--data.num_labels=6", "--model.name=smallcnn", "--model.width=1", "--train.steps=20",
                  "--train.eval_every=10", "--train.batch_size=8", "--train.mu=2", "--run.threads=1",
                  "--run.progress=false", "--run.tensorboard=false", "--run.fused_bn=off", f"--run.out={out}",
                  env=env)
    assert res.returncode == 0, res.stderr
    assert (out / "best.pt").is_file()
    return {"dir": out, "data": data, "tmp": tmp, "env": env}


@pytest.fixture(scope="module")
def cli_rows(run):
    """`semisup predict RUN test/ --top-k 2 -o FILE`: the CSV rows, and what stdout and stderr said."""
    csv_path = run["tmp"] / "pred.csv"
    res = run_cli("predict", run["dir"], run["data"] / "test", "--top-k", 2, "-o", csv_path)
    assert res.returncode == 0, res.stderr
    return list(csv.DictReader(csv_path.open())), res


def test_predict_csv_scores_exactly_what_eval_reports(run, cli_rows):
    rows, res = cli_rows
    assert list(rows[0]) == ["path", "class", "probability", "class_2", "probability_2"]
    assert res.stdout == ""  # the CSV went to the file
    summary = res.stderr.strip().splitlines()
    assert len(summary) == 1 and "24 images in" in summary[0], res.stderr
    paths = list_images(run["data"] / "test")
    assert [r["path"] for r in rows] == paths
    for r in rows:
        p1, p2 = float(r["probability"]), float(r["probability_2"])
        assert 0 <= p2 <= p1 <= 1 and p1 + p2 <= 1 + 1e-5 and r["class"] != r["class_2"]
    acc = np.mean([r["class"] == r["path"].split("/")[-2] for r in rows])
    ev = run_cli("eval", run["dir"], env=run["env"])
    assert ev.returncode == 0, ev.stderr
    ev = json.loads(ev.stdout)
    assert acc == ev["top1"]  # same images, same preprocessing, same numerics: exactly
    assert 0.5 < acc < 1, "the tiny run learns, with some mistakes to agree on"
    # and the same mistakes: every class's recall and precision from the CSV's confusion matrix
    names = list(COLOURS)
    cm = np.zeros((3, 3), np.int64)
    for r in rows:
        cm[names.index(r["path"].split("/")[-2]), names.index(r["class"])] += 1
    mine = classification_metrics(cm)
    for k in ("top1", "balanced_acc", "per_class_recall", "per_class_precision"):
        assert mine[k] == ev[k], k
    # without -o the same CSV comes on stdout, and only the summary on stderr
    res = run_cli("predict", run["dir"], run["data"] / "test", "--top-k", 2, "--batch-size", 5)
    assert res.returncode == 0, res.stderr
    assert list(csv.DictReader(io.StringIO(res.stdout))) == rows
    assert len(res.stderr.strip().splitlines()) == 1


def _decoded_test_images(run):
    p = semisup.load(run["dir"], amp="off")
    paths = list_images(run["data"] / "test")
    return p, paths, read_images(paths, p.image_size, p.channels, p.fit)  # uint8 (N, C, H, W)


def test_onnx_export_matches_pytorch_on_real_images_at_any_batch_size(run):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    res = run_cli("export", run["dir"], "--format", "onnx")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    f = run["dir"] / "model.onnx"
    assert info["file"] == str(f) and info["format"] == "onnx" and info["max_abs_diff"] <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
    p, paths, x = _decoded_test_images(run)
    assert json.loads(props["classes"]) == p.classes == ["blue", "green", "red"]
    meta = json.loads(props["semisup.json"])
    assert (meta["image_size"], meta["channels"], meta["fit"], props["input_dtype"]) == (16, 3, "stretch", "uint8")
    assert meta["mean"] == pytest.approx(list(p.mean)) and meta["std"] == pytest.approx(list(p.std))
    want = p.logits(x)  # (N, K) float32, PyTorch
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x})[0]
    assert got.dtype == np.float32 and got.shape == (len(paths), 3)
    assert np.abs(got - want).max() <= 1e-4
    for n in (1, 5):  # the batch dimension is dynamic
        assert np.abs(sess.run(None, {"images": x[:n]})[0] - want[:n]).max() <= 1e-4
    # --input float: float32 pixels in [0, 1]
    from semisup.export import export

    g = run["tmp"] / "float.onnx"
    export(run["dir"], "onnx", g, input_dtype="float")
    sess = ort.InferenceSession(str(g), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        out = sess.run(None, {"images": x[:n].astype(np.float32) / 255})[0]
        assert np.abs(out - want[:n]).max() <= 1e-4


TS_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    m = torch.jit.load(sys.argv[1], _extra_files=(extra := {"semisup.json": ""}))
    x = torch.from_numpy(np.load(sys.argv[2]))
    out = {"meta": json.loads(extra["semisup.json"]), "attrs": [list(m.classes), m.image_size, m.channels, m.fit]}
    with torch.no_grad():
        for n in (1, 5, len(x)):
            out[f"uint8_{n}"] = m(x[:n]).tolist()
            out[f"float_{n}"] = m(x[:n].float() / 255).tolist()
            out[f"dtype_{n}"] = str(m(x[:n]).dtype)
    print(json.dumps(out))
""")


def test_torchscript_export_in_a_fresh_process(run):
    res = run_cli("export", run["dir"], "--format", "torchscript", "-o", run["tmp"] / "m.ts")
    assert res.returncode == 0, res.stderr
    p, paths, x = _decoded_test_images(run)
    np.save(run["tmp"] / "x.npy", x)
    child = subprocess.run([sys.executable, "-c", TS_CHILD, str(run["tmp"] / "m.ts"), str(run["tmp"] / "x.npy")],
                           capture_output=True, text=True, timeout=300, cwd=run["tmp"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out["meta"]["classes"] == p.classes and out["attrs"] == [p.classes, 16, 3, "stretch"]
    assert out["meta"]["head"] == "model" and out["meta"]["weights"] == "ema"
    want = p.logits(x)
    for n in (1, 5, len(x)):
        for kind in ("uint8", "float"):
            assert np.abs(np.array(out[f"{kind}_{n}"]) - want[:n]).max() <= 1e-4, (kind, n)
        assert out[f"dtype_{n}"] == "torch.float32"


def test_library_predict_takes_paths_arrays_tensors_and_pil_images(run, cli_rows):
    rows, _ = cli_rows
    want = [r["class"] for r in rows]
    p = semisup.load(run["dir"])  # the run's own numerics, as the CLI
    assert p.classes == ["blue", "green", "red"] and (p.image_size, p.channels) == (16, 3)
    paths = [r["path"] for r in rows]
    by_path = p.predict(paths, top_k=2, batch_size=7)
    assert [r["class"] for r in by_path] == want
    assert [r["top_k"][1][0] for r in by_path] == [r["class_2"] for r in rows]
    assert [f"{r['probability']:.6f}" for r in by_path] == [r["probability"] for r in rows]
    x = read_images(paths, 16, 3, p.fit)  # (N, C, H, W) uint8, as the files decode
    assert [r["class"] for r in p.predict(x.transpose(0, 2, 3, 1))] == want  # numpy (N, H, W, C)
    assert [r["class"] for r in p.predict(x)] == want  # numpy (N, C, H, W)
    assert [r["class"] for r in p.predict(torch.from_numpy(x), batch_size=4)] == want  # tensor (N, C, H, W)
    ims = [Image.open(f) for f in paths]  # PIL images of any size and mode: the files' own policy
    assert [r["class"] for r in p.predict(ims)] == want
    # arrays of another size go through the same policy as files: a 25x25 array as its PNG file
    big = [f for f in paths if Image.open(f).size == (25, 25)]
    arr = np.stack([np.asarray(Image.open(f)) for f in big])  # (n, 25, 25, 3)
    assert np.array_equal(p.logits(arr), p.logits(big))
    grey = p.predict(x[:, 0])  # (N, H, W): greyscale, replicated to RGB
    assert len(grey) == len(paths) and {r["class"] for r in grey} <= set(p.classes)
    assert p.logits(x).shape == (len(paths), 3) and p.logits(x).dtype == np.float32
    for bad, msg in ((x.astype(np.float32), "must be uint8"), (x[0, 0, 0], "not a batch"), ([3], "is a int")):
        with pytest.raises(UserError, match=msg):
            p.predict(bad)
    with pytest.raises(UserError, match="top_k must be between 1 and the number of classes"):
        p.predict(paths, top_k=4)


def test_a_run_copied_without_its_data_still_predicts(run, tmp_path):
    copy = tmp_path / "shipped"
    copy.mkdir()
    for f in ("config.yaml", "best.pt"):  # no data, no split.json, no metrics
        shutil.copy(run["dir"] / f, copy / f)
    shutil.move(run["data"], tmp_path / "moved")  # the training data gone from where the config says
    try:
        p = semisup.load(copy)
        imgs = sorted((tmp_path / "moved" / "test").rglob("*.png"))
        assert [r["class"] for r in p.predict(imgs)] == [r["class"] for r in semisup.load(run["dir"]).predict(imgs)]
    finally:
        shutil.move(tmp_path / "moved", run["data"])


def _corrupt_folder(run, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.png").write_bytes((run["data"] / "test" / "red" / "0.png").read_bytes())
    (d / "b.png").write_bytes(b"not a png at all")
    return [run["dir"], d]


def _not_a_run(run, tmp_path):
    (tmp_path / "plain").mkdir()
    return [tmp_path / "plain", run["data"] / "test"]


def _corrupt_checkpoint(run, tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.yaml").write_bytes((run["dir"] / "config.yaml").read_bytes())
    (d / "best.pt").write_bytes((run["dir"] / "best.pt").read_bytes()[:3000])
    return [d, run["data"] / "test"]


@pytest.mark.parametrize("make, message", [
    (lambda run, tmp: [tmp / "missing", run["data"] / "test"], r"'.*missing' does not exist"),
    (_not_a_run, r"is not a run directory \(no config.yaml in it\)"),
    (_corrupt_checkpoint, r"best.pt' is corrupt or truncated"),
    (lambda run, tmp: [run["dir"], tmp], r"no image found under"),
    (lambda run, tmp: [run["dir"], tmp / "nowhere"], r"'.*nowhere' does not exist"),
    (_corrupt_folder, r"cannot read image .*b.png \(UnidentifiedImageError"),
], ids=["run-dir-missing", "not-a-run-dir", "corrupt-checkpoint", "no-images", "path-missing", "corrupt-image"])
def test_predict_user_errors_exit_2_with_one_line_and_write_nothing(run, tmp_path, capsys, make, message):
    args = make(run, tmp_path)
    out = tmp_path / "out.csv"
    code = main(["predict", *map(str, args), "-o", str(out)])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert code == 2 and len(err) == 1, cap.err
    assert err[0].startswith("semisup: error: ")
    assert re.search(message, err[0]), err[0]
    assert cap.out == "" and not out.exists()
    assert not list(tmp_path.glob(".out.csv.tmp*"))


def test_predict_error_from_the_command_line(run, tmp_path):
    """The real process: exit code 2, one line, no file (a corrupt image found after good ones)."""
    args = _corrupt_folder(run, tmp_path)
    out = tmp_path / "p.csv"
    res = run_cli("predict", *args, "-o", out, "--batch-size", 1)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "cannot read image" in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "imgs"]


def test_export_user_errors(run, tmp_path, capsys, monkeypatch):
    ts = ["export", str(run["dir"]), "--format", "torchscript"]
    cases = [(["export", str(tmp_path / "nope"), "--format", "onnx"], "does not exist"),
             ([*ts, "--input", "float"], "--input is for --format onnx"),
             ([*ts, "-o", str(tmp_path / "no" / "m.ts")], "does not exist")]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert main(["export", str(run["dir"]), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'semisup[export]'" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_an_algorithm_with_its_own_head_is_exported_with_it(run, tmp_path, monkeypatch):
    """ABC predicts with its balanced head: predict and both exports use it, not the model's head."""
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "abc"
    cfg = C.resolve(overrides=[
        "--data.name=folder", f"--data.root={run['data']}", "--data.image_size=16", "--data.num_labels=6",
        "--model.name=smallcnn", "--model.width=1", "--train.steps=4", "--train.eval_every=4",
        "--train.batch_size=8", "--algorithm.name=abc", "--run.threads=1", "--run.progress=false",
        "--run.tensorboard=false", "--run.fused_bn=off", f"--run.out={out}"])
    monkeypatch.setenv("SEMISUP_CACHE", run["env"]["SEMISUP_CACHE"])
    semisup.train(cfg)
    p = semisup.load(out, amp="off")
    assert p.head == "abc"
    paths = list_images(run["data"] / "test")
    x = read_images(paths, 16, 3, p.fit)
    want = p.logits(x)
    with torch.no_grad():
        own = p.model(to_float(torch.from_numpy(x), p.mean, p.std)).logits.numpy()  # the model's own head
    assert np.abs(own - want).max() > 1e-3  # the two heads differ: the test below can tell them apart
    from semisup.export import export

    info = export(out, "onnx")
    assert info["head"] == "abc"
    sess = ort.InferenceSession(info["file"], providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"images": x})[0] - want).max() <= 1e-4
    ts = torch.jit.load(export(out, "torchscript")["file"])
    with torch.no_grad():
        assert np.abs(ts(torch.from_numpy(x)).numpy() - want).max() <= 1e-4


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_exports_to_both_formats(name, tmp_path):
    """A run directory written by hand (random weights, batch norm statistics away from 0 / 1), so that every
    model of the registry is exported and checked at batch sizes 1 and 5; lenet as a greyscale model."""
    ort = pytest.importorskip("onnxruntime")
    channels, size = (1, 28) if name == "lenet" else (3, 32)
    cfg = C.resolve(overrides=[f"--model.name={name}", "--model.depth=10" if name == "wrn" else "--model.width=1",
                               "--run.threads=1"])
    (tmp_path / "config.yaml").write_text(C.to_yaml(cfg))
    torch.manual_seed(0)
    model = build_model(cfg.model, 4, channels, size)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    meta = {"classes": ["a", "b", "c", "d"], "num_classes": 4, "channels": channels, "image_size": size,
            "mean": [0.4] * channels, "std": [0.25] * channels, "model": name, "algorithm": cfg.algorithm.name}
    torch.save({"model": model.state_dict(), "ema": None, "step": 0, "meta": meta}, tmp_path / "best.pt")
    from semisup.export import export

    p = semisup.load(tmp_path, amp="off")
    assert p.weights == "raw" and p.fit == "stretch"  # no EMA saved; no fit recorded: the old default
    x = np.random.default_rng(1).integers(0, 256, (5, channels, size, size), dtype=np.uint8)
    want = p.logits(x)
    sess = ort.InferenceSession(export(tmp_path, "onnx")["file"], providers=["CPUExecutionProvider"])
    ts = torch.jit.load(export(tmp_path, "torchscript")["file"])
    for n in (1, 5):
        assert np.abs(sess.run(None, {"images": x[:n]})[0] - want[:n]).max() <= 1e-4
        with torch.no_grad():
            assert np.abs(ts(torch.from_numpy(x[:n])).numpy() - want[:n]).max() <= 1e-4


def test_import_semisup_exposes_load_lazily():
    code = "import sys, semisup; print('semisup.inference' in sys.modules, 'semisup.export' in sys.modules, " \
           "'semisup.load' in [f'semisup.{n}' for n in semisup.__all__])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "True"]
