"""Registry-wide contract tests: every algorithm gets them for free when it registers."""
import dataclasses

import pytest
import torch
from helpers import Tiny, unpack
from helpers import tiny_batch as _batch
from helpers import tiny_context as _ctx

from semisup.algorithms import ALGORITHMS
from semisup.algorithms.contract import Algorithm, StepOutput, own_predict

# Settings that switch every unlabelled term on for a random tiny model (thresholds off, ramps done).
ACTIVE = {"threshold": 0.0}


def _alg(name, active=True):
    cls = ALGORITHMS.get(name)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in ACTIVE.items() if k in names}) if active else cls()


@pytest.fixture(params=ALGORITHMS.names())
def name(request):
    return request.param


def test_satisfies_the_contract_and_returns_a_step_output(name):
    """The Protocol is the contract: name, mu, views, validate, init_state, step (predict optional);
    step gives a StepOutput whose terms are scalars and whose labels have one entry per unlabelled image."""
    torch.manual_seed(0)
    model, alg = Tiny(), _alg(name, active=False)
    assert isinstance(alg, Algorithm) and alg.name == name and isinstance(alg.mu, int) and alg.mu >= 0
    assert all(isinstance(v, str) for v in (*alg.views_l, *alg.views_u))
    alg.validate()
    out = alg.step(model, _batch(alg), alg.init_state(model, _ctx()), 0.5)
    assert isinstance(out, StepOutput) and all(v.ndim == 0 for v in out.terms.values())
    assert (out.pseudo_label is not None) == bool(alg.views_u) and (out.mask is None) == (out.pseudo_label is None)
    assert all(v.shape == (8,) for v in out.other_labels.values())
    assert own_predict(alg) == (name in ("abc", "acr"))


def test_loss_finite_and_stats_shape(name):
    torch.manual_seed(0)
    model, alg = Tiny(), _alg(name, active=False)
    state = alg.init_state(model, _ctx())
    loss, stats = unpack(alg.step(model, _batch(alg), state, 0.5))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert "loss_x" in stats and all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
    if alg.views_u:
        assert stats["pseudo_label"].shape == (8,) and stats["mask"].shape == (8,)


def test_unlabelled_term_alone_gives_gradient(name):
    """The check that would have caught USB's Mean Teacher bug (consistency loss on a detached tensor)."""
    alg = _alg(name)
    if not alg.views_u:
        pytest.skip("no unlabelled term")
    torch.manual_seed(0)
    model = Tiny()
    state = alg.init_state(model, _ctx())
    _, stats = unpack(alg.step(model, _batch(alg), state, 1.0))
    unl = [k for k in stats if k.startswith("loss_") and k != "loss_x"]
    assert unl, "an SSL algorithm must report its unlabelled loss terms"
    for k in unl:
        model.zero_grad()
        stats[k].backward(retain_graph=True)
        grads = [p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, f"{name}: {k} gives the student no gradient"


def test_state_round_trips_and_two_steps_train(name):
    torch.manual_seed(0)
    model, alg = Tiny(), _alg(name)
    state = alg.init_state(model, _ctx())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(2):
        loss, _ = unpack(alg.step(model, _batch(alg, step=step, seed=step), state, step / 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    if state is not None:
        clone = alg.init_state(Tiny(), _ctx())
        clone.load_state_dict(state.state_dict())
        for (k, a), (_, b) in zip(state.state_dict().items(), clone.state_dict().items()):
            assert torch.equal(a, b), k


def test_supervised_ignores_unlabelled_and_fixmatch_masks():
    torch.manual_seed(0)
    model = Tiny().eval()
    fm = ALGORITHMS.get("fixmatch")(threshold=1.0)
    batch = _batch(fm)
    loss, stats = unpack(fm.step(model, batch, None, 0.0))
    assert stats["mask"].sum() == 0 and stats["loss_u"].item() == 0.0  # nothing is that confident
    assert loss.item() == pytest.approx(stats["loss_x"].item())
    fm0 = ALGORITHMS.get("fixmatch")(threshold=0.0)
    _, s0 = unpack(fm0.step(model, batch, None, 0.0))
    logits = model(torch.cat([batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]])).logits
    pl = logits[4:12].argmax(1)
    ref = torch.nn.functional.cross_entropy(logits[12:], pl)
    assert s0["loss_u"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.equal(s0["pseudo_label"], pl)
