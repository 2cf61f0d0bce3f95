"""Reliability: kills at any moment, atomic checkpoints, pre-emption signals, non-finite
losses, and bad input refused with one line, exit code 2 and the run directory left byte-identical.

Runs that must die are real processes: forked from a forkserver that has semisup imported (see
tests/helpers.py), which saves the ~5 s of imports `python -m semisup` pays per process here.
"""
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import KILL_POINTS, ROOT, run_child, start_child, tiny_overrides, tree
from writers import write_folder, write_mnist

from semisup import checkpoint
from semisup import config as C
from semisup.algorithms import ALGORITHMS
from semisup.cli import main
from semisup.errors import DataError, UserError
from semisup.runtime import Runtime
from semisup.train import train

# Deterministic, with every kind of state the issue lists: dropout (torch RNG), EMA, SGD momentum, cosine
# schedule, ReMixMatch's running class distribution and rotation head, CTAugment's learned bin weights,
# and checkpoints every 2 steps so that kills land between, on and inside checkpoints.
STEPS = 24
COMMON = {"run.deterministic": "true", "run.amp": "off", "train.steps": STEPS, "train.eval_every": 6,
          "train.save_every": 2, "model.dropout": 0.2, "algorithm.name": "remixmatch", "data.strong": "ctaugment"}
TIMING = ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median")


def records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k in TIMING:
            r.pop(k)
        out.append(r)
    return out


def weights(run_dir):
    ck = torch.load(run_dir / "last.pt", weights_only=False)
    return ck["step"], {f"{part}.{k}": v for part in ("model", "ema") for k, v in ck[part].items()}


def assert_same_weights(a, b):
    (sa, wa), (sb, wb) = a, b
    assert sa == sb and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce exactly."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code = run_child(["train", *tiny_overrides(out, **COMMON)], out.parent / "log")
    assert code == 0, (out.parent / "log").read_text()
    recs = records(out)
    assert [r["step"] for r in recs] == [6, 12, 18, 24]
    return out, recs, weights(out)


def resume_and_compare(out, reference, extra_steps=()):
    """Resume `out` to the end; its metrics (bar timings) and final weights must equal the reference's."""
    ref_dir, ref_recs, ref_w = reference
    code = run_child(["train", "--resume", f"--run.out={out}"], out.parent / f"{out.name}.resume.log")
    log = (out.parent / f"{out.name}.resume.log").read_text()
    assert code == 0, log
    got = [r for r in records(out) if r["step"] not in extra_steps]
    assert [r["step"] for r in got] == [r["step"] for r in ref_recs], "one record per evaluation, no duplicates"
    for a, b in zip(ref_recs, got):
        assert a == b, f"step {a['step']} differs after resume"
    assert_same_weights(weights(out), ref_w)
    assert not list(out.glob(".*tmp*")), "stale temp files are cleared on resume"
    return log


# -- 1. SIGKILL at random moments -------------------------------------------------------------------
def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    """Five kills, one per kind of moment (mid-step; after an eval record but before its checkpoint;
    right after a checkpoint; half-way through writing one; between its two renames), each at a random
    step drawn from a seeded RNG, plus one before any checkpoint exists. Each resumed run ends with
    exactly the reference's metrics (bar timings) and weights."""
    rng = random.Random(8)  # fixed: a failure names a trial that can be re-run
    steps = {"step": range(1, STEPS), "logged": (6, 12, 18), "saved": range(2, STEPS, 2),
             "write": range(2, STEPS, 2), "rotate": range(4, STEPS, 2)}  # rotate: a last.pt must exist
    trials = [(where, rng.choice(steps[where])) for where in rng.sample(KILL_POINTS, len(KILL_POINTS))]
    trials.append(("write", 2))  # and the earliest: inside the first checkpoint write (resume starts at 0)
    for where, at in trials:
        out = tmp_path / f"{where}{at}"
        code = run_child(["train", *tiny_overrides(out, **COMMON)], tmp_path / f"{where}{at}.log", kill=(where, at))
        assert code == -signal.SIGKILL, f"{where}@{at}: the run must really have been killed, exit {code}"
        assert not (out / "summary.json").exists()
        temps = list(out.glob(".last.pt.tmp*"))
        if where == "write":  # died inside the write: a partial temp file, the previous last.pt intact
            assert temps and (at == 2) != (out / "last.pt").exists(), f"{where}@{at}"
            with pytest.raises(UserError, match="is corrupt or truncated"):
                checkpoint.load(temps[0])
        elif where == "rotate":  # died between the renames: no last.pt, last.prev.pt and the new temp file
            assert temps and not (out / "last.pt").exists() and (out / "last.prev.pt").exists()
        else:
            assert not temps
        if (out / "last.pt").exists():
            assert torch.load(out / "last.pt", weights_only=False)["step"] <= at
        log = resume_and_compare(out, reference)
        if where == "rotate":
            assert "last.pt' is missing" in log and "last.prev.pt" in log
        if where == "write" and at == 2:
            assert "holds no checkpoint" in log and "starting it from step 0" in log


