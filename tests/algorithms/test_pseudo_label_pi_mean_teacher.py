"""Pseudo-Label, Pi-model and Mean Teacher: ramps, masks, losses against slow references, the EMA teacher."""
import math

import numpy as np
import pytest
import torch
from helpers import unpack
from torch import nn

from semisup.algorithms import ALGORITHMS, Batch, Context
from semisup.errors import ConfigError
from semisup.models import ModelOutput

torch.set_num_threads(1)
K = 3


class Identity(nn.Module):
    """logits = x @ W.T with W = I at start: the test chooses the logits by choosing the inputs."""

    def __init__(self, k=K):
        super().__init__()
        self.num_features = k
        self.head = nn.Linear(k, k, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(k))

    def forward(self, x):
        f = x.flatten(1)
        return ModelOutput(self.head(f), f)


def _ctx():
    return Context(num_classes=K, labelled_counts=np.array([1, 1, 1]), num_features=K, steps=10)


def _batch(x_u: dict, B=2):
    x_l = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[:B]
    return Batch({"weak": x_l}, torch.tensor([0, 1])[:B], x_u)


def _softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- pseudo_label

def test_pseudo_label_alpha_schedule():
    pl = ALGORITHMS.get("pseudo_label")()  # alpha_f 3, t1 0.1, t2 0.6
    assert (pl.alpha_f, pl.t1, pl.t2, pl.threshold) == (3.0, 0.1, 0.6, 0.0)
    assert pl.alpha(0.0) == 0.0 and pl.alpha(0.05) == 0.0 and pl.alpha(0.1) == 0.0
    assert pl.alpha(0.225) == pytest.approx(0.75)  # a quarter of the way from T1 to T2
    assert pl.alpha(0.35) == pytest.approx(1.5)  # halfway: alpha_f / 2
    assert pl.alpha(0.6) == pytest.approx(3.0) and pl.alpha(0.9) == 3.0 and pl.alpha(1.0) == 3.0
    custom = ALGORITHMS.get("pseudo_label")(alpha_f=2.0, t1=0.0, t2=0.5)
    assert custom.alpha(0.25) == pytest.approx(1.0)


def test_pseudo_label_loss_and_threshold_mask():
    x_u = torch.tensor([[4.0, 0.0, 0.0],  # confident (p = 0.96) -> label 0
                        [0.2, 0.0, 0.1],  # unsure -> label 0, masked at threshold 0.9
                        [0.0, 0.0, 5.0],  # confident -> label 2
                        [0.0, 0.3, 0.0]])  # unsure -> label 1, masked
    batch = _batch({"weak": x_u})
    ref_ce = [-math.log(_softmax_row(r)[max(range(K), key=r.__getitem__)]) for r in x_u.tolist()]
    for threshold, keep in ((0.0, [1, 1, 1, 1]), (0.9, [1, 0, 1, 0])):
        pl = ALGORITHMS.get("pseudo_label")(threshold=threshold)
        loss, s = unpack(pl.step(Identity(), batch, None, 0.35))
        assert s["pseudo_label"].tolist() == [0, 0, 2, 1]
        assert s["mask"].tolist() == keep and s["mask"].dtype == torch.float32
        ref_u = sum(c * m for c, m in zip(ref_ce, keep)) / 4  # masked mean over the whole batch
        assert s["loss_u"].item() == pytest.approx(ref_u, rel=1e-5)
        assert loss.item() == pytest.approx(s["loss_x"].item() + 1.5 * ref_u, rel=1e-5)
    loss0, s0 = unpack(ALGORITHMS.get("pseudo_label")().step(Identity(), batch, None, 0.0))  # before T1: CE only
    assert loss0.item() == pytest.approx(s0["loss_x"].item())


def test_pseudo_label_target_is_detached():
    """The gradient of the unlabelled CE is softmax - onehot(argmax): the target itself gets no gradient."""
    x_u = torch.tensor([[1.0, 0.5, -1.0]], requires_grad=True)
    _, s = unpack(ALGORITHMS.get("pseudo_label")().step(Identity(), _batch({"weak": x_u}), None, 1.0))
    s["loss_u"].backward()
    p = torch.tensor(_softmax_row([1.0, 0.5, -1.0]))
    assert torch.allclose(x_u.grad[0], p - torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)


