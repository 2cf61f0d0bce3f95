import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from semisup.algorithms import Batch, Context
from semisup.models import ModelOutput

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="apt-get install dataset-fashion-mnist")


def run_cli(*args, timeout=600, env=None):
    """Run `python -m semisup ARGS` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "semisup", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=e)


class Tiny(nn.Module):
    """A small conv net with BN (and dropout), the model interface (logits, features, head): 1 x 8 x 8 in."""

    def __init__(self, c=1, k=3, dropout=0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), *([nn.Dropout(dropout)] if dropout else []))
        self.num_features = 4
        self.head = nn.Linear(4, k)

    def forward(self, x):
        f = self.body(x)
        return ModelOutput(self.head(f), f)


def tiny_batch(alg, B=4, U=8, step=0, seed=0) -> Batch:
    """Random 1 x 8 x 8 views of B labelled and U unlabelled images, as ``alg`` asks for them; 3 classes."""
    g = torch.Generator().manual_seed(seed)
    x_l = {v: torch.randn(B, 1, 8, 8, generator=g) for v in alg.views_l}
    x_u = {v: torch.randn(U, 1, 8, 8, generator=g) for v in alg.views_u}
    return Batch(x_l, torch.randint(0, 3, (B,), generator=g), x_u, step=step)


def unpack(out) -> tuple:
    """An algorithm's StepOutput as (loss, stats): the loss terms and diagnostics, plus "pseudo_label", "mask"
    and "pseudo_label_<name>" for other classifiers' labels (the names a metrics record gives them)."""
    stats = dict(out.terms)
    if out.pseudo_label is not None:
        stats.update(pseudo_label=out.pseudo_label, mask=out.mask)
    stats.update({f"pseudo_label_{k}": v for k, v in out.other_labels.items()})
    return out.loss, stats


def tiny_context(counts=(4, 2, 1)) -> Context:
    return Context(num_classes=len(counts), labelled_counts=np.array(counts), num_features=4, steps=10)


def tiny_overrides(out, steps=8, **extra):
    """A run of a few seconds on scikit-learn's digits (the fastest real data)."""
    ov = {"data.name": "digits", "data.labels_per_class": 2, "model.name": "smallcnn", "model.width": 1,
          "train.steps": steps, "train.eval_every": 4, "train.batch_size": 16, "train.mu": 2,
          "run.progress": "false", "run.tensorboard": "false", "run.out": out, "run.threads": 1}
    ov.update(extra)
    return [f"--{k}={v}" for k, v in ov.items()]


def tree(d):
    """{relative path: sha1} of every file under d: 'nothing was touched' means an equal tree."""
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(d).rglob("*")) if p.is_file()}


# -- training in a child process that can be killed at a chosen moment ---------------------------
# `python -m semisup` pays ~5 s of imports per process on this machine; a forkserver pays them once
# and forks every child from a clean, single-threaded server that has semisup imported already.
_CTX = []


def _context():
    if not _CTX:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["helpers", "semisup.cli", "semisup.train"])
        _CTX.append(ctx)
    return _CTX[0]


KILL_POINTS = ("step", "saved", "logged", "write", "rotate")


def _child(argv, log, kill, slow_write):
    """Runs in the child: `semisup ARGV` (semisup.cli.main), exit code = its return value.

    kill=(where, step): the process sends itself SIGKILL (uncatchable: no handler, no flush, exactly an
    external kill) at a precise moment of step ``step``:
      step    inside the step: after the forward pass, before the optimizer update (counted from the
              process's first step: a resumed run's first step is at=0)
      logged  at an eval step: its record is in metrics.jsonl but no checkpoint of it is written yet
      saved   right after last.pt of that step was renamed into place
      write   half-way through writing last.pt's temp file
      rotate  between the two renames (last.pt -> last.prev.pt done, temp -> last.pt not yet)
    slow_write: last.pt's temp file is written in small chunks with pauses, so that an external kill
    (the test's) can land inside the write, as it would for a model of hundreds of megabytes.
    """
    import io
    import threading

    import torch
    from tqdm.auto import tqdm

    from semisup import checkpoint, cli, runtime

    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a multiprocessing one a killed child would leak

    f = open(log, "w", buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    where, at = kill or (None, None)
    now = {"step": None, "updates": 0}

    def die():
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    real_backward, real_save, real_torch_save, real_replace = (
        runtime.Runtime.backward_step, checkpoint.save, torch.save, os.replace)

    def backward_step(self, *a, **k):
        now["updates"] += 1  # the n-th update of this process (of step n - 1 in a fresh run)
        if where == "step" and now["updates"] == at + 1:
            die()
        return real_backward(self, *a, **k)

    def save(obj, path, *a, **k):
        now["step"] = obj["step"] if Path(path).name == "last.pt" else None
        if where == "logged" and obj["step"] == at:
            die()
        real_save(obj, path, *a, **k)
        if where == "saved" and now["step"] == at:
            die()

    def torch_save(obj, fh, *a, **k):
        if now["step"] is None or not (slow_write or (where == "write" and now["step"] == at)):
            return real_torch_save(obj, fh, *a, **k)
        buf = io.BytesIO()
        real_torch_save(obj, buf, *a, **k)
        data = buf.getvalue()
        if where == "write":
            fh.write(data[:len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            die()
        for i in range(0, len(data), 1 << 16):  # slow_write: 10 ms per 64 kB (~0.15 s for this run's ~1 MB)
            fh.write(data[i:i + (1 << 16)])
            fh.flush()
            time.sleep(0.01)

    def replace(src, dst):
        real_replace(src, dst)
        if where == "rotate" and now["step"] == at and Path(dst).name == "last.prev.pt":
            die()

    runtime.Runtime.backward_step, checkpoint.save, torch.save, checkpoint.os.replace = (
        backward_step, save, torch_save, replace)
    sys.exit(cli.main(list(map(str, argv))))


def start_child(argv, log, kill=None, slow_write=False):
    """Start `semisup ARGV` in a forked child (see _child); returns the multiprocessing Process."""
    p = _context().Process(target=_child, args=(list(map(str, argv)), str(log), kill, slow_write))
    p.start()
    return p


def run_child(argv, log, kill=None, timeout=300):
    """start_child and wait; returns the exit code (-9 when it killed itself)."""
    p = start_child(argv, log, kill)
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise TimeoutError(f"semisup {' '.join(map(str, argv))} ran past {timeout} s")
    return p.exitcode