# -- 2. a real kill during a checkpoint write -------------------------------------------------------
def test_a_kill_landing_inside_a_checkpoint_write_keeps_the_previous_checkpoint(reference, tmp_path):
    """The test SIGKILLs the run from outside while last.pt's temp file is being written (the child writes
    it in slow chunks, as a large model would); the kill counts only if the temp file is still there
    afterwards, i.e. the rename never happened. last.pt is then the previous, complete checkpoint."""
    rng = random.Random(1)
    for attempt in range(5):
        out = tmp_path / f"try{attempt}"
        p = start_child(["train", *tiny_overrides(out, **COMMON)], tmp_path / f"try{attempt}.log", slow_write=True)
        deadline = time.time() + 120
        while p.is_alive() and not (out / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.002)  # the first checkpoint is in place: the next write has a predecessor
        while p.is_alive() and not [t for t in out.glob(".last.pt.tmp*") if t.stat().st_size] \
                and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))  # a write takes ~0.15 s
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        temps = list(out.glob(".last.pt.tmp*"))
        if p.exitcode == -signal.SIGKILL and temps and (out / "last.pt").exists():
            break
    else:
        pytest.fail("no kill landed inside a checkpoint write in 5 attempts")
    with pytest.raises(UserError, match="is corrupt or truncated"):  # the interrupted write
        checkpoint.load(temps[0])
    ck, path = checkpoint.load_latest(out)  # the previous checkpoint survives, whole
    assert path == out / "last.pt" and 2 <= ck["step"] < STEPS
    resume_and_compare(out, reference)


# -- pre-emption: SIGTERM / SIGINT ------------------------------------------------------------------
def test_sigterm_checkpoints_exits_143_and_the_resumed_run_equals_the_uninterrupted_one(reference, tmp_path):
    """Cluster pre-emption, end to end in a real `python -m semisup train`: SIGTERM -> the step finishes,
    the run is evaluated, last.pt holds that step, one line says how to continue, exit 143 (128 + 15)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "semisup", "train", *tiny_overrides(out, **COMMON)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].strip()
    assert proc.returncode == 128 + signal.SIGTERM, err
    m = re.fullmatch(r"semisup: interrupted: stopped by SIGTERM after step (\d+); checkpoint '.*last\.pt' written; "
                     r"continue with: semisup train --resume --run\.out=.*", err.splitlines()[-1])
    assert m, err
    n = int(m.group(1))
    assert 2 <= n < STEPS
    assert torch.load(out / "last.pt", weights_only=False)["step"] == n
    assert records(out)[-1]["step"] == n  # the stop evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == n
    # the stop's extra record (when n is not an eval step) is the only difference
    resume_and_compare(out, reference, extra_steps=() if n % 6 == 0 else (n,))


def test_sigint_checkpoints_and_exits_130(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "log"
    p = start_child(["train", *tiny_overrides(out, steps=400, **{"train.save_every": 2})], log)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and p.is_alive() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGINT)
    p.join(120)
    assert p.exitcode == 128 + signal.SIGINT, log.read_text()
    n = torch.load(out / "last.pt", weights_only=False)["step"]
    assert 2 <= n < 400 and f"stopped by SIGINT after step {n};" in log.read_text()


# -- non-finite loss --------------------------------------------------------------------------------
def inject_nan(monkeypatch, bad_steps):
    """Make FixMatch's unlabelled loss NaN at the given steps (a transient blow-up)."""
    cls = ALGORITHMS.get("fixmatch")
    real = cls.step

    def step(self, model, batch, state, progress):
        out = real(self, model, batch, state, progress)
        if batch.step in bad_steps:
            out = dataclasses.replace(out, loss=out.loss * float("nan"),
                                      terms=dict(out.terms, loss_u=out.terms["loss_u"] * float("nan")))
        return out

    monkeypatch.setattr(cls, "step", step)


