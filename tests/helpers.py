import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="apt-get install dataset-fashion-mnist")


def run_cli(*args, timeout=600, env=None):
    """Run `python -m semisup ARGS` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "semisup", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=e)


def tiny_overrides(out, steps=8, **extra):
    """A run of a few seconds on scikit-learn's digits (the fastest real data)."""
    ov = {"data.name": "digits", "data.labels_per_class": 2, "model.name": "smallcnn", "model.width": 1,
          "train.steps": steps, "train.eval_every": 4, "train.batch_size": 16, "train.mu": 2,
          "run.progress": "false", "run.tensorboard": "false", "run.out": out, "run.threads": 1}
    ov.update(extra)
    return [f"--{k}={v}" for k, v in ov.items()]
