"""Class-imbalance pieces: ARL / focal / class-balanced CE, FixMatch's loss_u options, group metrics, APR/LER."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import Tiny, unpack
from helpers import tiny_batch as _batch
from helpers import tiny_context as _ctx

from semisup import losses
from semisup.algorithms import ALGORITHMS
from semisup.errors import ConfigError
from semisup.metrics import apr, group_metrics, group_sizes, ler

LT100 = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]  # CIFAR-10-LT style, gamma = 100, N1 = 500


def _slow_probs(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _slow_arl(logits, target, counts, gamma_scale=1.0):
    """Straight from the formula, in Python floats."""
    alpha = [min(counts) / n for n in counts]
    w = [a / (sum(alpha) / len(alpha)) for a in alpha]
    out = []
    for row, y in zip(logits, target):
        p = _slow_probs(row)[y]
        out.append(w[y] * (1 - p) ** (gamma_scale * (p + alpha[y])) * -math.log(p))
    return out


def test_class_weights_long_tail_by_hand():
    alpha, w = losses.class_weights(LT100)
    assert alpha.dtype == torch.float32 and alpha.shape == (10,)
    assert alpha[0].item() == pytest.approx(0.01)  # 5 / 500
    assert alpha[4].item() == pytest.approx(0.078125)  # 5 / 64
    assert alpha[9].item() == pytest.approx(1.0)
    # sum(alpha) = .01 + .016722 + .027933 + .046729 + .078125 + .131579 + .217391 + .384615 + .625 + 1
    #            = 2.538094, so mean(alpha) = 0.2538094
    assert w[9].item() == pytest.approx(1 / 0.2538094, rel=1e-5)  # 3.93996
    assert w[0].item() == pytest.approx(0.01 / 0.2538094, rel=1e-5)  # 0.0394
    assert w[8].item() == pytest.approx(0.625 / 0.2538094, rel=1e-5)  # 2.4625
    assert w.mean().item() == pytest.approx(1.0)
    a, b = losses.class_weights([7, 7, 7])
    assert torch.equal(a, torch.ones(3)) and torch.allclose(b, torch.ones(3))
    with pytest.raises(ValueError):
        losses.class_weights([3, 0, 2])


@pytest.mark.parametrize("gamma_scale", [1.0, 2.0])
def test_arl_matches_slow_reference(gamma_scale):
    logits = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0], [8.0, -8.0, 1.0]]
    target = [0, 2, 1, 1]
    counts = [40, 10, 5]
    alpha, w = losses.class_weights(counts)
    got = losses.arl(torch.tensor(logits), torch.tensor(target), alpha, w, gamma_scale=gamma_scale)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(_slow_arl(logits, target, counts, gamma_scale), rel=1e-5)


def test_arl_hand_value():
    # Two classes, equal logits -> p_y = 0.5; counts [2, 1] -> alpha = [0.5, 1], w = [2/3, 4/3].
    # Target 1: (4/3) * 0.5 ** (0.5 + 1) * ln 2
    alpha, w = losses.class_weights([2, 1])
    got = losses.arl(torch.zeros(1, 2), torch.tensor([1]), alpha, w).item()
    assert got == pytest.approx(4 / 3 * 0.5**1.5 * math.log(2), rel=1e-6)


def test_arl_bf16_and_saturated_stay_finite():
    alpha, w = losses.class_weights([3, 1])
    logits = torch.tensor([[60.0, -60.0], [0.3, 0.1]], dtype=torch.bfloat16, requires_grad=True)
    out = losses.arl(logits, torch.tensor([0, 1]), alpha, w, detach_exponent=False)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_detach_exponent_changes_gradient_not_value():
    alpha, w = losses.class_weights([9, 3, 1])
    base = torch.tensor([[1.0, 0.2, -0.5], [0.3, 0.9, 0.1]])
    target = torch.tensor([0, 2])
    vals, grads = [], []
    for detach in (True, False):
        x = base.clone().requires_grad_(True)
        v = losses.arl(x, target, alpha, w, detach_exponent=detach)
        v.sum().backward()
        vals.append(v.detach())
        grads.append(x.grad)
    assert torch.equal(vals[0], vals[1])
    assert not torch.allclose(grads[0], grads[1])
    # the non-detached gradient is the full derivative: check it against finite differences
    x = base.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: losses.arl(t, target, alpha.double(), w.double(), detach_exponent=False), (x,))


def test_focal_gamma0_is_ce_and_hand_value():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(losses.focal(logits, target, 0.0), losses.ce(logits, target, reduction="none"))
    # p_y = 0.5 (two equal logits), gamma 2: 0.25 * ln 2
    assert losses.focal(torch.zeros(1, 2), torch.tensor([0]), 2.0).item() == pytest.approx(0.25 * math.log(2))


def test_bce_weights():
    _, w = losses.class_weights([4, 2, 1])  # alpha = [1/4, 1/2, 1], mean 7/12 -> w = [3/7, 6/7, 12/7]
    assert w.tolist() == pytest.approx([3 / 7, 6 / 7, 12 / 7])
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 2, 0])
    ce = losses.ce(logits, target, reduction="none")
    assert torch.allclose(losses.bce(logits, target, w), w[target] * ce)


@pytest.mark.parametrize("loss_u", ["ce", "bce", "focal", "arl"])
def test_fixmatch_loss_u_runs_and_unlabelled_term_gives_gradient(loss_u):
    torch.manual_seed(0)
    model = Tiny()
    fm = ALGORITHMS.get("fixmatch")(threshold=0.0, loss_u=loss_u)
    fm.validate()
    state = fm.init_state(model, _ctx())
    assert (state is None) == (loss_u == "ce")
    if state is not None:
        alpha, w = losses.class_weights([4, 2, 1])
        assert torch.equal(state.alpha, alpha) and torch.equal(state.w, w)
        clone = fm.init_state(Tiny(), _ctx())
        clone.load_state_dict(state.state_dict())
    loss, stats = unpack(fm.step(model, _batch(fm), state, 0.5))
    assert torch.isfinite(loss) and stats["mask"].sum() == 8
    model.zero_grad()
    stats["loss_u"].backward()
    assert sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None) > 0


def test_fixmatch_loss_u_validation():
    cls = ALGORITHMS.get("fixmatch")
    for bad in ({"loss_u": "nope"}, {"loss_u": "arl", "hard_label": False}, {"focal_gamma": -1.0},
                {"arl_gamma_scale": 0.0}):
        with pytest.raises(ConfigError):
            cls(**bad).validate()
    assert {f.name for f in dataclasses.fields(cls)} >= {"loss_u", "focal_gamma", "arl_detach", "arl_gamma_scale"}
    with pytest.raises(ValueError):
        fm = cls(threshold=0.0, loss_u="arl")
        fm.step(Tiny(), _batch(fm), None, 0.0)


@pytest.mark.parametrize("loss_x", ["bce", "focal", "arl"])
def test_fixmatch_loss_x_applies_the_family_to_the_labelled_term(loss_x):
    """loss_x (ARL on both terms is our reading of "Ours+"): the labelled term equals the family's
    per-sample loss toward the true labels, averaged; loss_u stays CE unless asked."""
    torch.manual_seed(0)
    model = Tiny()
    fm = ALGORITHMS.get("fixmatch")(threshold=0.0, loss_x=loss_x)
    fm.validate()
    state = fm.init_state(model, _ctx())
    assert state is not None
    batch = _batch(fm)
    torch.manual_seed(1)  # the same dropout mask in both forwards
    _, stats = unpack(fm.step(model, batch, state, 0.5))
    B = len(batch.y_l)
    torch.manual_seed(1)
    with torch.no_grad():
        logits_l = model(torch.cat([batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]])).logits[:B]
    expected = {"bce": lambda: losses.bce(logits_l, batch.y_l, state.w),
                "focal": lambda: losses.focal(logits_l, batch.y_l, 2.0),
                "arl": lambda: losses.arl(logits_l, batch.y_l, state.alpha, state.w)}[loss_x]().mean()
    assert stats["loss_x"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["loss_x"].item() != pytest.approx(losses.ce(logits_l, batch.y_l).item(), rel=1e-3)
    with pytest.raises(ConfigError, match="loss_x"):
        ALGORITHMS.get("fixmatch")(loss_x="nope").validate()


def test_group_sizes():
    assert group_sizes(10) == (3, 4, 3) and group_sizes(100) == (30, 40, 30)
    assert group_sizes(5) == (2, 1, 2) and group_sizes(3) == (1, 1, 1) and group_sizes(2) == (1, 0, 1)


def test_group_metrics_hand_example():
    # counts not sorted, with ties: order by count desc, index asc ->
    # [1 (50), 4 (50), 0 (30), 2 (20), 7 (20), 3 (10), 5 (10), 8 (5), 6 (2), 9 (2)]
    counts = [30, 50, 20, 10, 50, 10, 2, 20, 5, 2]
    recall = [0.9, 1.0, 0.8, 0.6, 0.95, 0.5, 0.2, 0.7, 0.4, 0.1]
    g = group_metrics(recall, counts)
    assert g["head_classes"] == [1, 4, 0] and g["medium_classes"] == [2, 7, 3, 5] and g["tail_classes"] == [8, 6, 9]
    assert g["head_recall"] == pytest.approx((1.0 + 0.95 + 0.9) / 3)
    assert g["medium_recall"] == pytest.approx((0.8 + 0.7 + 0.6 + 0.5) / 4)
    assert g["tail_recall"] == pytest.approx((0.4 + 0.2 + 0.1) / 3)
    assert g["minority_class"] == 9 and g["minority_recall"] == pytest.approx(0.1)  # tie 6/9 -> highest index
    assert g["gmean_recall"] == pytest.approx(float(np.prod(recall)) ** 0.1)


def test_apr_and_ler():
    rates = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]
    m, s = apr(rates, center_index=3, half_window=1)  # 0.6, 0.7, 0.8
    assert m == pytest.approx(0.7) and s == pytest.approx(math.sqrt(0.02 / 3))
    m, s = apr(rates, center_index=5, half_window=2)  # clipped: 0.7, 0.8, 0.9
    assert m == pytest.approx(0.8)
    assert apr(rates, 0, 0) == (0.1, 0.0)
    with pytest.raises(ValueError):
        apr(rates, 6, 1)
    assert ler(0.8, 0.5) == pytest.approx(1.6) and math.isnan(ler(0.8, 0.0))


def test_summary_apr_and_ler_from_the_runs_own_records(tmp_path):
    """summary.json's APR = mean / std of the pass rates within apr_window x steps of best.pt's evaluation,
    LER = that evaluation's test top-1 / APR mean; a run without pseudo-labels has neither."""
    import json

    from helpers import tiny_overrides

    from semisup import config as C
    from semisup.train import train

    cfg = C.resolve(None, overrides=tiny_overrides(tmp_path / "fm", steps=8, **{
        "train.eval_every": 1, "train.apr_window": 0.25, "algorithm.threshold": 0.3}))
    train(cfg)
    summary = json.loads((tmp_path / "fm" / "summary.json").read_text())
    recs = [json.loads(line) for line in (tmp_path / "fm" / "metrics.jsonl").read_text().splitlines()]
    c = [r["step"] for r in recs].index(summary["best"]["step"])
    win = [r["train"]["pass_rate"] for r in recs[max(0, c - 2):c + 3]]  # 0.25 * 8 steps / 1 = 2 evaluations
    assert summary["apr"]["half_window_evals"] == 2 and summary["apr"]["center_step"] == recs[c]["step"]
    assert summary["apr"]["mean"] == pytest.approx(np.mean(win)) and summary["apr"]["std"] == pytest.approx(np.std(win))
    assert summary["apr"]["mean"] > 0, "threshold 0.3 lets pseudo-labels through"
    assert summary["ler"] == pytest.approx(recs[c]["test"]["top1"] / np.mean(win))

    cfg = C.resolve(None, overrides=tiny_overrides(tmp_path / "sup", steps=2, **{"algorithm.name": "supervised"}))
    train(cfg)
    summary = json.loads((tmp_path / "sup" / "summary.json").read_text())
    assert "apr" not in summary and "ler" not in summary