def test_nonfinite_loss_stops_naming_step_and_terms_keeping_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    inject_nan(monkeypatch, {5})
    code = main(["train", *tiny_overrides(out, steps=8, **{"train.save_every": 2})])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.match(r"semisup: error: non-finite loss at step 5 \(loss=nan, loss_x=[0-9.]+, loss_u=nan\); stopped, "
                    r".* keeps the last good checkpoint; .*--train.nonfinite=skip", err), err
    ck = checkpoint.load(out / "last.pt")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [r["step"] for r in records(out)] == [4] and not (out / "summary.json").exists()
    # the same run resumed with skipping on gets past the bad step
    code = main(["train", "--resume", f"--run.out={out}", "--train.nonfinite=skip"])
    err = capsys.readouterr().err.strip()
    assert code == 0 and len(err.splitlines()) == 1, err
    assert re.fullmatch(r"semisup: warning: non-finite loss at step 5 \(loss=nan, loss_x=[0-9.]+, loss_u=nan\); "
                        r"step skipped \(train.nonfinite=skip\)", err), err
    assert records(out)[-1]["skipped_steps"] == 1
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1


def test_nonfinite_skip_skips_the_update_and_restores_batchnorm(tmp_path, capsys, monkeypatch):
    """train.nonfinite=skip: no optimizer step, no EMA update, BN statistics as before the step; counted."""
    updates = []
    real = Runtime.backward_step
    monkeypatch.setattr(Runtime, "backward_step", lambda self, *a, **k: (updates.append(1), real(self, *a, **k)))
    train(C.resolve(overrides=tiny_overrides(tmp_path / "clean", steps=8, **{"train.nonfinite": "skip"})))
    clean, n_clean = checkpoint.load(tmp_path / "clean" / "last.pt"), len(updates)
    inject_nan(monkeypatch, {2, 5})
    updates.clear()
    res = train(C.resolve(overrides=tiny_overrides(tmp_path / "skip", steps=8, **{"train.nonfinite": "skip"})))
    err = capsys.readouterr().err
    assert n_clean == 8 and len(updates) == 6 and res.steps == 8
    assert [int(re.search(r"step (\d+)", x).group(1)) for x in err.splitlines() if "skipped" in x] == [2, 5]
    ck = checkpoint.load(tmp_path / "skip" / "last.pt")
    bn = [k for k in ck["model"] if k.endswith("num_batches_tracked")]
    assert bn and all(ck["model"][k] * 8 == clean["model"][k] * 6 for k in bn), "skipped forwards are undone"
    recs = records(tmp_path / "skip")
    assert [r["skipped_steps"] for r in recs] == [1, 2]
    assert all(np.isfinite(r["train"]["loss"]) for r in recs)
    assert ck["skipped_steps"] == 2 and ck["ema"]["head.weight"].isfinite().all()