def test_pseudo_label_dist_align_option():
    """dist_align=True: the probabilities are aligned to p(y) with the running p~ (from before this batch),
    then the argmax and the threshold apply to the aligned ones; the batch's raw mean enters the ring. A
    class that p~ under-predicts wins an image it nearly won. Off by default (no state)."""
    assert ALGORITHMS.get("pseudo_label")().init_state(Identity(), _ctx()) is None
    pl = ALGORITHMS.get("pseudo_label")(dist_align=True, dist_buffer=2, threshold=0.6)
    state = pl.init_state(Identity(), _ctx())
    state.p_model.copy_(torch.tensor([[0.7, 0.1, 0.2], [0.5, 0.1, 0.4]]))  # p~ = (0.6, 0.1, 0.3)
    x_u = torch.tensor([[1.0, 0.6, 0.0],  # raw: class 0 at p 0.51 (< 0.6); aligned: class 1 at 0.66
                        [0.0, 0.0, 3.0]])  # class 2 either way
    _, s = unpack(pl.step(Identity(), _batch({"weak": x_u}), state, 1.0))
    p = torch.softmax(x_u, -1)
    a = p * (1 / 3) / torch.tensor([0.6, 0.1, 0.3])
    a = a / a.sum(-1, keepdim=True)
    assert p.argmax(-1).tolist() == [0, 2] and s["pseudo_label"].tolist() == [1, 2] == a.argmax(-1).tolist()
    assert p.max(-1).values[0] < 0.6 and s["mask"].tolist() == [1.0, 1.0]  # the threshold sees the aligned p
    torch.testing.assert_close(state.p_model, torch.stack([torch.tensor([0.5, 0.1, 0.4]), p.mean(0)]))
    with pytest.raises(ConfigError):
        ALGORITHMS.get("pseudo_label")(dist_align=True, dist_buffer=0).validate()


class Dropped(Identity):
    """Identity logits, then a dropout that zeroes class 0's logit in train mode (scaled x2 otherwise)."""

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            out = ModelOutput(out.logits * torch.tensor([0.0, 2.0, 2.0]), out.features)
        return out


def test_pseudo_label_from_an_eval_pass_has_no_dropout_and_the_loss_uses_the_train_pass():
    """label_from=eval (the seed's code): labels from model.eval() under no_grad, loss on the train-mode
    forward; same_pass (the default) takes them from the train-mode logits themselves."""
    x_u = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    model = Dropped().train()
    _, s_eval = unpack(ALGORITHMS.get("pseudo_label")(label_from="eval").step(model, _batch({"weak": x_u}), None, 1.0))
    assert model.training and s_eval["pseudo_label"].tolist() == [0, 1]  # eval-mode argmax; mode restored
    _, s_same = unpack(ALGORITHMS.get("pseudo_label")().step(model, _batch({"weak": x_u}), None, 1.0))
    assert s_same["pseudo_label"].tolist() == [1, 1]  # the train pass: class 0 dropped
    # the loss is the train-mode cross-entropy toward the eval labels
    logits_u = model(x_u).logits
    want = torch.nn.functional.cross_entropy(logits_u, torch.tensor([0, 1]))
    assert s_eval["loss_u"].item() == pytest.approx(want.item(), rel=1e-6)


def test_pseudo_label_ramp_in_steps():
    pl = ALGORITHMS.get("pseudo_label")(t1=100, t2=700, ramp_unit="steps")
    pl.validate()
    assert pl.alpha(0.9, step=100) == 0.0 and pl.alpha(0.0, step=400) == pytest.approx(1.5)
    assert pl.alpha(0.0, step=700) == 3.0
    with pytest.raises(ConfigError, match="t1"):
        ALGORITHMS.get("pseudo_label")(t1=100, t2=700).validate()  # fractions of the run by default
    with pytest.raises(ConfigError, match="label_from"):
        ALGORITHMS.get("pseudo_label")(label_from="nope").validate()


def test_pl_seed_preset_and_the_data_caps():
    """mnist_pl_seed: 1000 labelled, 19,000 unlabelled (a seeded subset), a seeded 5,000-image test subset."""
    from semisup import config as C
    from semisup.data.splits import make_split

    cfg = C.resolve("mnist_pl_seed")
    assert (cfg.data.labels_per_class, cfg.data.max_unlabelled, cfg.data.test_subset) == (100, 19000, 5000)
    assert cfg.algorithm.label_from == "eval" and cfg.algorithm.ramp_unit == "steps" and cfg.optim.lr == 0.1
    assert cfg.optim.momentum == 0 and not cfg.optim.nesterov  # the seed's plain SGD
    targets = np.arange(60000) % 10
    a = make_split(targets, 10, cfg.data, seed=3)
    b = make_split(targets, 10, cfg.data, seed=3)
    assert len(a.labelled) == 1000 and len(a.unlabelled) == 19000 and np.array_equal(a.unlabelled, b.unlabelled)
    assert not set(a.labelled) & set(a.unlabelled)
    uncapped = make_split(targets, 10, C.replace(cfg, data={"max_unlabelled": 0}).data, seed=3)
    assert np.array_equal(uncapped.labelled, a.labelled) and set(a.unlabelled) <= set(uncapped.unlabelled)


