"""DASO and ABC: blending weights, prototype queue, similarity classifier, alignment, warm-up;
ABC's Bernoulli masks, its schedule and inference head; the loop's extra pseudo-label trackers."""
import collections
import json
import math

import pytest
import torch
from helpers import Tiny, run_child, tiny_overrides, unpack
from helpers import tiny_batch as _batch
from helpers import tiny_context as _ctx

from semisup import config as C
from semisup.algorithms import ALGORITHMS, Batch
from semisup.algorithms.daso import DASOState
from semisup.algorithms.daso_ops import daso_blend, daso_weights, prototype_logits
from semisup.ema import ModelEMA, follow_
from semisup.errors import ConfigError

# ---------------------------------------------------------------- DASO: pure pieces


def test_daso_weights_by_hand():
    hist = torch.tensor([400.0, 100.0, 25.0, 0.0])
    # m / max = [1, 1/4, 1/16, 0]; T_dist = 1.5 -> power 2/3: [1, 2^(-4/3), 2^(-8/3), 0]
    assert daso_weights(hist, 1.5).tolist() == pytest.approx([1.0, 0.3968503, 0.1574901, 0.0], rel=1e-6)
    # T_dist = 0.3 -> power 10/3: [1, 2^(-20/3), 2^(-40/3), 0]
    assert daso_weights(hist, 0.3).tolist() == pytest.approx([1.0, 9.843133e-3, 9.688727e-5, 0.0], rel=1e-5)
    # counts or frequencies: the same weights; the most frequent class gets 1 wherever it is
    assert torch.allclose(daso_weights(hist / hist.sum(), 1.5), daso_weights(hist, 1.5))
    assert daso_weights(torch.tensor([1.0, 9.0, 3.0]), 1.0).tolist() == pytest.approx([1 / 9, 1.0, 1 / 3])
    assert torch.equal(daso_weights(torch.zeros(3), 1.5), torch.ones(3))  # nothing counted yet


def test_daso_blend_formula():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    v = torch.tensor([0.5, 1.0, 0.25])
    got = daso_blend(p, q, v)
    # row 0: argmax p = 0, v = 0.5: 0.5 p + 0.5 q; row 1: argmax p = 2, v = 0.25: 0.75 p + 0.25 q
    want = [[0.35, 0.6, 0.05], [0.075 + 0.125, 0.225 + 0.125, 0.45]]
    assert got.tolist() == [pytest.approx(r) for r in want]
    assert torch.allclose(got.sum(1), torch.ones(2))


def test_similarity_classifier_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    z, C_ = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    C_[2] = 0  # an empty queue's prototype
    got = prototype_logits(z, C_, 0.05)
    for b in range(5):
        for k in range(3):
            zb, ck = z[b].tolist(), C_[k].tolist()
            nz, nc = math.sqrt(sum(a * a for a in zb)), math.sqrt(sum(a * a for a in ck))
            cos = sum(a * c for a, c in zip(zb, ck)) / (nz * nc) if nc > 0 else 0.0
            assert got[b, k].item() == pytest.approx(cos / 0.05, rel=1e-5, abs=1e-5)
    q = torch.softmax(got, -1)
    assert torch.allclose(q.sum(1), torch.ones(5))


def test_queue_is_fixed_length_fifo_per_class_and_prototypes_are_its_means():
    K, L, D = 3, 5, 2
    state = DASOState(Tiny(), K, D, L, ema=0.999)
    ref = [collections.deque(maxlen=L) for _ in range(K)]
    g = torch.Generator().manual_seed(1)
    for n in (4, 7, 1, 12, 3, 9):  # the 12-batch pushes more than L of some class at once
        labels = torch.randint(0, K, (n,), generator=g)
        if n == 12:
            labels[:7] = 1  # at least 7 > L features of class 1 in one push
        feats = torch.randn(n, D, generator=g)
        state.enqueue(feats, labels)
        for f, y in zip(feats, labels.tolist()):
            ref[y].append(f)
        for k in range(K):
            assert int(state.queue_size[k]) == len(ref[k]) <= L
            # FIFO ring: the last L pushed, oldest first from the write position back by the fill count
            order = [(int(state.queue_ptr[k]) - len(ref[k]) + i) % L for i in range(len(ref[k]))]
            if ref[k]:
                assert torch.equal(state.queue[k, order], torch.stack(list(ref[k])))
            want = torch.stack(list(ref[k])).mean(0) if ref[k] else torch.zeros(D)
            assert torch.allclose(state.prototypes()[k], want, atol=1e-6)


