"""ACR: logit adjustment, anchor weighting, the windowed estimate of the unlabelled distribution, predict."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Tiny, run_cli, tiny_overrides, unpack
from helpers import tiny_batch as _batch

from semisup import config as C
from semisup.algorithms import ALGORITHMS, Context
from semisup.algorithms.acr_ops import acr_tau, anchor_weights, logit_adjustment, sym_kl
from semisup.errors import ConfigError

COUNTS = np.array([6, 3, 1])  # labelled prior pi = (0.6, 0.3, 0.1)


def _ctx():
    return Context(num_classes=3, labelled_counts=COUNTS, num_features=4, steps=10)


def _acr(**kw):
    return ALGORITHMS.get("acr")(**kw)


def _slow_sym_kl(p, q):
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
    return 0.5 * (kl(p, q) + kl(q, p))


def test_logit_adjustment_by_hand():
    pi = torch.tensor([0.5, 0.25, 0.25])
    assert torch.allclose(logit_adjustment(pi, 2.0), torch.tensor([math.log(0.25), math.log(1 / 16), math.log(1 / 16)]))
    assert torch.allclose(logit_adjustment(pi, torch.tensor(1.0)), pi.log())
    assert torch.allclose(logit_adjustment(pi, 0.0), torch.zeros(3), atol=1e-6)
    # the eps keeps a zero prior finite: log(1e-12)
    assert logit_adjustment(torch.tensor([1.0, 0.0]), 2.0)[1].item() == pytest.approx(math.log(1e-12), rel=1e-4)


def test_sym_kl_by_hand_and_zero_entries():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    want = 0.5 * ((0.5 * math.log(2) + 0.5 * math.log(2 / 3)) + (0.25 * math.log(0.5) + 0.75 * math.log(1.5)))
    assert sym_kl(p, q).item() == pytest.approx(want, rel=1e-5)
    assert sym_kl(q, p).item() == pytest.approx(want, rel=1e-5)
    assert sym_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    z = sym_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))  # KL(q || p) would be inf unclamped
    assert torch.isfinite(z) and z.item() == pytest.approx(
        0.5 * (math.log(2) + 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12)), rel=1e-4)
    assert sym_kl(torch.rand(4, 3).softmax(-1), torch.rand(3).softmax(-1)).shape == (4,)  # broadcast over rows


def test_anchor_weights_and_tau_by_hand():
    d = torch.log(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(anchor_weights(d), torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    assert acr_tau(d, 0.0, 2.0).item() == pytest.approx(1 / 3)
    assert acr_tau(d, 0.5, 2.0).item() == pytest.approx(0.5 + 1.5 / 6)
    assert acr_tau(torch.zeros(3), 0.0, 2.0).item() == pytest.approx(2 / 3)  # equal distances: tau_max / 3


@pytest.mark.parametrize("which", [0, 1, 2])
def test_estimate_equal_to_an_anchor_puts_the_least_weight_on_it(which):
    """The reference's sign: weights softmax(+d), so the anchor the estimate equals (d = 0) gets the LEAST
    weight, and tau = tau1 * w_con is ~0 for consistent, in between for uniform, largest for reversed."""
    pi = torch.tensor([0.8, 0.2])
    anchors = torch.stack([pi, torch.full((2,), 0.5), pi.flip(0)])
    d = sym_kl(anchors[which][None], anchors)  # (3,)
    slow = [_slow_sym_kl(anchors[which].tolist(), a.tolist()) for a in anchors]
    assert torch.allclose(d, torch.tensor(slow), atol=1e-6)
    w = anchor_weights(d)
    assert int(w.argmin()) == which and w.sum().item() == pytest.approx(1.0)
    e = torch.exp(torch.tensor(slow))
    assert acr_tau(d, 0.0, 2.0).item() == pytest.approx(2.0 * (e[0] / e.sum()).item(), rel=1e-5)
    taus = [acr_tau(sym_kl(a[None], anchors), 0.0, 2.0).item() for a in anchors]
    assert taus[0] < taus[1] < taus[2]


def test_observe_presence_is_the_references_non_accumulating_indexed_write():
    """train.py: now_mask = zeros(K); now_mask[targets_u_b] += mask_l * mask_b; now_mask / now_mask.sum(): with
    repeated indices the write does not accumulate, so each class with a confident sample counts once."""
    state = _acr().init_state(Tiny(), _ctx())
    labels, mask = torch.tensor([0, 0, 0, 1, 2, 2]), torch.tensor([1.0, 1, 1, 1, 0, 0])
    now_mask = torch.zeros(3)
    now_mask[labels[mask > 0]] += mask[mask > 0]  # the reference's write (confident samples: the same value)
    assert now_mask.tolist() == [1.0, 1.0, 0.0]
    state.observe(labels, mask, 0.5)
    assert torch.allclose(state.u_py, 0.5 / 3 + 0.5 * now_mask / now_mask.sum())
    assert _acr().u_estimate == "presence" and type(_acr()).mu == 1
    with pytest.raises(ConfigError, match="u_estimate"):
        _acr(u_estimate="nope").validate()


def test_observe_counts_every_confident_sample_and_skips_an_empty_histogram():
    state = _acr().init_state(Tiny(), _ctx())
    assert torch.allclose(state.anchors, torch.tensor([[0.6, 0.3, 0.1], [1 / 3] * 3, [0.1, 0.3, 0.6]]))
    state.observe(torch.tensor([0, 1, 0, 2]), torch.zeros(4), 0.9)  # nothing confident: no update
    assert torch.allclose(state.u_py, torch.full((3,), 1 / 3)) and state.div_sum.abs().sum() == 0
    state.refresh(3, 2.0)  # a window that saw nothing keeps tau (the reference would set tau1 / 3)
    assert state.tau.item() == 2.0
    state.observe(torch.tensor([0, 0, 0, 1, 2]), torch.tensor([1.0, 1, 1, 1, 0]), 0.5, presence=False)
    want = [0.5 / 3 + 0.5 * 0.75, 0.5 / 3 + 0.5 * 0.25, 0.5 / 3]  # u_estimate=counts: duplicates accumulate
    assert torch.allclose(state.u_py, torch.tensor(want))
    slow = [_slow_sym_kl(want, a) for a in state.anchors.tolist()]
    assert torch.allclose(state.div_sum, torch.tensor(slow), atol=1e-6) and state.n_seen.item() == 1
    state.refresh(3, 2.0)  # summed divergences / window length, as the reference (count_KL / eval_step)
    e = torch.exp(torch.tensor(slow) / 3)
    assert state.tau.item() == pytest.approx(2.0 * (e[0] / e.sum()).item(), rel=1e-5)
    assert state.div_sum.abs().sum() == 0 and state.n_seen.item() == 0


def test_estimate_starts_at_est_start_and_tau_refreshes_only_every_window():
    torch.manual_seed(0)
    alg = _acr(threshold=0.0, est_start=2, est_window=3, ema_u=0.9, u_estimate="counts")
    model, state = Tiny(), alg.init_state(Tiny(), _ctx())
    u_seen, taus, divs = [], [], []
    for step in range(10):
        u_before, div_before = state.u_py.clone(), state.div_sum.clone()
        _, stats = unpack(alg.step(model, _batch(alg, step=step, seed=step), state, step / 10))
        taus.append(float(stats["tau"]))
        if step < 2:
            assert torch.equal(state.u_py, u_before), "no estimation before est_start"
        else:
            hist = torch.bincount(stats["pseudo_label_bal"], minlength=3).float()  # threshold 0: all kept
            want = 0.9 * u_before + 0.1 * hist / hist.sum()
            assert torch.allclose(state.u_py, want, atol=1e-6)
            u_seen.append(want)
        divs.append(div_before)
    # refreshes at the start of steps 5 and 8 (est_start + k * window, after a full window): tau is constant
    # in between and tau1 before the first one
    assert taus[:5] == [2.0] * 5 and taus[5] == taus[6] == taus[7] and taus[8] == taus[9] and taus[5] != taus[8]
    anchors = state.anchors
    for refresh, window in ((5, u_seen[0:3]), (8, u_seen[3:6])):
        d = sum(sym_kl(u[None], anchors) for u in window)  # (3,) the window's summed divergences
        assert torch.allclose(divs[refresh], d, atol=1e-5)
        assert taus[refresh] == pytest.approx(acr_tau(d / 3, 0.0, 2.0).item(), rel=1e-5)
    assert torch.allclose(state.div_sum, sum(sym_kl(u[None], anchors) for u in u_seen[6:8]), atol=1e-5)


# thresholds that split one of the four confidences; the biases make the unadjusted standard head (row 3) or
# the balanced head (row 4) confident where the adjusted one is not, so the OR of the masks matters; with
# tau = 0 (row 5) the standard branch's labels (argmax l_w) differ from the balanced branch's (tau12 = 2)
@pytest.mark.parametrize("threshold, bias_std, bias_bal, tau, case", [
    (0.684, 0, 0, 0.7, ""), (0.919, 0, 0, 0.7, ""), (0.5, 1.5, 0, 0.7, "or"), (0.88, 1.5, 2.5, 0.7, "or"),
    (0.5, 1.5, 0, 0.0, "labels")])
def test_step_matches_the_reference_formulas(threshold, bias_std, bias_bal, tau, case):
    torch.manual_seed(0)
    alg = _acr(threshold=threshold, est_start=100)
    model = Tiny().eval()  # deterministic forward: recompute by hand below
    state = alg.init_state(model, _ctx())
    with torch.no_grad():
        model.head.bias[0] += bias_std  # standard head leans to the head class 0
        state.head.bias[1] += bias_bal
    state.tau.fill_(tau)
    batch = _batch(alg)
    loss, stats = unpack(alg.step(model, batch, state, 0.0))
    x = torch.cat([batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"], batch.x_u["strong2"]])
    out = model(x)
    h = state.head(out.features)
    log_pi = torch.tensor([0.6, 0.3, 0.1]).log()
    l_w, l_s, h_w, h_s = out.logits[4:12], out.logits[12:], h[4:12], h[12:]
    loss_x_b = F.cross_entropy(h[:4] + 2.0 * log_pi, batch.y_l)
    q1, q12 = (l_w - tau * log_pi).softmax(-1), (l_w - 2.0 * log_pi).softmax(-1)
    m = lambda p: (p.max(-1).values >= threshold).float()  # noqa: E731
    mask_u = torch.maximum(m(q1), m(l_w.softmax(-1)))
    mask_b = torch.maximum(m(h_w.softmax(-1)), m(q12))
    loss_u = (F.cross_entropy(l_s, q1.argmax(-1).repeat(2), reduction="none") * mask_u.repeat(2)).mean()
    loss_u_b = (F.cross_entropy(h_s, q12.argmax(-1).repeat(2), reduction="none") * mask_b.repeat(2)).mean()
    masks = [m(q1), m(l_w.softmax(-1)), m(h_w.softmax(-1)), m(q12)]
    assert any(0 < k.sum() < 8 for k in masks), "the threshold should split one of the confidences"
    if case == "or":
        assert not torch.equal(mask_u, masks[0]) or not torch.equal(mask_b, masks[3]), "the OR should matter"
    if case == "labels":
        assert not torch.equal(q1.argmax(-1), q12.argmax(-1)) and mask_u.sum() > 0 and mask_b.sum() > 0
    assert stats["loss_x_b"].item() == pytest.approx(loss_x_b.item(), rel=1e-5)
    assert stats["loss_u"].item() == pytest.approx(loss_u.item(), rel=1e-5, abs=1e-7)
    assert stats["loss_u_b"].item() == pytest.approx(loss_u_b.item(), rel=1e-5, abs=1e-7)
    assert torch.equal(stats["pseudo_label"], q1.argmax(-1)) and torch.equal(stats["mask"], mask_u)
    want = F.cross_entropy(out.logits[:4], batch.y_l) + loss_x_b + loss_u + loss_u_b
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_predict_uses_the_balanced_head_without_adjustment():
    torch.manual_seed(0)
    alg, model = _acr(), Tiny().eval()
    state = alg.init_state(model, _ctx())
    with torch.no_grad():
        state.head_ema.weight.add_(1.0)  # the two heads now differ
    x = torch.randn(5, 1, 8, 8)
    f = model(x).features
    assert torch.allclose(alg.predict(model, x, state, ema=True), state.head_ema(f))
    assert torch.allclose(alg.predict(model, x, state, ema=False), state.head(f))
    assert not torch.allclose(alg.predict(model, x, state, ema=False), model(x).logits)
    assert not torch.allclose(alg.predict(model, x, state, ema=True), alg.predict(model, x, state, ema=False))


def test_state_round_trips_and_continues_identically():
    torch.manual_seed(0)
    alg = _acr(threshold=0.0, est_start=1, est_window=2)
    model = Tiny().eval()
    state = alg.init_state(model, _ctx())
    for step in range(4):
        alg.step(model, _batch(alg, step=step, seed=step), state, step / 8)
    assert float(state.tau) != 2.0 and state.div_sum.abs().sum() > 0  # something to restore
    clone = alg.init_state(Tiny(), _ctx())
    clone.load_state_dict(state.state_dict())
    for (k, a), (_, b) in zip(state.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), k
    assert {"u_py", "div_sum", "n_seen", "tau", "anchors", "head.weight", "head_ema.weight"} <= set(state.state_dict())
    la, sa = unpack(alg.step(model, _batch(alg, step=4, seed=4), state, 0.5))
    lb, sb = unpack(alg.step(model, _batch(alg, step=4, seed=4), clone, 0.5))
    assert la.item() == pytest.approx(lb.item(), rel=1e-6) and float(sa["tau"]) == float(sb["tau"])


def test_views_and_trainable_head():
    assert _acr().views_u == ("weak", "strong", "strong2")
    assert _acr(strong_views=1).views_u == ("weak", "strong")
    state = _acr().init_state(Tiny(), _ctx())
    assert all(p.requires_grad for p in state.head.parameters())
    assert not any(p.requires_grad for p in state.head_ema.parameters())


def test_acr_config_errors():
    for key, bad in (("ema_u", 1.0), ("ema_u", -0.1), ("est_window", 0), ("est_start", -1), ("tau1", -1),
                     ("tau2", -0.5), ("tau12", -2), ("strong_views", 0), ("threshold", 2), ("T", 0)):
        with pytest.raises(ConfigError, match=f"algorithm.{key}"):
            C.from_dict({"algorithm": {"name": "acr", key: bad}})
    cfg = C.from_dict({"algorithm": {"name": "acr", "est_window": "100", "ema_u": "0.99"}})
    assert cfg.algorithm.est_window == 100 and cfg.algorithm.ema_u == 0.99


def test_acr_cli_run_logs_tau(tmp_path):
    r = run_cli("train", *tiny_overrides(tmp_path / "run", steps=6, **{
        "algorithm.name": "acr", "algorithm.threshold": 0.0, "algorithm.est_start": 1, "algorithm.est_window": 2}))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(math.isfinite(rec["train"]["tau"]) and math.isfinite(rec["train"]["loss"]) for rec in recs)
    assert recs[-1]["train"]["tau"] != 2.0  # tau adapted (refreshes at steps 3 and 5)
