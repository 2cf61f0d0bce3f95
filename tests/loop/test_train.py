"""The loop end to end on real (tiny) data: run files, resume after SIGKILL, user errors."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, run_cli, tiny_overrides, tree

from semisup import config as C
from semisup.cli import main
from semisup.errors import UserError
from semisup.train import train


def test_a_run_writes_its_files_and_metrics(tmp_path):
    out = tmp_path / "run"
    cfg = C.resolve(overrides=tiny_overrides(out, steps=8, **{"run.tensorboard": "true", "data.val_per_class": 3}))
    res = train(cfg)
    for f in ("config.yaml", "split.json", "metrics.jsonl", "summary.json", "last.pt", "best.pt"):
        assert (out / f).is_file(), f
    assert any((out / "tb").iterdir()), "TensorBoard events"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8]
    last = lines[-1]
    assert set(last["train"]) >= {"loss", "loss_x", "loss_u", "pass_rate", "pl_acc", "per_class_pass_rate",
                                  "per_class_pl_precision"}
    t = last["test"]
    assert len(t["per_class_recall"]) == 10 and len(t["confusion"]) == 10
    assert {"head_recall", "medium_recall", "tail_recall", "minority_recall"} <= set(t)
    assert sum(map(sum, t["confusion"])) == 596  # the fixed digits test split
    assert "val" in last and sum(map(sum, last["val"]["confusion"])) == 30
    assert res.final == last and res.steps == 8 and res.best["selected_on"] == "val"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["peak_rss_mb"] > 50  # a torch process holds well over 50 MB
    split = json.loads((out / "split.json").read_text())
    assert split["seed"] == 0 and len(split["labelled"]) == 20
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["step"] == 8 and ck["meta"]["dataset"] == "digits" and ck["ema"] is not None
    # a second run into the same directory is refused without --resume / --overwrite
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg)
    # semisup eval reproduces the recorded test accuracy of best.pt
    from semisup.evaluate import evaluate_checkpoint

    ev = evaluate_checkpoint(str(out / "last.pt"))
    assert ev["top1"] == pytest.approx(last["test"]["top1"])
    assert evaluate_checkpoint(str(out), split="val")["split"] == "val"


@pytest.mark.parametrize("alg, strong", [("fixmatch", "randaugment"), ("remixmatch", "ctaugment")])
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path, alg, strong):
    """Deterministic mode: a run killed (SIGKILL) after a checkpoint and resumed ends with exactly the
    metrics of the same run left alone: model, EMA, optimizer, RNG (dropout), algorithm state
    (ReMixMatch's running distribution and rotation head) and CTAugment's bin weights all restored."""
    common = {"run.deterministic": "true", "run.amp": "off", "train.steps": 24, "train.eval_every": 6,
              "model.dropout": 0.2, "algorithm.name": alg, "data.strong": strong}
    ref = run_cli("train", *tiny_overrides(tmp_path / "ref", **common))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "semisup", "train", *tiny_overrides(out, **common)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must really have been killed mid-way"
    done = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert done[-1] < 24
    res = run_cli("train", "--resume", f"--run.out={out}", "--run.progress=false")
    assert res.returncode == 0, res.stderr
    a = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in a + b:
        for k in ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median"):
            r.pop(k)
    b_by_step = {r["step"]: r for r in b}  # the killed run may have re-done an eval it had logged
    assert [r["step"] for r in a] == sorted(b_by_step)
    for r in a:
        assert r == b_by_step[r["step"]], f"step {r['step']} differs after resume"


@pytest.fixture
def previous_run(tmp_path):
    """A run directory holding an earlier run: no failing command may change a byte of it."""
    out = tmp_path / "prev"
    train(C.resolve(overrides=tiny_overrides(out, steps=4)))
    return out, tree(out)


@pytest.mark.parametrize("args, message", [
    (["--data.name=cifar10", "--data.root=/nonexistent/cifar"], "cifar10"),
    (["--data.labels_per_class=500"], "class"),
    (["--algorithm.name=nope"], "unknown algorithm 'nope'"),
    (["--model.name=nope"], "unknown model 'nope'"),
    (["--data.name=nope"], "unknown dataset 'nope'"),
    (["--train.stepz=3"], "unknown config key train.stepz"),
    (["--train.steps=many"], "train.steps: expected an integer"),
    (["--optim.lr=-1"], "optim.lr=-1.0 is out of range"),
])
def test_user_errors_exit_2_with_one_line_and_touch_nothing(previous_run, capsys, args, message):
    out, before = previous_run
    code = main(["train", "--overwrite", *tiny_overrides(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("semisup: error:") and message in err, err
    assert tree(out) == before


def test_missing_dataset_message_names_paths_and_remedy(tmp_path, capsys):
    code = main(["train", *tiny_overrides(tmp_path / "r"), "--data.name=fashion_mnist",
                 f"--data.root={tmp_path / 'nothing'}"])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "nothing") in err and "download" in err
    assert not (tmp_path / "r").exists()


def test_cli_exit_code_and_list_in_a_real_process(tmp_path):
    r = run_cli("train", *tiny_overrides(tmp_path / "r"), "--algorithm.name=nope")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown algorithm" in r.stderr
    r = run_cli("list")
    assert r.returncode == 0 and "fixmatch" in r.stdout and "wrn" in r.stdout and "fashion_mnist" in r.stdout
    r = run_cli("train", "--resume", "--run.out", tmp_path / "none")
    assert r.returncode == 2 and "cannot resume" in r.stderr


def test_train_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for key in ("labels_per_class=None", "ema=0.999", "mu='auto'", "dist_timeout=1800.0", "threshold=0.95",
                "algorithm (name=remixmatch): K=8"):
        assert key in out, key


def test_the_loop_marks_its_regions_for_the_profiler(tmp_path):
    """benchmarks/micro/profile_step.py splits a step by these record_function regions: one of each per step
    (EMA on), the optimizer step nested inside the backward region."""
    from torch.profiler import ProfilerActivity, profile

    cfg = C.resolve(overrides=tiny_overrides(tmp_path / "run", steps=3, **{"train.eval_every": 3}))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(cfg)
    events = {}
    for ev in prof.events():
        if ev.name.startswith("semisup."):
            events.setdefault(ev.name, []).append(ev.time_range)
    assert {k: len(v) for k, v in events.items()} == {k: 3 for k in (
        "semisup.data", "semisup.forward", "semisup.backward", "semisup.optimizer", "semisup.ema")}
    for back, opt in zip(events["semisup.backward"], events["semisup.optimizer"]):
        assert back.start <= opt.start and opt.end <= back.end


def test_a_run_saved_before_ema_warmup_existed_resumes_with_the_warmup_it_ran_with(tmp_path):
    """config.yaml of a run written before optim.ema_warmup: resuming keeps Mean Teacher's uniform warm-up
    it trained with (the new default would change the evaluated model mid-run), and the resumed metrics
    equal those of the same run left alone."""
    import shutil

    common = {"run.deterministic": "true", "run.amp": "off", "train.steps": 8, "optim.ema_warmup": "uniform"}
    ref = tmp_path / "ref"
    done = run_cli("train", *tiny_overrides(ref, **common))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "old"  # the same run as it was at step 4 (last.prev.pt), with an old config.yaml
    shutil.copytree(ref, out)
    shutil.copy(out / "last.prev.pt", out / "last.pt")
    text = (out / "config.yaml").read_text()
    assert "ema_warmup: uniform\n" in text and "  name: sgd\n" in text and "  test_subset: 0\n" in text
    # an older config.yaml: without ema_warmup (its default changed since) and without keys added later
    (out / "config.yaml").write_text(text.replace("  ema_warmup: uniform\n", "").replace("  name: sgd\n", "")
                                     .replace("  test_subset: 0\n", ""))
    res = run_cli("train", "--resume", f"--run.out={out}", "--run.progress=false")
    assert res.returncode == 0, res.stderr
    a = json.loads((ref / "metrics.jsonl").read_text().splitlines()[-1])
    b = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert a["step"] == b["step"] == 8 and a["test"] == b["test"]


def test_an_abc_run_saved_before_its_reference_fields_resumes_as_it_trained(tmp_path):
    """config.yaml of an ABC run written before algorithm.soft_targets / strong_views (hard targets, one strong
    view then): resuming continues with those, not the new defaults, and ends equal to the run left alone."""
    import shutil

    common = {"run.deterministic": "true", "run.amp": "off", "train.steps": 8, "algorithm.name": "abc",
              "algorithm.soft_targets": "false", "algorithm.strong_views": 1}
    ref = tmp_path / "ref"
    done = run_cli("train", *tiny_overrides(ref, **common))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "old"
    shutil.copytree(ref, out)
    shutil.copy(out / "last.prev.pt", out / "last.pt")
    text = (out / "config.yaml").read_text()
    assert "  soft_targets: false\n" in text and "  strong_views: 1\n" in text
    (out / "config.yaml").write_text(text.replace("  soft_targets: false\n", "").replace("  strong_views: 1\n", ""))
    res = run_cli("train", "--resume", f"--run.out={out}", "--run.progress=false")
    assert res.returncode == 0, res.stderr
    a = json.loads((ref / "metrics.jsonl").read_text().splitlines()[-1])
    b = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert a["step"] == b["step"] == 8 and a["test"] == b["test"]


def test_optim_adamw_trains_with_decoupled_weight_decay(tmp_path):
    """optim.name=adamw: AdamW over the same parameter groups (no decay on biases and norms), resumable."""
    from semisup.loop.setup import make_optimizer
    from semisup.loop.setup import param_groups as _param_groups

    cfg = C.resolve(overrides=["--optim.name=adamw", "--optim.lr=0.002", "--optim.weight_decay=0.02"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = make_optimizer(cfg.optim, _param_groups([model], cfg.optim.weight_decay))
    assert isinstance(opt, torch.optim.AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0]
    assert isinstance(make_optimizer(C.resolve().optim, _param_groups([model], 5e-4)), torch.optim.SGD)
    res = train(C.resolve(overrides=tiny_overrides(tmp_path / "a", steps=6, **{"optim.name": "adamw",
                                                                               "optim.lr": 0.002})))
    assert res.steps == 6 and 0 <= res.final["test"]["top1"] <= 1
