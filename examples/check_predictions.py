"""Score a predictions CSV against the true classes, and check the exported files on the same images.

    python examples/check_predictions.py predictions.csv data/cifar_pool/new_images_answers.csv \
        --run runs/cifar_pool --onnx runs/cifar_pool/model.onnx --torchscript runs/cifar_pool/model.ts

Accuracy joins the two CSVs (path,label answers as examples/make_pool.py writes them) by file name. With
--run, every predicted image is decoded as the run decodes it and the exported files' logits are compared
with PyTorch's float32 logits of the run's model: the max absolute difference over all images and classes.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions")
    ap.add_argument("answers")
    ap.add_argument("--run", help="the run directory the predictions came from")
    ap.add_argument("--onnx")
    ap.add_argument("--torchscript")
    a = ap.parse_args(argv)
    with open(a.answers) as f:
        truth = {Path(r["path"]).name: r["label"] for r in csv.DictReader(f)}
    with open(a.predictions) as f:
        rows = list(csv.DictReader(f))
    hits = [truth[Path(r["path"]).name] == r["class"] for r in rows]
    out = {"images": len(rows), "accuracy": round(float(np.mean(hits)), 4)}
    if a.run:
        import torch

        import semisup
        from semisup.data.images import read_image

        pred = semisup.load(a.run, amp="off")  # float32, as the exported files compute
        x = np.stack([read_image(r["path"], pred.image_size, pred.channels, pred.fit) for r in rows])  # uint8
        ref = pred.logits(x)  # (N, K) float32
        if a.onnx:
            import onnxruntime as ort

            sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
            got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 256]})[0]
                                  for i in range(0, len(x), 256)])
            out["onnx_max_abs_diff"] = float(np.abs(got - ref).max())
        if a.torchscript:
            m = torch.jit.load(a.torchscript)
            with torch.no_grad():
                got = torch.cat([m(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
            out["torchscript_max_abs_diff"] = float(np.abs(got - ref).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