def test_histogram_refreshes_every_period_steps():
    state = DASOState(Tiny(), 3, 4, 8, ema=0.999)
    state.count(torch.tensor([0, 0, 1]), step=0, period=3)
    state.count(torch.tensor([2]), step=1, period=3)
    assert torch.equal(state.pl_hist, torch.zeros(3))  # not refreshed yet
    state.count(torch.tensor([1]), step=2, period=3)  # (2 + 1) % 3 == 0: refresh
    assert state.pl_hist.tolist() == [2, 2, 1] and torch.equal(state.pl_counts, torch.zeros(3))
    state.count(torch.tensor([2, 2]), step=3, period=3)
    assert state.pl_hist.tolist() == [2, 2, 1] and state.pl_counts.tolist() == [0, 0, 2]


@pytest.mark.parametrize("warmup", ["recent", "uniform", "none"])
def test_follow_equals_the_loops_ema_of_the_previous_step(warmup):
    torch.manual_seed(0)
    model = Tiny()
    loop_ema, own = ModelEMA(model, 0.9, warmup), Tiny()
    own.load_state_dict(model.state_dict())
    for s in range(6):
        follow_(own, model, s, 0.9, warmup)  # start of step s
        if s:
            for a, b in zip(own.state_dict().values(), loop_ema.module.state_dict().values()):
                assert torch.allclose(a.float(), b.float(), atol=1e-6)
        with torch.no_grad():  # "step s": the optimizer changes the weights and BN statistics
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.body[1].running_mean.add_(1.0)
        loop_ema.update(model, s)


# ---------------------------------------------------------------- DASO: the algorithm


def _daso(**kw):
    return ALGORITHMS.get("daso")(**{"threshold": 0.0, **kw})


def test_daso_warmup_switches_blending_and_alignment():
    torch.manual_seed(0)
    model, alg = Tiny().eval(), _daso(warmup=0.5)
    state = alg.init_state(model, _ctx())
    batch = _batch(alg)
    _, before = unpack(alg.step(model, batch, state, 0.49))
    assert before["loss_align"].item() == 0.0
    assert torch.equal(before["pseudo_label"], before["pseudo_label_linear"])  # FixMatch's own labels
    fm = ALGORITHMS.get("fixmatch")(threshold=0.0)
    _, f = unpack(fm.step(model, batch, None, 0.49))
    assert before["loss_u"].item() == pytest.approx(f["loss_u"].item(), rel=1e-6)
    _, after = unpack(alg.step(model, batch, state, 0.5))  # histogram still empty: v = 1, p' = q
    assert after["loss_align"].item() > 0
    assert torch.equal(after["pseudo_label"], after["pseudo_label_sim"])
    assert not torch.equal(after["pseudo_label_sim"], after["pseudo_label_linear"])  # the check has teeth