@pytest.mark.parametrize("mode, message", [
    ("stop", r"non-finite loss at step 1 \(loss=nan, .*\); stopped"),
    ("skip", r"non-finite loss at step 1 \(.*\) and the weights themselves are non-finite: skipping steps cannot"),
])
def test_a_real_divergence_is_reported(tmp_path, capsys, mode, message):
    """No injection: lr=1e38 overflows the weights at step 0; skipping cannot help, so both modes stop."""
    code = main(["train", *tiny_overrides(tmp_path / "r", steps=8), "--optim.lr=1e38", f"--train.nonfinite={mode}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_skip_gives_up_after_many_non_finite_steps_in_a_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["semisup.loop.optimize"], "MAX_CONSECUTIVE_SKIPS", 3)
    inject_nan(monkeypatch, {3, 4, 5, 6})
    code = main(["train", *tiny_overrides(tmp_path / "r", steps=8), "--train.nonfinite=skip"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("semisup: error: non-finite loss at step 5")
    assert "so was every one of the last 3 steps" in err[-1]


# -- damaged checkpoints ----------------------------------------------------------------------------
@pytest.fixture
def previous_run(tmp_path):
    """A finished run with last.pt (step 4) and last.prev.pt (step 2): no failing command may change it."""
    out = tmp_path / "prev"
    train(C.resolve(overrides=tiny_overrides(out, steps=4, **{"train.save_every": 2})))
    return out, tree(out)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def one_error_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("semisup: error: "), err
    return err


def test_truncated_last_pt_falls_back_to_the_previous_one_with_a_warning(previous_run, capsys):
    out, _ = previous_run
    truncate(out / "last.pt")
    ck, path = checkpoint.load_latest(out)
    err = capsys.readouterr().err.strip()
    assert path == out / "last.prev.pt" and ck["step"] == 2
    assert err == (f"semisup: warning: checkpoint {str(out / 'last.pt')!r} is corrupt or truncated, "
                   f"or not a checkpoint at all (RuntimeError); skipped it, resuming from "
                   f"{str(out / 'last.prev.pt')!r} (step 2)"), err


def test_resume_over_a_truncated_last_pt_redoes_the_steps_from_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    assert run_child(["train", *tiny_overrides(out, **COMMON)], tmp_path / "log", kill=("saved", 12)) == -9
    truncate(out / "last.pt")
    # killed again during the first step after resuming from last.prev.pt (step 10): the damaged last.pt
    # must already be gone, or the next save would rotate it onto last.prev.pt, the one good checkpoint
    assert run_child(["train", "--resume", f"--run.out={out}"], tmp_path / "log1", kill=("step", 0)) == -9
    log = (tmp_path / "log1").read_text()
    assert "last.pt' is corrupt or truncated" in log and "resuming from" in log and "(step 10)" in log
    assert not (out / "last.pt").exists() and checkpoint.load(out / "last.prev.pt")["step"] == 10
    resume_and_compare(out, reference)


def test_eval_and_resume_name_a_damaged_checkpoint_in_one_line(previous_run, capsys):
    out, _ = previous_run
    truncate(out / "last.pt")
    truncate(out / "last.prev.pt", 0.1)
    before = tree(out)
    err = one_error_line(capsys, main(["eval", str(out / "last.pt")]))
    assert f"checkpoint {str(out / 'last.pt')!r} is corrupt or truncated" in err
    assert f"the previous checkpoint {str(out / 'last.prev.pt')!r} may be used instead" in err
    err = one_error_line(capsys, main(["train", "--resume", f"--run.out={out}"]))
    assert "last.pt' is corrupt or truncated" in err and "last.prev.pt' is corrupt or truncated" in err
    assert "no checkpoint to resume from" in err
    assert tree(out) == before
    torch.save({"weights": 1}, out / "best.pt")  # a file, but not a run checkpoint
    before = tree(out)
    err = one_error_line(capsys, main(["eval", str(out)]))
    assert "best.pt' is not a semisup run checkpoint" in err
    err = one_error_line(capsys, main(["train", *tiny_overrides(out / "new"), f"--model.init_from={out / 'last.pt'}"]))
    assert "model.init_from" in err and "truncated or corrupt" in err
    assert tree(out) == before


# -- a checkpoint from another model or dataset ----------------------------------------------------
def test_a_checkpoint_of_another_model_or_dataset_is_refused(previous_run, tmp_path, capsys):
    out, _ = previous_run
    wide = tmp_path / "wide"
    train(C.resolve(overrides=tiny_overrides(wide, steps=2, **{"model.width": 2})))
    rng = np.random.default_rng(0)  # same shapes as digits (10 classes, 1 x 8 x 8): only the meta tells
    arrays = {"train_x": rng.integers(0, 256, (300, 8, 8), np.uint8), "train_y": np.arange(300) % 10,
              "test_x": rng.integers(0, 256, (50, 8, 8), np.uint8), "test_y": np.arange(50) % 10}
    other = tmp_path / "other"
    train(C.resolve(overrides=tiny_overrides(other, steps=2, **{"data.name": "arrays"})), arrays=arrays)

    shutil.copy(wide / "last.pt", out / "last.pt")
    shutil.copy(wide / "last.pt", out / "best.pt")
    before = tree(out)
    err = one_error_line(capsys, main(["train", "--resume", f"--run.out={out}"]))
    assert "last.pt' does not match this model/dataset/algorithm: Error(s) in loading state_dict" in err
    err = one_error_line(capsys, main(["eval", str(out)]))
    assert "best.pt' does not match its config's model" in err
    shutil.copy(other / "last.pt", out / "last.pt")
    before = tree(out)
    err = one_error_line(capsys, main(["train", "--resume", f"--run.out={out}"]))
    assert "last.pt' is from another run: its dataset is 'arrays' but this run's is 'digits'" in err
    err = one_error_line(capsys, main(["eval", str(out / "last.pt")]))  # the weights alone would load
    assert "last.pt' is from another run: its dataset is 'arrays' but this run's is 'digits'" in err
    assert tree(out) == before
    err = one_error_line(capsys, main(["train", *tiny_overrides(tmp_path / "new"), "--model.name=wrn",
                                       f"--model.init_from={wide / 'last.pt'}"]))
    assert "model.init_from" in err and "does not fit model" in err
    assert not (tmp_path / "new").exists()


# -- bad input: one line, exit 2, the previous run untouched ----------------------------------------
def bad_idx(tmp):
    write_mnist(tmp, gz=False)
    p = tmp / "train-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x09\x03" + p.read_bytes()[4:])
    return ["--data.name=mnist", f"--data.root={tmp}"]


def truncated_gz(tmp):
    write_mnist(tmp, gz=True)
    p = tmp / "train-images-idx3-ubyte.gz"
    truncate(p, 0.6)
    return ["--data.name=mnist", f"--data.root={tmp}"]


def folder(change):
    def make(tmp):
        root = write_folder(tmp / "f", classes=("cat", "dog"), n=(3, 2))
        change(root)
        return ["--data.name=folder", f"--data.root={root}", "--data.labels_per_class=1"]
    return make


def _not_an_image(root):
    (root / "train" / "dog" / "9.png").write_text("not a png")


def _truncated_png(root):
    truncate(root / "test" / "cat" / "0.png", 0.3)


def _differing_classes(root):
    os.rename(root / "test" / "dog", root / "test" / "emu")


def _empty_class(root):
    for f in (root / "train" / "dog").iterdir():
        f.unlink()


BAD_INPUTS = {
    "corrupted IDX header": (bad_idx, r"train-images-idx3-ubyte is not an IDX file of 3-D uint8 data \(magic bytes "
                                      r"00000903, expected 00000803\)"),
    "truncated .gz": (truncated_gz, r"train-images-idx3-ubyte.gz is truncated or corrupt \(EOFError"),
    "non-image file": (folder(_not_an_image), r"cannot read image .*dog/9.png \(UnidentifiedImageError"),
    "unreadable (truncated) image": (folder(_truncated_png), r"cannot read image .*cat/0.png \(OSError"),
    "class folders differ": (folder(_differing_classes), r"hold different class folders \(only in train: dog; "
                                                         r"only in test: emu\)"),
    "empty class": (folder(_empty_class), r"class folder .*train/dog is empty"),
    "more labels than exist": (lambda t: ["--data.labels_per_class=200"],
                               r"class 0 has 119 train images but the split asks for 0 val \+ 200 labelled"),
    "gamma < 1": (lambda t: ["--data.split=long_tail", "--data.gamma_l=0.5"],
                  r"data.gamma_l=0.5 is out of range: must be >= 1"),
    "a class left without labels": (lambda t: ["--data.split=long_tail", "--data.n1=9", "--data.gamma_l=10",
                                               "--data.m1=10"], r"class 9 would get 0 labelled images"),
    "negative lr": (lambda t: ["--optim.lr=-0.1"], r"optim.lr=-0.1 is out of range: must be auto or > 0"),
    "threshold > 1": (lambda t: ["--algorithm.threshold=1.5"], r"algorithm.threshold=1.5 is out of range"),
    "bad nonfinite mode": (lambda t: ["--train.nonfinite=ignore"], r"train.nonfinite='ignore' is out of range: "
                                                                   r"must be stop or skip"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(previous_run, tmp_path, capsys, monkeypatch, case):
    out, before = previous_run
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path / "cache"))
    make, message = BAD_INPUTS[case]
    args = make(tmp_path / "data")
    err = one_error_line(capsys, main(["train", "--overwrite", *tiny_overrides(out, steps=4), *args]))
    assert re.search(message, err), err
    assert tree(out) == before


def test_labels_out_of_range_through_the_python_api(previous_run):
    out, before = previous_run
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (40, 8, 8), np.uint8), "train_y": np.arange(40) % 4,
              "test_x": rng.integers(0, 256, (8, 8, 8), np.uint8), "test_y": np.arange(8) % 4,
              "classes": ["a", "b", "c"]}
    cfg = C.resolve(overrides=tiny_overrides(out, **{"data.name": "arrays", "data.labels_per_class": 1}))
    with pytest.raises(DataError, match=r"arrays: train labels span \[0, 3\] but there are 3 classes, so labels "
                                        r"must lie in \[0, 3\)"):
        train(cfg, arrays=arrays, overwrite=True)
    arrays["classes"] = None
    arrays["test_y"] = arrays["test_y"] - 1  # -1 in the test labels
    with pytest.raises(DataError, match=r"test labels span \[-1, 2\]"):
        train(cfg, arrays=arrays, overwrite=True)
    assert tree(out) == before


def test_a_run_dir_holding_another_run_is_refused_unless_resume_or_overwrite(previous_run, capsys):
    out, before = previous_run
    err = one_error_line(capsys, main(["train", *tiny_overrides(out, steps=4)]))
    assert "already holds a run; pass --resume to continue it, --overwrite to replace it" in err
    err = one_error_line(capsys, main(["train", "--resume", *tiny_overrides(out, steps=4), "--optim.lr=0.1"]))
    assert "its config differs in optim.lr (saved optim.lr=0.03)" in err
    assert tree(out) == before


def test_resume_without_a_checkpoint_or_run_is_refused(tmp_path, capsys):
    err = one_error_line(capsys, main(["train", "--resume", f"--run.out={tmp_path / 'none'}"]))
    assert "cannot resume" in err and not (tmp_path / "none").exists()
    with pytest.raises(UserError, match="holds no run"):
        train(C.resolve(overrides=tiny_overrides(tmp_path / "empty")), resume=True)


def test_a_second_process_on_a_run_directory_fails_at_once_and_a_killed_one_leaves_no_stuck_lock(tmp_path):
    """train --overwrite and train --resume into a directory another process is training in: exit 2 at once,
    nothing of the running run touched; after that process is SIGKILLed, --resume works (the kernel dropped
    its flock)."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT, run_cli, tiny_overrides

    out = tmp_path / "busy"
    ov = tiny_overrides(out, steps=100000, **{"train.eval_every": 5})
    first = subprocess.Popen([sys.executable, "-m", "semisup", "train", *ov], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        config = (out / "config.yaml").read_text()
        for extra in (["--overwrite"], ["--resume"]):
            t0 = time.time()
            res = run_cli("train", *extra, *ov)
            assert res.returncode == 2 and time.time() - t0 < 60
            err = res.stderr.strip()
            assert len(err.splitlines()) == 1 and f"pid {first.pid}" in err and "another semisup process" in err, err
        assert (out / "config.yaml").read_text() == config and first.poll() is None  # the running run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    res = run_cli("train", "--resume", f"--run.out={out}", "--train.max_minutes=0.02", "--run.progress=false")
    assert res.returncode == 0, res.stderr[-2000:]


def test_resume_refuses_when_the_training_data_changed_unless_told(tmp_path):
    """split.json records a fingerprint of the training images; a folder whose contents changed between the
    run and --resume is refused with one line (exit 2, nothing written), and resumes with
    --run.allow_data_change=true."""
    import numpy as np
    from helpers import run_cli, tiny_overrides, tree
    from PIL import Image

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("test", 4)):
        for c in ("a", "b", "c"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(root / part / c / f"{i}.png")
    out = tmp_path / "run"
    ov = tiny_overrides(out, steps=4, **{"data.name": "folder", "data.root": root, "data.labels_per_class": 2,
                                         "train.eval_every": 2, "train.batch_size": 6})
    first = run_cli("train", *ov)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(json.loads((out / "split.json").read_text())["data_fingerprint"]) == 32
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    import shutil
    shutil.copy(out / "last.prev.pt", out / "last.pt")  # as if stopped at step 2
    before = tree(out)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(root / "train" / "a" / "0.png")  # one image
    res = run_cli("train", "--resume", *ov)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "training data changed" in err, err
    assert tree(out) == before
    res = run_cli("train", "--resume", *ov, "--run.allow_data_change=true")
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("argv, message", [
    (["train", "--overwrite", "--data.image_size=100000"], "data.image_size=100000 needs 16.3 TiB"),
    (["train", "--resume", "--algorithm.name=mixmatch"], "resuming cannot change algorithm.name"),
    (["eval", "{tmp}/does_not_exist"], "does_not_exist' does not exist"),
    (["eval", "{tmp}/fake.pt"], "fake.pt' is corrupt or truncated, or not a checkpoint"),
    (["eval", "{tmp}"], "is not a run directory (no config.yaml in it)"),
])
def test_inputs_that_crashed_now_give_one_line_exit_2_and_touch_nothing(previous_run, capsys, argv, message):
    out, before = previous_run
    tmp = out.parent
    (tmp / "fake.pt").write_text("not a checkpoint")
    argv = [a.format(tmp=tmp) for a in argv]
    if argv[0] == "train":
        argv += [o for o in tiny_overrides(out) if not o.startswith("--train.steps")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("semisup: error:") and message in err, err
    assert tree(out) == before


@pytest.mark.parametrize("where", ["checkpoint", "record"])
def test_a_full_disk_stops_the_run_with_one_line_keeps_the_last_checkpoint_and_resume_continues(
        tmp_path, capsys, monkeypatch, where):
    """ENOSPC while writing last.pt (its temp file half written) or a metrics line: exit 2 with one line naming
    the file and the free space, the previous checkpoint intact, no temp file left; once there is room,
    --resume ends exactly where the uninterrupted run does."""
    import errno

    common = {"run.deterministic": "true", "run.amp": "off", "train.steps": 8, "train.eval_every": 2}
    ref = tmp_path / "ref"
    assert main(["train", *tiny_overrides(ref, **common)]) == 0
    out = tmp_path / "full"
    calls = {"n": 0}
    if where == "checkpoint":
        real = checkpoint.torch.save

        def save(obj, f, *a, **k):
            calls["n"] += ".last.pt.tmp" in f.name
            if calls["n"] == 3 and ".last.pt.tmp" in f.name:  # the third last.pt (step 6): some bytes, then full
                f.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, f, *a, **k)
        monkeypatch.setattr(checkpoint.torch, "save", save)
        name = "last.pt"
    else:
        def write(f, line):
            calls["n"] += 1
            if calls["n"] == 3:  # the third record (step 6): a cut line, then the disk is full
                f.write(line[:17])
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write(line)
        monkeypatch.setattr(checkpoint, "_write", write)
        name = "metrics.jsonl"
    capsys.readouterr()
    assert main(["train", *tiny_overrides(out, **common)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no space left to write '{out / name}'" in err and "MiB free" in err, err
    assert not list(out.glob(".*.tmp*"))
    assert checkpoint.load(out / "last.pt")["step"] == 4  # the last complete checkpoint
    monkeypatch.undo()
    assert main(["train", "--resume", f"--run.out={out}", "--run.progress=false"]) == 0
    a = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [2, 4, 6, 8]
    for r in a + b:
        for k in ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median"):
            r.pop(k)
    assert a == b


def test_memory_stays_flat_over_a_run_after_warm_up(tmp_path):
    """RSS at every evaluation of a 600-step FixMatch run with CTAugment (metrics, trackers, CTAugment's
    weights, the EMA): after the first fifth of the run it does not grow (benchmarks/micro/rss_curve.py; the
    3000-step Fashion-MNIST curve is in RESULTS.md)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rss_curve", ROOT / "benchmarks" / "micro" / "rss_curve.py")
    rss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rss)
    out = tmp_path / "long"
    curve = rss.watch(tiny_overrides(out, steps=600, **{"train.eval_every": 30, "data.strong": "ctaugment"}), out)
    assert [r["step"] for r in curve] == list(range(30, 601, 30))
    assert all(r["rss_mb"] > 50 for r in curve)
    assert rss.growth_after(curve) < 25, curve  # a leak of a few KB per step would show as tens of MB here
