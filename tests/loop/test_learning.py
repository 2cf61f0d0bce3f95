"""Real end-to-end runs on real data that assert learning happens and that SSL helps."""
import json

import pytest
from helpers import needs_fashion, tiny_overrides

from semisup import config as C
from semisup import demo
from semisup.errors import UserError
from semisup.train import train


def _top1(out, alg, steps, **extra):
    ov = tiny_overrides(out / alg, steps=steps, **{"algorithm.name": alg, "train.eval_every": steps,
                                                    "train.batch_size": 32, "train.mu": 4, "model.width": 2,
                                                    "run.threads": 1, **extra})
    return train(C.resolve(overrides=ov)).final["test"]["top1"]


@pytest.mark.slow
def test_fixmatch_beats_supervised_on_digits_with_20_labels(tmp_path):
    """2 labels per class of scikit-learn's digits (596 test images), same model/labels/schedule."""
    sup = _top1(tmp_path, "supervised", 300)
    fm = _top1(tmp_path, "fixmatch", 300)
    assert sup > 0.5, f"the supervised baseline learns something ({sup:.3f})"
    assert fm > sup + 0.05, f"FixMatch {fm:.3f} should beat supervised {sup:.3f} by 5 points"


@pytest.mark.slow
@needs_fashion
def test_fixmatch_learns_fashion_mnist_from_40_labels(tmp_path):
    """A short real run on the full Fashion-MNIST (60k unlabelled, 10k test): well above chance and its
    pseudo-labels that pass the threshold are far more accurate than all of them."""
    fm = train(C.resolve(overrides=tiny_overrides(tmp_path / "fm", steps=150, **{
        "data.name": "fashion_mnist", "data.labels_per_class": 4, "train.batch_size": 32, "train.mu": 4,
        "train.eval_every": 150, "model.width": 1, "run.threads": 2})))
    rec = fm.final
    assert rec["test"]["top1"] > 0.45, rec["test"]["top1"]
    assert rec["train"]["pass_rate"] > 0.05
    assert rec["train"]["pl_acc"] > rec["train"]["pl_acc_all"]


def test_demo_prints_both_algorithms_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.DEMOS, "digits", ("demo_digits", ["--train.steps=6", "--train.eval_every=6",
                                                               "--train.batch_size=16", "--train.mu=2",
                                                               "--run.progress=false", "--run.tensorboard=false"]))
    assert demo.run_demo(str(tmp_path / "demo"), "digits") == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "fixmatch" in out and "points over supervised" in out
    for alg in ("supervised", "fixmatch"):
        assert json.loads((tmp_path / "demo" / alg / "summary.json").read_text())["steps"] == 6
    with pytest.raises(UserError):
        demo.run_demo(str(tmp_path / "d2"), "cifar10")