def test_daso_blended_pseudo_label_and_alignment_value():
    torch.manual_seed(0)
    model, alg = Tiny().eval(), _daso(warmup=0.0, T_dist=0.3)
    state = alg.init_state(model, _ctx())
    state.pl_hist.copy_(torch.tensor([50.0, 20.0, 5.0]))
    batch = _batch(alg)
    _, s = unpack(alg.step(model, batch, state, 0.1))
    # recompute by hand from the model and the queue (state now holds this step's labelled features)
    out = model(torch.cat([batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]]))
    z_w, z_s = out.features[4:].chunk(2)
    p = torch.softmax(out.logits[4:12].float(), -1)
    q = torch.softmax(prototype_logits(z_w, state.prototypes(), 0.05), -1)
    v = (torch.tensor([50.0, 20.0, 5.0]) / 50) ** (1 / 0.3)
    w = v[p.argmax(1)].unsqueeze(1)
    assert torch.equal(s["pseudo_label"], ((1 - w) * p + w * q).argmax(1))
    ref = -(q * torch.log_softmax(prototype_logits(z_s, state.prototypes(), 0.05), -1)).sum(1).mean()
    assert s["loss_align"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_daso_alignment_loss_gives_gradient_through_the_strong_view_only():
    torch.manual_seed(0)
    model, alg = Tiny(), _daso(warmup=0.0)
    state = alg.init_state(model, _ctx())
    _, s = unpack(alg.step(model, _batch(alg), state, 0.5))
    s["loss_align"].backward()
    assert model.body[0].weight.grad.abs().sum() > 0  # reaches the encoder
    assert model.head.weight.grad is None or model.head.weight.grad.abs().sum() == 0  # not the linear head
    assert all(p.grad is None for p in state.encoder_ema.parameters())  # nor the EMA encoder / prototypes


def test_daso_queue_uses_the_ema_encoder_on_labelled_images():
    torch.manual_seed(0)
    model, alg = Tiny(), _daso(queue_len=4)
    state = alg.init_state(model, _ctx())
    batch = _batch(alg, B=4)
    with torch.no_grad():
        for p in state.encoder_ema.parameters():  # make the EMA copy differ from the student
            p.mul_(0.5)
        want = state.encoder_ema.eval()(batch.x_l["weak"]).features
    alg.step(model, batch, state, 0.0)  # step 0: follow_ does nothing, the copy stays as set
    for i, y in enumerate(batch.y_l.tolist()):
        assert any(torch.allclose(want[i], state.queue[y, j]) for j in range(4))
    assert int(state.queue_size.sum()) == 4


def test_daso_config_errors():
    with pytest.raises(ConfigError, match="algorithm.T_dist"):
        C.from_dict({"algorithm": {"name": "daso", "T_dist": 0}})
    with pytest.raises(ConfigError, match="algorithm.warmup"):
        C.from_dict({"algorithm": {"name": "daso", "warmup": 1.5}})
    with pytest.raises(ConfigError, match="algorithm.threshold"):
        C.from_dict({"algorithm": {"name": "daso", "threshold": 2}})
    assert C.from_dict({"algorithm": {"name": "daso", "T_dist": "0.3"}}).algorithm.T_dist == 0.3


def test_daso_run_logs_both_classifiers_and_resumes_exactly(tmp_path):
    """A real (tiny) run: metrics.jsonl holds per-class recall of the linear and the similarity classifier;
    a run killed after a mid-interval checkpoint and resumed logs exactly what the uninterrupted one did
    (DASO's EMA encoder, queue and histogram, and the extra trackers' interval counts all restored)."""
    common = {"algorithm.name": "daso", "algorithm.warmup": 0.25, "algorithm.dist_period": 2,
              "run.deterministic": "true", "run.amp": "off", "train.steps": 8, "train.save_every": 1}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert run_child(["train", *tiny_overrides(ref, **common)], tmp_path / "ref.log") == 0
    assert run_child(["train", *tiny_overrides(out, **common)], tmp_path / "k.log", kill=("saved", 6)) == -9
    assert run_child(["train", "--resume", f"--run.out={out}", "--run.progress=false"], tmp_path / "r.log") == 0
    a = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for r in a:
        t = r["train"]
        for n in ("linear", "sim"):
            assert len(t[f"pseudo_label_{n}"]["per_class_pl_recall"]) == 10
            assert t[f"pseudo_label_{n}"]["pass_rate"] == 1.0  # scored without a mask
        assert t["loss_align"] > 0
    for r in a + b:
        for k in ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median"):
            r.pop(k)
    assert a == b


def _daso_rm(**kw):
    return ALGORITHMS.get("daso_remixmatch")(**{"K": 2, **kw})


def test_daso_remixmatch_before_warmup_is_remixmatch():
    """Before the warm-up the target is ReMixMatch's own guess: the same loss terms, bit for bit (same
    model, same RNG for dropout and MixUp), and no alignment loss."""
    import copy

    torch.manual_seed(0)
    model, alg = Tiny(), _daso_rm(warmup=0.5)
    rm = ALGORITHMS.get("remixmatch")(K=2)
    batch = _batch(alg)
    m1, m2 = model, copy.deepcopy(model)
    torch.manual_seed(1)
    loss_rm, s_rm = unpack(rm.step(m1, batch, rm.init_state(m1, _ctx()), 0.3))
    torch.manual_seed(1)
    loss_d, s_d = unpack(alg.step(m2, batch, alg.init_state(m2, _ctx()), 0.3))
    for k in ("loss_x", "loss_u", "loss_u1", "loss_rot"):
        assert s_d[k].item() == s_rm[k].item(), k
    assert s_d["loss_align"].item() == 0.0 and loss_d.item() == loss_rm.item()
    assert torch.equal(s_d["pseudo_label"], s_d["pseudo_label_linear"])


def test_daso_remixmatch_blended_target_and_alignment_by_hand():
    """After the warm-up: target = blend(ReMixMatch's aligned sharpened guess, q) with v from the histogram;
    the pre-mixup loss trains the first strong view toward it; alignment H(q_weak, q_strong1)."""
    from semisup.pseudo import dist_align, sharpen

    torch.manual_seed(0)
    model, alg = Tiny().eval(), _daso_rm(warmup=0.0, T_dist=0.3, lambda_rot=0.0)
    state = alg.init_state(model, _ctx())
    state.pl_hist.copy_(torch.tensor([50.0, 20.0, 5.0]))
    batch = _batch(alg)
    p_data, p_tilde = state.base.p_data.clone(), state.base.p_tilde().clone()
    _, s = unpack(alg.step(model, batch, state, 0.1))
    with torch.no_grad():
        w_out, s_out = model(batch.x_u["weak"]), model(batch.x_u["strong"])
    q_rm = sharpen(dist_align(torch.softmax(w_out.logits, -1), p_data, p_tilde), 0.5)
    q = torch.softmax(prototype_logits(w_out.features, state.prototypes(), 0.05), -1)
    v = (torch.tensor([50.0, 20.0, 5.0]) / 50) ** (1 / 0.3)
    w = v[q_rm.argmax(1)].unsqueeze(1)
    target = (1 - w) * q_rm + w * q
    assert torch.equal(s["pseudo_label"], target.argmax(1))
    assert torch.equal(s["pseudo_label_sim"], q.argmax(1)) and torch.equal(s["pseudo_label_linear"], q_rm.argmax(1))
    assert s["loss_u1"].item() == pytest.approx(-(target * torch.log_softmax(s_out.logits, -1)).sum(1).mean().item(),
                                                rel=1e-5)
    ref = -(q * torch.log_softmax(prototype_logits(s_out.features, state.prototypes(), 0.05), -1)).sum(1).mean()
    assert s["loss_align"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert int(state.pl_counts.sum()) == 8  # this step's pseudo-labels counted into the next histogram
    assert not torch.equal(state.base.p_model[-1], torch.full((3,), 1 / 3))  # ReMixMatch's own state moved


def test_daso_remixmatch_trains_end_to_end(tmp_path):
    """A real tiny run with CTAugment: two labelled views, ReMixMatch's state nested in DASO's, both
    classifiers' pseudo-labels logged."""
    out = tmp_path / "r"
    ov = tiny_overrides(out, **{"algorithm.name": "daso_remixmatch", "algorithm.K": 2, "algorithm.warmup": 0.25,
                                "algorithm.dist_period": 2, "data.strong": "ctaugment", "run.amp": "off"})
    assert run_child(["train", *ov], tmp_path / "r.log") == 0, (tmp_path / "r.log").read_text()[-2000:]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train"]["loss_align"] > 0 and math.isfinite(last["test"]["top1"])
    assert len(last["train"]["pseudo_label_sim"]["per_class_pl_recall"]) == 10


# ---------------------------------------------------------------- ABC


def _abc(**kw):
    return ALGORITHMS.get("abc")(**{"threshold": 0.0, **kw})


def test_abc_keep_probabilities_by_hand():
    from semisup.algorithms.abc import ABCState, keep_unlabelled

    state = ABCState([400, 100, 25, 10], num_features=4, ema=0.999)
    assert state.keep_l.tolist() == pytest.approx([0.025, 0.1, 0.4, 1.0])  # N_min / N_y
    assert keep_unlabelled(state.keep_l, 0.0).tolist() == [1.0] * 4
    assert keep_unlabelled(state.keep_l, 1.0).tolist() == pytest.approx([0.025, 0.1, 0.4, 1.0])
    assert keep_unlabelled(state.keep_l, 0.5).tolist() == pytest.approx([0.5125, 0.55, 0.7, 1.0])


def _same_image_batch(alg, B, U, y):
    """B labelled copies of one image (all class y) and U unlabelled copies of another: identical losses
    per sample in eval mode, so a masked mean over the batch / the per-sample loss = the kept fraction."""
    g = torch.Generator().manual_seed(3)
    xl, xu = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    return Batch({"weak": xl.expand(B, -1, -1, -1)}, torch.full((B,), y),
                 {v: xu.expand(U, -1, -1, -1) for v in alg.views_u})


@pytest.mark.parametrize("y, keep", [(0, 0.25), (1, 0.5), (2, 1.0)])  # _ctx(): labelled counts [4, 2, 1]
def test_abc_labelled_mask_keeps_class_y_with_probability_nmin_over_ny(y, keep):
    torch.manual_seed(0)
    model, alg = Tiny().eval(), _abc()
    state = alg.init_state(model, _ctx())
    n = 40000  # std of the kept fraction <= 0.0025: the 0.015 tolerance is 6 sigma, the classes 0.25 apart
    _, s = unpack(alg.step(model, _same_image_batch(alg, n, 8, y), state, 0.0))
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(state.head(model(_same_image_batch(alg, 1, 1, y).x_l["weak"])
                                                          .features), torch.tensor([y]))
    frac = s["loss_abc_x"].item() / ce.item()
    assert frac == pytest.approx(keep, abs=0.015 if keep < 1 else 1e-5)


def test_abc_unlabelled_mask_schedule_from_all_to_nmin_over_n():
    torch.manual_seed(0)
    model, alg = Tiny().eval(), _abc(soft_targets=False, strong_views=1)
    state = alg.init_state(model, _ctx())
    batch = _same_image_batch(alg, 4, 40000, 0)
    with torch.no_grad():
        h = state.head(model(batch.x_u["weak"][:1]).features)  # (1, K): the ABC's pseudo-label for every copy
        k = int(h.argmax())
        ce = torch.nn.functional.cross_entropy(h, torch.tensor([k])).item()
    keep_l = float(state.keep_l[k])  # N_min / N_k of that class
    _, s0 = unpack(alg.step(model, batch, state, 0.0))
    assert s0["loss_abc_u"].item() == pytest.approx(ce, rel=1e-5)  # progress 0: every pseudo-label kept
    assert torch.equal(s0["pseudo_label_abc"], torch.full((40000,), k))
    _, s1 = unpack(alg.step(model, batch, state, 1.0))
    assert s1["loss_abc_u"].item() / ce == pytest.approx(keep_l, abs=0.015 if keep_l < 1 else 1e-5)
    _, s_hi = unpack(_abc(threshold=1.0, soft_targets=False, strong_views=1).step(model, batch, state, 0.0))
    assert s_hi["loss_abc_u"].item() == 0.0  # nothing passes the confidence threshold


def test_abc_unlabelled_term_is_the_official_codes_soft_cross_entropy_summed_over_two_strong_views():
    """ABCfix.py: abcloss1 + abcloss2 = -mean(select_mask2 * maskforbalanceu * sum(log softmax(h(strong_s)) *
    softmax(h(weak)).detach())) for the two strong views, one Bernoulli mask shared by both."""
    torch.manual_seed(0)
    model = Tiny().train()
    state = _abc().init_state(model, _ctx())
    g = torch.Generator().manual_seed(1)
    U = 64
    views = ("weak", "strong", "strong2")
    batch = Batch({"weak": torch.randn(8, 1, 8, 8, generator=g)}, torch.randint(0, 3, (8,), generator=g),
                  {v: torch.randn(U, 1, 8, 8, generator=g) * (1 + 3 * torch.rand(U, 1, 1, 1, generator=g))
                   for v in views})
    x = torch.cat([batch.x_l["weak"], *batch.x_u.values()])
    torch.manual_seed(7)  # the same dropout masks as the step's forward below
    with torch.no_grad():
        h = state.head(model(x).features)
    h_w, h_s1, h_s2 = h[8:8 + U], h[8 + U:8 + 2 * U], h[8 + 2 * U:]
    p = torch.softmax(h_w, 1)
    tau = float(p.max(1).values.median())  # half the samples pass
    select = (p.max(1).values >= tau).float()
    ref = sum(-torch.mean(select * torch.sum(torch.log_softmax(hs, 1) * p, 1)) for hs in (h_s1, h_s2))
    alg = _abc(threshold=tau)
    assert alg.views_u == views and type(alg).mu == 1
    torch.manual_seed(7)
    _, s = unpack(alg.step(model, batch, state, 0.0))  # progress 0: the class-balancing mask keeps every sample
    assert 0 < select.sum() < U
    assert s["loss_abc_u"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_abc_predict_uses_the_abc_head_and_evaluate_uses_predict():
    from semisup.loop.evaluator import evaluate
    from semisup.runtime import setup_runtime

    torch.manual_seed(0)
    model, alg = Tiny().eval(), _abc()
    state = alg.init_state(model, _ctx())
    with torch.no_grad():
        state.head.weight.add_(1.0)  # trained head != its EMA != the model's own head
    x = torch.randn(6, 1, 8, 8)
    f = model(x).features
    assert torch.allclose(alg.predict(model, x, state), state.head_ema(f))
    assert torch.allclose(alg.predict(model, x, state, ema=False), state.head(f))
    assert not torch.allclose(alg.predict(model, x, state, ema=False), model(x).logits)
    rt = setup_runtime(C.RunConfig(amp="off", progress=False, tensorboard=False))
    xu8, y = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (20,))
    out = evaluate(model, xu8, y, rt, [0.5], [0.25], 8, lambda m, xb: alg.predict(m, xb, state, ema=False))
    xf = (xu8.float() / 255 - 0.5) / 0.25
    want = torch.nn.functional.cross_entropy(state.head(model(xf).features), y).item()
    assert out["loss"] == pytest.approx(want, rel=1e-5)
    assert evaluate(model, xu8, y, rt, [0.5], [0.25], 8)["loss"] != pytest.approx(want, rel=1e-3)


def test_abc_run_evaluates_with_its_head_and_semisup_eval_agrees(tmp_path):
    from semisup.evaluate import evaluate_checkpoint, load_checkpoint
    from semisup.loop.evaluator import evaluate
    from semisup.train import train

    out = tmp_path / "abc"
    res = train(C.resolve(overrides=tiny_overrides(out, steps=8, **{"algorithm.name": "abc"})))
    last = res.final
    assert last["train"]["loss_abc_x"] > 0 and "pseudo_label_abc" in last["train"]
    ev = evaluate_checkpoint(str(out / "last.pt"))
    assert ev["top1"] == pytest.approx(last["test"]["top1"]) and ev["loss"] == pytest.approx(last["test"]["loss"])
    run = load_checkpoint(out / "last.pt")
    plain = evaluate(run.model, torch.from_numpy(run.ds.test_x), torch.from_numpy(run.ds.test_y).long(), run.rt,
                     run.ds.mean, run.ds.std, 256)
    assert plain["loss"] != pytest.approx(last["test"]["loss"], rel=1e-4)  # the model's own head scores differently