# ---- the ARL reference code (BAE-JEEON/Adaptive-Regularization-Loss), restated slowly -------------------
def _ref_make_imb_data(max_num, class_num, gamma):  # ABC's / the ARL code's long-tailed counts
    mu = (1 / gamma) ** (1 / (class_num - 1))
    return [int(max_num / gamma) if i == class_num - 1 else int(max_num * mu ** i) for i in range(class_num)]


def _ref_alpha(counts):  # train.py: IMB_RATIO_PER_CLASS = N / N[0], then index_select in reversed order
    ratio = [n / counts[0] for n in counts]
    return ratio[::-1]


def _ref_regularization_loss(logits, y, alpha):
    """regularization_loss.py, reduction='none': NLLLoss(weight=alpha/mean(alpha)) * (1 - pt)^(pt + alpha_y),
    one sample at a time in float64, pt NOT detached (autograd through every term)."""
    w = alpha / alpha.mean()
    out = []
    for i in range(len(y)):
        log_p = torch.log_softmax(logits[i], 0)
        pt = log_p[y[i]].exp()
        out.append((1 - pt) ** (pt + alpha[y[i]]) * (-w[y[i]] * log_p[y[i]]))
    return torch.stack(out)


def test_reference_alpha_is_the_reversed_ratio_vector():
    counts = _ref_make_imb_data(1000, 10, 100)
    assert counts == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    alpha, _ = losses.class_weights(counts, "reference")
    assert alpha.tolist() == pytest.approx(_ref_alpha(counts))
    assert alpha[8].item() == pytest.approx(0.599) and losses.class_weights(counts)[0][8].item() == pytest.approx(0.625)
    shuffled = [counts[i] for i in (3, 0, 9, 5, 1, 8, 2, 7, 4, 6)]  # any class order: by rank, not by index
    a2, _ = losses.class_weights(shuffled, "reference")
    assert a2.tolist() == pytest.approx([alpha[i].item() for i in (3, 0, 9, 5, 1, 8, 2, 7, 4, 6)])
    with pytest.raises(ValueError, match="unknown alpha_from"):
        losses.class_weights(counts, "nope")


