"""MixMatch / ReMixMatch: the pseudo-label math (sharpen, MixUp, distribution alignment), rotations,
and the algorithms' own behaviour. The registry-wide contract is in test_algorithms.py."""
import pytest
import torch
from helpers import Tiny as _Tiny
from helpers import tiny_batch as _batch
from helpers import tiny_context as _ctx
from helpers import unpack

from semisup.algorithms import ALGORITHMS
from semisup.algorithms.remixmatch import rotate_groups
from semisup.errors import ConfigError
from semisup.pseudo import dist_align, mixup, mixup_lambda, sharpen


def Tiny(c=1, k=3):  # noqa: N802  (the shared tiny model without dropout: these tests compare forward passes)
    return _Tiny(c, k, dropout=0.0)


def test_sharpen_hand_computed():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    # T = 0.5: squares 0.36, 0.09, 0.01 over 0.46
    torch.testing.assert_close(sharpen(p, 0.5), torch.tensor([[0.36, 0.09, 0.01]]) / 0.46)
    torch.testing.assert_close(sharpen(p, 1.0), p)


def test_mixup_lambda_at_least_half():
    torch.manual_seed(0)
    lam = mixup_lambda(10_000, 0.75)
    assert lam.shape == (10_000,) and lam.min() >= 0.5 and lam.max() <= 1.0
    # max(l, 1 - l) with l ~ Beta(.75, .75): mean 0.5 + E|l - .5| is well inside (0.5, 1)
    assert 0.6 < lam.mean().item() < 0.9


def test_mixup_hand_computed():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0], [10.0, 0.0]]).view(3, 2, 1, 1)  # (N, C, H, W)
    y = torch.eye(3)
    lam = torch.tensor([0.5, 0.75, 1.0])
    index = torch.tensor([1, 2, 0])
    xm, ym = mixup(x, y, lam, index)
    torch.testing.assert_close(xm.view(3, 2), torch.tensor([[2.0, 3.5], [0.75 * 3 + 2.5, 3.75], [10.0, 0.0]]))
    torch.testing.assert_close(ym, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.75, 0.25], [0.0, 0.0, 1.0]]))


def test_dist_align_moves_average_toward_prior():
    torch.manual_seed(0)
    prior = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.randn(512, 3) + torch.tensor([0.0, 0.0, 2.0])  # the model over-predicts class 2
    p = torch.softmax(logits, -1)
    p_model = p.mean(0)

    def kl(a):
        return (prior * (prior / a).log()).sum().item()

    q = dist_align(p, prior, p_model)
    torch.testing.assert_close(q.sum(-1), torch.ones(512))
    assert kl(q.mean(0)) < 0.25 * kl(p_model)
    # a model already matching the prior is left alone
    torch.testing.assert_close(dist_align(p, p_model, p_model), p)


def test_rotate_groups_labels_and_rot90():
    x = torch.arange(10 * 2 * 3 * 3, dtype=torch.float32).view(10, 2, 3, 3)
    xr, labels = rotate_groups(x)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    for i, r in enumerate(labels.tolist()):
        ref = x[i]
        for _ in range(r):  # 90 degrees counter-clockwise: transpose, then flip rows
            ref = ref.transpose(1, 2).flip(1)
        torch.testing.assert_close(xr[i], ref)
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    xr, _ = rotate_groups(a)
    assert xr[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]  # 90 degrees counter-clockwise
    assert xr[2, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]  # 180 degrees
    with pytest.raises(ValueError, match="square"):
        rotate_groups(torch.zeros(4, 1, 2, 3))


def test_mixmatch_loss_terms_match_reference_formula():
    """Replay the step with the same global RNG state and check the losses from first principles."""
    alg = ALGORITHMS.get("mixmatch")()
    assert alg.views_u == ("weak", "weak2")
    model = Tiny().eval()  # eval: both forwards see the same BN statistics
    batch = _batch(alg)
    torch.manual_seed(3)
    _, stats = unpack(alg.step(model, batch, None, 1.0))
    torch.manual_seed(3)
    with torch.no_grad():
        u = [batch.x_u["weak"], batch.x_u["weak2"]]
        p = (torch.softmax(model(u[0]).logits, -1) + torch.softmax(model(u[1]).logits, -1)) / 2
        q = p.pow(2) / p.pow(2).sum(-1, keepdim=True)
        x = torch.cat([batch.x_l["weak"], *u])
        t = torch.cat([torch.eye(3)[batch.y_l], q, q])
        lam = mixup_lambda(len(x), 0.75)
        perm = torch.randperm(len(x))
        lx = lam.view(-1, 1, 1, 1)
        logits = model(lx * x + (1 - lx) * x[perm]).logits
        tm = lam.view(-1, 1) * t + (1 - lam.view(-1, 1)) * t[perm]
        ref_x = -(tm[:4] * torch.log_softmax(logits[:4], -1)).sum(-1).mean()
        ref_u = ((torch.softmax(logits[4:], -1) - tm[4:]) ** 2).sum() / (16 * 3)
    torch.testing.assert_close(stats["loss_x"], ref_x)
    torch.testing.assert_close(stats["loss_u"], ref_u)
    assert torch.equal(stats["pseudo_label"], q.argmax(-1)) and stats["mask"].sum() == 8


