"""Pure pieces of the loop: schedules, losses, pseudo-labels, EMA, metrics, index streams."""
import math

import numpy as np
import pytest
import torch

from semisup import losses, pseudo, schedules
from semisup.data.stream import IndexStream
from semisup.ema import ModelEMA
from semisup.metrics import PseudoLabelTracker, classification_metrics, confusion_matrix


def test_fixmatch_cosine_matches_formula():
    K = 1000
    for k in (0, 1, 250, 999):
        assert schedules.fixmatch_cosine(k, K) == pytest.approx(math.cos(7 * math.pi * k / (16 * K)))
    assert schedules.fixmatch_cosine(0, 100, warmup=10) == pytest.approx(0.1)
    assert schedules.fixmatch_cosine(10, 100, warmup=10) == pytest.approx(1.0)
    assert schedules.constant(5, 100) == 1.0 and schedules.constant(0, 100, warmup=4) == 0.25


def test_ramps():
    assert schedules.linear_ramp(0.1, 0.2, 0.6) == 0.0
    assert schedules.linear_ramp(0.4, 0.2, 0.6) == pytest.approx(0.5)
    assert schedules.linear_ramp(0.7, 0.2, 0.6) == 1.0
    assert schedules.sigmoid_rampup(0.0) == pytest.approx(math.exp(-5))
    assert schedules.sigmoid_rampup(0.5) == pytest.approx(math.exp(-5 * 0.25))
    assert schedules.sigmoid_rampup(1.2) == 1.0 and schedules.sigmoid_rampup(0.3, 0.0) == 1.0


def _slow_ce(logits, target):
    out = []
    for row, t in zip(logits.tolist(), target.tolist()):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        out.append(lse - row[t])
    return torch.tensor(out)


def test_losses_against_slow_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 3
    target = torch.randint(0, 5, (6,), generator=g)
    ref = _slow_ce(logits, target)
    assert torch.allclose(losses.ce(logits, target, reduction="none"), ref, atol=1e-5)
    assert losses.ce(logits, target).item() == pytest.approx(ref.mean().item(), abs=1e-5)
    onehot = torch.nn.functional.one_hot(target, 5).float()
    assert torch.allclose(losses.soft_ce(logits, onehot, reduction="none"), ref, atol=1e-5)
    mask = torch.tensor([1.0, 0, 1, 0, 0, 1])
    assert losses.masked_mean(ref, mask).item() == pytest.approx((ref[0] + ref[2] + ref[5]).item() / 6, abs=1e-6)


def test_confidence_mask_and_sharpen():
    probs = torch.tensor([[0.96, 0.04], [0.5, 0.5], [0.1, 0.9]])
    conf, label, mask = pseudo.confidence_mask(probs, 0.95)
    assert label.tolist() == [0, 0, 1] and mask.tolist() == [1.0, 0.0, 0.0]
    assert conf.tolist() == pytest.approx([0.96, 0.5, 0.9])
    s = pseudo.sharpen(torch.tensor([[0.6, 0.4]]), 0.5)
    assert s[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])


def test_ema_update_equation():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model, step=100)  # past the warm-up: d = 0.9
    for b, e, w in zip(before, ema.module.parameters(), model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * w)
    assert torch.all(ema.module[1].running_mean == 7.0)
    assert not any(p.requires_grad for p in ema.module.parameters())
    for warmup, step, d in [("recent", 3, 4 / 13), ("recent", 9000, 0.999), ("uniform", 3, 0.75),
                            ("uniform", 0, 0.0), ("none", 0, 0.999)]:
        ema2 = ModelEMA(model, decay=0.999, warmup=warmup)
        snap = [p.clone() for p in ema2.module.parameters()]
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema2.update(model, step=step)
        for b, e, w in zip(snap, ema2.module.parameters(), model.parameters()):
            assert torch.allclose(e, d * b + (1 - d) * w), (warmup, step)


def test_ema_decay_warmups():
    from semisup.ema import decay_at
    # recent: (1 + t) / (10 + t) until it reaches the decay; uniform: 1 - 1 / (t + 1); none: constant
    assert decay_at(0.999, 0) == pytest.approx(0.1) and decay_at(0.999, 90) == pytest.approx(0.91)
    assert decay_at(0.999, 8990) == 0.999 and decay_at(0.99, 890) == 0.99
    assert decay_at(0.999, 99, "uniform") == pytest.approx(0.99) and decay_at(0.999, 5, "none") == 0.999
    with pytest.raises(ValueError, match="unknown EMA warm-up 'x'"):
        ModelEMA(torch.nn.Linear(1, 1), 0.9, warmup="x")
    # the point of the default: after 380 steps the uniform warm-up still weighs the first 100 steps
    # (mostly the random start) by 100/380; the recent one by a factor below 1e-3
    w_recent = w_uniform = 1.0
    for t in range(100, 380):
        w_recent *= decay_at(0.999, t)
        w_uniform *= decay_at(0.999, t, "uniform")
    assert w_uniform == pytest.approx(100 / 380) and w_recent < 1e-3


def test_ema_of_a_model_without_buffers():
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, step=10)
    assert torch.allclose(ema.module.weight, model.weight - 1.0)


def test_classification_metrics_hand_computed():
    cm = confusion_matrix([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2], 4)
    assert cm[0].tolist() == [1, 1, 0, 0] and cm[1].tolist() == [1, 2, 0, 0] and cm[3].sum() == 0
    m = classification_metrics(cm)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["per_class_recall"][:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["balanced_acc"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)  # absent class 3 left out
    assert m["per_class_precision"][:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["gmean_recall"] == pytest.approx((0.5 * 2 / 3 * 1) ** (1 / 3))


def test_pseudo_label_tracker():
    t = PseudoLabelTracker(3, "cpu")
    t.update(pseudo=torch.tensor([0, 1, 1, 2, 0]), mask=torch.tensor([1.0, 1, 0, 1, 0]),
             true=torch.tensor([0, 2, 1, 2, -1]))
    s = t.summary()
    assert s["pass_rate"] == pytest.approx(3 / 4)  # the unknown (-1) sample is not scored
    assert s["pl_acc"] == pytest.approx(2 / 3)
    assert s["pl_acc_all"] == pytest.approx(3 / 4)
    assert s["per_class_pass_rate"] == pytest.approx([1.0, 0.0, 1.0])
    assert s["per_class_pl_precision"] == pytest.approx([1.0, 0.0, 1.0])
    t.reset()
    assert t.summary()["pass_rate"] == 0.0


def test_index_stream_is_a_pure_function_of_step():
    a, b = IndexStream(10, 4, seed=3, salt=1), IndexStream(10, 4, seed=3, salt=1)
    seq = np.concatenate([a.batch(s) for s in range(5)])  # 20 draws = 2 epochs
    assert sorted(seq[:10].tolist()) == list(range(10)) and sorted(seq[10:].tolist()) == list(range(10))
    assert np.array_equal(b.batch(3), a.batch(3))  # no hidden sampler state: resume = start at step k
    assert not np.array_equal(IndexStream(10, 4, seed=4, salt=1).batch(0), a.batch(0))
    big = IndexStream(3, 8, seed=0, salt=0).batch(0)  # batch larger than the set spans epochs
    assert len(big) == 8 and set(big.tolist()) == {0, 1, 2}
    ranks = np.concatenate([a.batch(2, rank=r, world=2) for r in range(2)])
    assert np.array_equal(ranks, a.batch(2))
    with pytest.raises(ValueError):
        IndexStream(0, 1, 0, 0)