def test_test_subset_is_seeded_and_semisup_eval_scores_the_same_images(tmp_path):
    from helpers import tiny_overrides

    from semisup import config as C
    from semisup.evaluate import evaluate_checkpoint
    from semisup.loop.setup import prepare_data
    from semisup.train import train

    cfg = C.resolve(overrides=tiny_overrides(tmp_path / "r", steps=4, **{"data.test_subset": 100}))
    ds, _ = prepare_data(cfg)
    ds2, _ = prepare_data(cfg)
    assert len(ds.test_y) == 100 and np.array_equal(ds.test_x, ds2.test_x)
    res = train(cfg)
    assert sum(map(sum, res.final["test"]["confusion"])) == 100
    assert evaluate_checkpoint(str(tmp_path / "r"))["top1"] == pytest.approx(res.best["score"])


# ---------------------------------------------------------------- pi_model

def test_pi_model_loss_matches_slow_mse_and_both_branches_get_gradient():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, K, generator=g).requires_grad_()
    z2 = torch.randn(5, K, generator=g).requires_grad_()
    pi = ALGORITHMS.get("pi_model")()
    loss, s = unpack(pi.step(Identity(), _batch({"weak": z1, "weak2": z2}), None, 1.0))
    ref = 0.0
    for a, b in zip(z1.tolist(), z2.tolist()):
        pa, pb = _softmax_row(a), _softmax_row(b)
        ref += sum((x - y) ** 2 for x, y in zip(pa, pb))
    ref /= 5 * K  # mean over samples and classes
    assert s["loss_u"].item() == pytest.approx(ref, rel=1e-5)
    assert loss.item() == pytest.approx(s["loss_x"].item() + 100.0 * ref, rel=1e-5)
    assert s["pseudo_label"].tolist() == z1.argmax(1).tolist() and s["mask"].tolist() == [1.0] * 5
    s["loss_u"].backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0  # the paper: no stop-gradient on either side


@pytest.mark.parametrize("name,w", [("pi_model", 100.0), ("mean_teacher", 100.0)])
def test_sigmoid_rampup_weights(name, w):
    alg = ALGORITHMS.get(name)()
    r = alg.rampup
    assert r == pytest.approx(80 / 300)  # both papers: 80 of 300 epochs / 40k of 150k steps
    assert alg.weight(0.0) == pytest.approx(w * math.exp(-5.0))
    assert alg.weight(r / 2) == pytest.approx(w * math.exp(-5.0 * 0.25))
    assert alg.weight(r) == w and alg.weight(1.0) == w
    assert ALGORITHMS.get(name)(rampup=0.0).weight(0.0) == w


# ---------------------------------------------------------------- mean_teacher

def _mt_batch(seed=0, U=4):
    g = torch.Generator().manual_seed(seed)
    return _batch({"weak": torch.randn(U, K, generator=g), "weak2": torch.randn(U, K, generator=g)})


def test_mean_teacher_ema_update_equation():
    mt = ALGORITHMS.get("mean_teacher")(decay=0.9)
    student = Identity()
    state = mt.init_state(student, _ctx())
    assert int(state.updates) == 0 and not any(p.requires_grad for p in state.teacher.parameters())
    w = state.teacher.head.weight
    with torch.no_grad():
        student.head.weight.fill_(2.0)
    mt.step(student, _mt_batch(), state, 0.0)  # n = 0: a = min(1 - 1/1, 0.9) = 0 -> teacher = student
    assert torch.allclose(w, torch.full((K, K), 2.0)) and int(state.updates) == 1
    with torch.no_grad():
        student.head.weight.fill_(4.0)
    mt.step(student, _mt_batch(), state, 0.0)  # n = 1: a = 0.5 -> 0.5 * 2 + 0.5 * 4
    assert torch.allclose(w, torch.full((K, K), 3.0)) and int(state.updates) == 2
    with torch.no_grad():
        student.head.weight.fill_(6.0)
    mt.step(student, _mt_batch(), state, 0.0)  # n = 2: a = 2/3 -> true average of 2, 4, 6
    assert torch.allclose(w, torch.full((K, K), 4.0))
    state.updates.fill_(100)  # far past the warm-up: a = decay
    with torch.no_grad():
        student.head.weight.fill_(14.0)
    mt.step(student, _mt_batch(), state, 0.0)
    assert torch.allclose(w, torch.full((K, K), 0.9 * 4.0 + 0.1 * 14.0))
    assert state.decay_at(0.999) == pytest.approx(1 - 1 / 102)  # warm-up still below 0.999 at n = 101