def test_mixmatch_rampup():
    alg = ALGORITHMS.get("mixmatch")(rampup=0.5)
    model = Tiny().eval()
    batch = _batch(alg)
    for t, w in ((0.0, 0.0), (0.25, 0.5), (0.75, 1.0)):
        torch.manual_seed(0)
        loss, s = unpack(alg.step(model, batch, None, t))
        torch.testing.assert_close(loss, s["loss_x"] + 75.0 * w * s["loss_u"])


def test_mixmatch_dist_align_option():
    """dist_align=True: the averaged guess is aligned to p(y) with the running p~ (from before this batch),
    then sharpened; the batch's unaligned mean guess enters the ring. Off by default (no state)."""
    assert ALGORITHMS.get("mixmatch")().init_state(Tiny(), _ctx()) is None
    alg = ALGORITHMS.get("mixmatch")(dist_align=True, dist_buffer=2)
    model = Tiny().eval()
    state = alg.init_state(model, _ctx((6, 3, 1)))
    state.p_model.copy_(torch.tensor([[0.2, 0.3, 0.5], [0.4, 0.3, 0.3]]))  # p~ = (0.3, 0.3, 0.4)
    batch = _batch(alg)
    _, stats = unpack(alg.step(model, batch, state, 1.0))
    with torch.no_grad():
        p = sum(torch.softmax(model(batch.x_u[v]).logits, -1) for v in ("weak", "weak2")) / 2
    a = p * torch.tensor([0.6, 0.3, 0.1]) / torch.tensor([0.3, 0.3, 0.4])
    a = a / a.sum(-1, keepdim=True)
    q = a.pow(2) / a.pow(2).sum(-1, keepdim=True)
    assert torch.equal(stats["pseudo_label"], q.argmax(-1))
    torch.testing.assert_close(state.p_model, torch.stack([torch.tensor([0.4, 0.3, 0.3]), p.mean(0)]))
    # the aligned guesses put more mass on the labelled head class than the raw ones
    assert (q[:, 0] >= sharpen(p, 0.5)[:, 0] - 1e-6).all()
    with pytest.raises(ConfigError):
        ALGORITHMS.get("mixmatch")(dist_align=True, dist_buffer=0).validate()


def test_remixmatch_views_from_K_and_validation():
    cls = ALGORITHMS.get("remixmatch")
    assert cls().views_u == ("weak", "strong", *(f"strong{k}" for k in range(2, 9)))
    assert cls(K=1).views_u == ("weak", "strong")
    assert cls().views_l == ("strong",)
    for bad in ({"K": 0}, {"T": 0.0}, {"alpha": 0.0}, {"lambda_rot": -1.0}, {"rampup": 2.0}, {"dist_buffer": 0}):
        with pytest.raises(ConfigError):
            cls(**bad).validate()
    with pytest.raises(ConfigError):
        ALGORITHMS.get("mixmatch")(alpha=-1.0).validate()


def test_remixmatch_state_aligns_and_tracks_running_mean():
    torch.manual_seed(0)
    alg = ALGORITHMS.get("remixmatch")(K=2, dist_buffer=4)
    model = Tiny()
    state = alg.init_state(model, _ctx((6, 3, 1)))
    torch.testing.assert_close(state.p_data, torch.tensor([0.6, 0.3, 0.1]))
    torch.testing.assert_close(state.p_tilde(), torch.full((3,), 1 / 3))
    batch = _batch(alg)
    loss, stats = unpack(alg.step(model.eval(), batch, state, 1.0))
    assert set(stats) >= {"loss_x", "loss_u", "loss_u1", "loss_rot", "pseudo_label", "mask"}
    with torch.no_grad():
        p = torch.softmax(model(batch.x_u["weak"]).logits, -1)
    # the newest of the 4 buffered batch means is this batch's mean prediction; the rest still uniform
    torch.testing.assert_close(state.p_model[-1], p.mean(0))
    torch.testing.assert_close(state.p_model[:-1], torch.full((3, 3), 1 / 3))
    # the guess used the old (uniform) p~: aligned toward p_data, then sharpened
    q = dist_align(p, state.p_data, torch.full((3,), 1 / 3))
    assert torch.equal(stats["pseudo_label"], sharpen(q, 0.5).argmax(-1))
    # rotation head is trainable state, the loop optimises it: the rotation loss reaches it
    state.rot_head.zero_grad()
    stats["loss_rot"].backward()
    assert state.rot_head.weight.grad.abs().sum() > 0


def test_remixmatch_without_rotation_skips_the_term():
    torch.manual_seed(0)
    alg = ALGORITHMS.get("remixmatch")(K=1, lambda_rot=0.0)
    model = Tiny()
    state = alg.init_state(model, _ctx())
    loss, stats = unpack(alg.step(model, _batch(alg), state, 1.0))
    assert "loss_rot" not in stats and torch.isfinite(loss)
