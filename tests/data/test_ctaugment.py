"""CTAugment: learning of bin weights, thresholded sampling, determinism, checkpointing, op shapes."""
import pytest
import torch

from semisup.data.ctaugment import OP_NAMES, CTAugment, apply_ops


def _images(B=16, C=3, H=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, C, H, H), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("C", [1, 3])
def test_every_op_keeps_shape_and_dtype(C):
    x = _images(C=C, B=len(OP_NAMES) * 3)
    n = len(OP_NAMES)
    ops = torch.arange(n).repeat(3).view(-1, 1)  # each op three times, at levels 0, 0.5, 1
    levels = torch.tensor([0.0] * n + [0.5] * n + [1.0] * n).view(-1, 1)
    out = apply_ops(x, ops, levels, torch.full((3 * n, 1, 2), 0.5))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[OP_NAMES.index("identity")], x[OP_NAMES.index("identity")])
    i = 2 * n + OP_NAMES.index("invert")  # full-strength invert
    assert torch.equal(out[i], 255 - x[i])
    i = OP_NAMES.index("invert")  # level 0: blend weight 0 -> unchanged
    assert torch.equal(out[i], x[i])


def test_sampling_never_picks_bins_below_threshold():
    cta = CTAugment()
    g = torch.Generator().manual_seed(0)
    w = torch.rand(len(OP_NAMES), 17, generator=g)
    cta.weights.copy_(w)
    p = w + 0.01
    allowed = p / p.amax(1, keepdim=True) >= 0.8  # (ops, bins)
    assert not allowed.all() and allowed.any(1).all()
    probs = cta.bin_probs()
    assert torch.all(probs[~allowed] == 0) and torch.allclose(probs.sum(1), torch.ones(len(OP_NAMES)))
    ops, bins, levels, _ = cta._draw(20_000, torch.Generator().manual_seed(1), learnt=True)
    assert allowed[ops, bins].all()
    assert torch.equal((levels * 17).long(), bins)  # the magnitude lies inside its bin
    # every allowed bin of a frequently drawn op does get used
    used = torch.zeros_like(allowed)
    used[ops.flatten(), bins.flatten()] = True
    assert torch.equal(used, allowed)


def test_weights_rise_for_safe_ops_and_fall_for_a_harmful_one():
    """A simulated model is right unless op X was applied; probes with uniform policies teach CTA that."""
    torch.manual_seed(0)
    cta = CTAugment(decay=0.9)
    cta.weights.fill_(0.5)
    bad = OP_NAMES.index("invert")
    g = torch.Generator().manual_seed(0)
    x = _images(B=64, H=8)
    for _ in range(60):
        labels = torch.randint(0, 4, (64,), generator=g)
        _, policy = cta.probe(x, g)
        hit = (policy[..., 0] == bad).any(1)  # (B,)
        probs = torch.eye(4)[torch.where(hit, (labels + 1) % 4, labels)]  # confidently wrong under X
        cta.update(policy, probs, labels)
    w = cta.weights
    others = torch.cat([w[:bad], w[bad + 1:]])
    assert w[bad].max() < 0.2 and others.mean() > 0.7 and others.min() > w[bad].max()


def test_update_is_sequential_equivalent():
    cta = CTAugment(num_bins=3, decay=0.7)
    g = torch.Generator().manual_seed(0)
    cta.weights.copy_(torch.rand(cta.weights.shape, generator=g))
    ref = cta.weights.clone().double()
    policy = torch.tensor([[[0, 1], [0, 1]], [[2, 0], [0, 1]], [[0, 2], [2, 0]]])  # (B=3, depth=2, 2)
    probs = torch.softmax(torch.randn(3, 5, generator=g), -1)
    labels = torch.tensor([0, 3, 1])
    for b in range(3):  # the reference: for each sample, for each op of its policy
        omega = 1 - 0.5 * (probs[b].double() - torch.eye(5, dtype=torch.float64)[labels[b]]).abs().sum()
        for op, bin_ in policy[b].tolist():
            ref[op, bin_] = 0.7 * ref[op, bin_] + 0.3 * omega
    cta.update(policy, probs, labels)
    torch.testing.assert_close(cta.weights, ref.float())


def test_determinism_by_generator_and_state_dict_round_trip():
    cta = CTAugment()
    cta.weights.copy_(torch.rand(cta.weights.shape, generator=torch.Generator().manual_seed(5)))
    x = _images()
    a = cta(x, torch.Generator().manual_seed(7))
    b = cta(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.dtype == torch.uint8
    pa, pol_a = cta.probe(x, torch.Generator().manual_seed(8))
    pb, pol_b = cta.probe(x, torch.Generator().manual_seed(8))
    assert torch.equal(pa, pb) and torch.equal(pol_a, pol_b)
    assert pol_a.shape == (16, 2, 2) and pol_a.dtype == torch.int64
    assert not torch.equal(cta(x, torch.Generator().manual_seed(9)), a)

    clone = CTAugment()
    clone.load_state_dict(cta.state_dict())
    assert torch.equal(clone.weights, cta.weights)
    assert torch.equal(clone(x, torch.Generator().manual_seed(7)), a)


def test_probe_policy_records_the_applied_magnitude_bin():
    """On black images, invert at level l gives trunc(255 l): the recorded bin must hold l."""
    cta = CTAugment(depth=1)
    x = torch.zeros(400, 1, 6, 6, dtype=torch.uint8)
    out, policy = cta.probe(x, torch.Generator().manual_seed(3))
    ident = policy[:, 0, 0] == OP_NAMES.index("identity")
    assert ident.any() and torch.equal(out[ident], x[ident])
    inv = policy[:, 0, 0] == OP_NAMES.index("invert")
    assert inv.sum() >= 5
    level = out[inv, 0, 0, 0].float() / 255  # (n,)
    b = policy[inv, 0, 1].float()
    assert ((level >= b / 17 - 1 / 255) & (level <= (b + 1) / 17)).all()