def test_mean_teacher_decay_during_rampup_then_decay():
    """decay_rampup (the TensorFlow code's ema_decay_during_rampup) caps the teacher's decay while the
    consistency weight ramps up, ``decay`` from the end of the ramp-up on; 0 (the default) = decay throughout."""
    mt = ALGORITHMS.get("mean_teacher")(decay=0.999, decay_rampup=0.99, rampup=0.4)
    assert [mt.decay_now(t) for t in (0.0, 0.39, 0.4, 1.0)] == [0.99, 0.99, 0.999, 0.999]
    assert {ALGORITHMS.get("mean_teacher")(decay=0.999).decay_now(t) for t in (0.0, 0.5, 1.0)} == {0.999}
    student = Identity()
    state = mt.init_state(student, _ctx())
    w = state.teacher.head.weight
    state.updates.fill_(10_000)  # past the 1 - 1/(n+1) warm-up: a = the cap
    for progress, a in ((0.1, 0.99), (0.9, 0.999)):
        before = w.clone()
        with torch.no_grad():
            student.head.weight.copy_(before + 1.0)
        mt.step(student, _mt_batch(), state, progress)
        assert torch.allclose(w, a * before + (1 - a) * (before + 1.0))
    with pytest.raises(ConfigError, match="decay_rampup"):
        ALGORITHMS.get("mean_teacher")(decay_rampup=1.0).validate()


def test_mean_teacher_gradient_reaches_student_not_teacher():
    torch.manual_seed(0)
    mt = ALGORITHMS.get("mean_teacher")()
    student = Identity()
    state = mt.init_state(student, _ctx())
    with torch.no_grad():
        student.head.weight.add_(0.3 * torch.randn(K, K))  # student != teacher
    loss, s = unpack(mt.step(student, _mt_batch(), state, 1.0))
    s["loss_u"].backward(retain_graph=True)
    assert student.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in state.teacher.parameters())
    # loss_u equals the slow MSE against the teacher's distribution on "weak2"
    batch = _mt_batch()
    with torch.no_grad():
        ps = torch.softmax(student(batch.x_u["weak"]).logits, 1)
        pt = torch.softmax(state.teacher(batch.x_u["weak2"]).logits, 1)
    assert s["loss_u"].item() == pytest.approx(((ps - pt) ** 2).mean().item(), rel=1e-5)
    assert s["pseudo_label"].tolist() == pt.argmax(1).tolist()


def test_mean_teacher_teacher_follows_student_mode():
    mt = ALGORITHMS.get("mean_teacher")()
    student = Identity()
    state = mt.init_state(student, _ctx())
    student.eval()
    mt.step(student, _mt_batch(), state, 0.5)
    assert not state.teacher.training
    student.train()
    mt.step(student, _mt_batch(), state, 0.5)
    assert state.teacher.training


def test_mean_teacher_state_round_trip_resumes_identically():
    torch.manual_seed(0)
    mt = ALGORITHMS.get("mean_teacher")(decay=0.9)
    student = Identity()
    state = mt.init_state(student, _ctx())
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for k in range(3):
        loss, _ = unpack(mt.step(student, _mt_batch(seed=k), state, k / 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sd = state.state_dict()
    assert set(sd) == {"teacher.head.weight", "updates"} and int(sd["updates"]) == 3
    clone = mt.init_state(Identity(), _ctx())
    clone.load_state_dict(sd)
    assert int(clone.updates) == 3 and torch.equal(clone.teacher.head.weight, state.teacher.head.weight)
    # the next step from the restored state gives the same loss and the same teacher
    student2 = Identity()
    student2.load_state_dict(student.state_dict())
    la, _ = unpack(mt.step(student, _mt_batch(seed=9), state, 1.0))
    lb, _ = unpack(mt.step(student2, _mt_batch(seed=9), clone, 1.0))
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    assert torch.equal(clone.teacher.head.weight, state.teacher.head.weight) and int(clone.updates) == 4


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("name,kwargs", [
    ("pseudo_label", {"alpha_f": -1.0}), ("pseudo_label", {"t1": 0.7, "t2": 0.6}),
    ("pseudo_label", {"t2": 1.5}), ("pseudo_label", {"threshold": 1.2}),
    ("pi_model", {"w_max": -1.0}), ("pi_model", {"rampup": 1.5}),
    ("mean_teacher", {"decay": 1.0}), ("mean_teacher", {"lambda_u": -1.0}), ("mean_teacher", {"rampup": -0.1}),
])
def test_out_of_range_values_raise(name, kwargs):
    with pytest.raises(ConfigError):
        ALGORITHMS.get(name)(**kwargs).validate()
    ALGORITHMS.get(name)().validate()  # defaults are valid