def test_fixmatch_arl_loss_and_gradient_equal_the_reference_code():
    """The cifar10_lt_arl preset's FixMatch: Lx = ARL(logits_x, y).mean(), Lu = (ARL(logits_s, pl) * mask).mean(),
    value and gradient with respect to every logit against the slow restatement above."""
    from semisup import config as C
    from semisup.algorithms.fixmatch import ClassWeights

    alg = C.resolve("cifar10_lt_arl").algorithm
    counts = _ref_make_imb_data(1000, 10, 100)
    state = ClassWeights(counts, alg.arl_alpha).double()
    g = torch.Generator().manual_seed(0)
    lx = (torch.randn(16, 10, generator=g, dtype=torch.float64) * 3).requires_grad_()
    lw = torch.randn(64, 10, generator=g, dtype=torch.float64) * 6
    ls = (torch.randn(64, 10, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 10, (16,), generator=g)
    ours = alg.labelled_loss(lx, y, state) + alg.unlabelled_loss(ls, alg.probs(lw).double(), state)[0]
    gx, gs = torch.autograd.grad(ours, [lx, ls])

    alpha = torch.tensor(_ref_alpha(counts), dtype=torch.float64)
    max_p, pl = torch.softmax(lw, -1).max(-1)
    mask = (max_p >= 0.95).double()
    assert 0 < mask.sum() < 64
    ref = _ref_regularization_loss(lx, y, alpha).mean() + (_ref_regularization_loss(ls, pl, alpha) * mask).mean()
    rx, rs = torch.autograd.grad(ref, [lx, ls])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gx, rx, rtol=1e-5, atol=1e-9) and torch.allclose(gs, rs, rtol=1e-5, atol=1e-9)
    detached = C.resolve("cifar10_lt_arl", overrides=["--algorithm.arl_detach=true"]).algorithm
    gd = torch.autograd.grad(detached.labelled_loss(lx, y, state), lx)[0]
    assert not torch.allclose(gd, torch.autograd.grad(alg.labelled_loss(lx, y, state), lx)[0], rtol=1e-3)


