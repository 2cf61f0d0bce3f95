"""The README's worked example in miniature, through the CLI: a folder of a few labelled and many unlabelled
images, no test set -> train -> report -> predict new images into a CSV -> export; and the same path with a
timm backbone started from a local weights file."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT

from semisup import cli

COLOURS = {"cyan": (20, 200, 210), "orange": (230, 140, 20), "purple": (120, 30, 160)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))


def _save(path, colour, seed, size=(24, 20)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour)[None, None] + rng.integers(-40, 41, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def build_example(root, labelled=8, unlabelled=60, new=12):
    """labelled/<class>/, one flat unlabelled/ folder, and new_images/ + their answers, as examples/make_pool.py."""
    cols = list(COLOURS.items())
    for k, (c, col) in enumerate(cols):
        for i in range(labelled):
            _save(root / "labelled" / c / f"{i}.jpg", col, seed=100 * k + i)
    for i in range(unlabelled):
        _save(root / "unlabelled" / f"u{i:04d}.png", cols[i % 3][1], seed=5000 + i, size=(20 + i % 7, 20))
    answers = {}
    for i in range(new):
        c, col = cols[i % 3]
        _save(root / "new_images" / f"n{i:03d}.png", col, seed=9000 + i, size=(30, 20))
        answers[f"n{i:03d}.png"] = c
    return answers


def main(*argv):
    return cli.main([str(a) for a in argv])


def _predict(run, folder, out, capsys):
    assert main("predict", run, folder, "-o", out, "--top-k", "2") == 0
    assert "predicted" in capsys.readouterr().err
    with open(out) as f:
        return list(csv.DictReader(f))


def _exports_agree(run, rows, tmp_path):
    """The ONNX file in onnxruntime and the TorchScript file in a fresh process give predict's classes."""
    from semisup.data.images import read_image

    assert main("export", run, "--format", "onnx", "-o", tmp_path / "m.onnx") == 0
    assert main("export", run, "--format", "torchscript", "-o", tmp_path / "m.ts") == 0
    meta = json.loads((run / "config.yaml").parent.joinpath("summary.json").read_text())  # the run finished
    assert meta["steps"] > 0
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    facts = json.loads(sess.get_modelmeta().custom_metadata_map["semisup.json"])
    x = np.stack([read_image(r["path"], facts["image_size"], facts["channels"], facts["fit"]) for r in rows])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert [facts["classes"][k] for k in logits.argmax(1)] == [r["class"] for r in rows]
    np.save(tmp_path / "x.npy", x)
    code = ("import json, sys, numpy as np, torch\n"
            "files = {'semisup.json': ''}\n"
            f"m = torch.jit.load({str(tmp_path / 'm.ts')!r}, _extra_files=files)\n"
            "classes = json.loads(files['semisup.json'])['classes']\n"
            f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
            "print(json.dumps([classes[k] for k in m(x).argmax(1).tolist()]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [r["class"] for r in rows]


def test_worked_example_in_miniature(tmp_path, capsys):
    root = tmp_path / "my_images"
    answers = build_example(root)
    run = tmp_path / "runs" / "mine"
    code = main("train", "--data.name=pool", f"--data.root={root}", "--data.image_size=16", "--model.name=smallcnn",
                "--model.width=1", "--train.steps=40", "--train.eval_every=20", "--train.batch_size=12",
                "--train.mu=2", "--optim.ema=0.9", "--run.threads=1", "--run.progress=false", f"--run.out={run}")
    assert code == 0
    err = capsys.readouterr()
    assert "no test set" in err.err and json.loads(err.out)["val_top1"] >= 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluated_on"] == "val"
    assert main("report", run, "--tsne", "0") == 0
    assert "final validation top-1" in (run / "report" / "report.html").read_text()
    capsys.readouterr()
    rows = _predict(run, root / "new_images", tmp_path / "pred.csv", capsys)
    assert len(rows) == 12 and set(rows[0]) == {"path", "class", "probability", "class_2", "probability_2"}
    acc = np.mean([answers[r["path"].rsplit("/", 1)[-1]] == r["class"] for r in rows])
    assert acc >= 0.75  # three colours: learnt in 40 steps (chance is 1/3)
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows)
    # the Python API gives the same classes
    import semisup

    api = semisup.load(run).predict([r["path"] for r in rows])
    assert [p["class"] for p in api] == [r["class"] for r in rows]
    _exports_agree(run, rows, tmp_path)


def test_a_timm_backbone_from_a_local_weights_file_trains_predicts_and_exports(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "w.safetensors"))
    root = tmp_path / "my_images"
    build_example(root, labelled=6, unlabelled=24, new=6)
    run = tmp_path / "runs" / "timm"
    code = main("train", "--data.name=pool", f"--data.root={root}", "--data.image_size=32",
                "--model.name=timm:test_resnet", f"--model.pretrained={tmp_path / 'w.safetensors'}",
                "--train.steps=6", "--train.eval_every=3", "--train.batch_size=6", "--train.mu=1",
                "--run.threads=1", "--run.progress=false", f"--run.out={run}")
    assert code == 0
    capsys.readouterr()
    (tmp_path / "w.safetensors").unlink()  # a finished run no longer needs the weights file
    rows = _predict(run, root / "new_images", tmp_path / "pred.csv", capsys)
    assert len(rows) == 6 and all(r["class"] in COLOURS for r in rows)
    _exports_agree(run, rows, tmp_path)