def test_cifar10_lt_arl_preset_is_the_reference_command_field_by_field():
    """train.py's defaults and the README command (--batch-size 64 --lr 0.03 --label_ratio 20 --num_max 1000
    --imb_ratio 100 --threshold 0.95), kekmodel's WideResNet / ModelEMA / RandAugmentMC, as semisup keys."""
    from semisup import config as C

    cfg = C.resolve("cifar10_lt_arl")
    reference = {
        ("data", "name"): "cifar10", ("data", "split"): "ratio", ("data", "label_ratio"): 20,
        ("data", "n1"): 1000, ("data", "gamma_l"): 100, ("data", "weak"): "flip_crop", ("data", "crop_pad"): 0.125,
        ("data", "strong"): "randaugment_mc", ("data", "randaugment_n"): 2,
        ("model", "name"): "wrn", ("model", "depth"): 28, ("model", "width"): 2, ("model", "dropout"): 0.0,
        ("model", "bn_momentum"): 0.001, ("model", "leaky_slope"): 0.1,
        ("optim", "lr"): 0.03, ("optim", "momentum"): 0.9, ("optim", "nesterov"): True,
        ("optim", "weight_decay"): 5e-4, ("optim", "schedule"): "cosine", ("optim", "warmup_steps"): 0,
        ("optim", "ema"): 0.999, ("optim", "ema_warmup"): "none",
        ("train", "steps"): 2 ** 20, ("train", "eval_every"): 1024, ("train", "batch_size"): 64, ("train", "mu"): 7,
        ("algorithm", "threshold"): 0.95, ("algorithm", "T"): 1.0, ("algorithm", "lambda_u"): 1.0,
        ("algorithm", "hard_label"): True, ("algorithm", "loss_u"): "arl", ("algorithm", "loss_x"): "arl",
        ("algorithm", "arl_detach"): False, ("algorithm", "arl_gamma_scale"): 1.0,
        ("algorithm", "arl_alpha"): "reference",
    }
    for (sec, key), want in reference.items():
        assert getattr(getattr(cfg, sec), key) == want, f"{sec}.{key}"
    assert cfg.algorithm.name == "fixmatch"
