"""Pure loss functions. Shapes: B batch, K classes. Each is checked against a slow reference in tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ce(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy with hard targets. logits (B, K), target (B,) int64."""
    return F.cross_entropy(logits.float(), target, reduction=reduction)


def soft_ce(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy H(target, softmax(logits)) with soft targets. logits (B, K), target (B, K)."""
    loss = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)  # (B,)
    return loss.mean() if reduction == "mean" else loss


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values * mask over the whole batch (FixMatch: the denominator is B, not sum(mask))."""
    return (values * mask).mean()


def softmax_mse(logits_a: Tensor, logits_b: Tensor, reduction: str = "mean") -> Tensor:
    """Squared distance between class probabilities, averaged over the K classes (Temporal Ensembling /
    Mean Teacher's scale). logits_a, logits_b (B, K) -> (B,) with reduction="none", else the scalar mean.
    Gradient flows into both arguments; detach one at the call site to make it a fixed target."""
    d = torch.softmax(logits_a.float(), dim=-1) - torch.softmax(logits_b.float(), dim=-1)  # (B, K)
    loss = d.pow(2).mean(-1)  # (B,)
    return loss.mean() if reduction == "mean" else loss


# ---- class-imbalance family for the unlabelled term: per-sample losses (B,), the caller masks ----


ALPHAS = ("reference", "inverse")


def class_weights(labelled_counts, alpha_from: str = "inverse") -> tuple[Tensor, Tensor]:
    """Per-class weights from the labelled counts N (K,) -> (alpha (K,), w (K,)), float32.

    alpha_from="inverse": alpha_k = N_min / N_k (1 for the rarest class, N_min / N_max for the most
    frequent one). alpha_from="reference": the ARL reference code's alpha (train.py: its per-class ratio
    vector N_k / N_0 in reversed class order), stated for any class order: the class with the r-th largest
    count (r = 0, 1, ...) gets the ratio of the class with the (K - 1 - r)-th largest to the largest count
    (ties kept in class order). For a long tail sorted head first (classes 0-based) that is
    alpha_k = N_{K-1-k} / N_0: at gamma 100 with a head of 1000, class 8 gets N_1 / N_0 = 599 / 1000 = 0.599
    where N_min / N_8 = 10 / 16 = 0.625.
    w = alpha / mean(alpha) in both (mean 1, so a balanced set gives w = 1 and the loss keeps CE's scale).
    Every class needs at least one label (alpha would be infinite)."""
    n = torch.as_tensor(labelled_counts, dtype=torch.float64).flatten()
    if n.numel() == 0 or bool((n <= 0).any()):
        raise ValueError(f"class_weights needs a positive labelled count for every class, got {n.tolist()}")
    if alpha_from == "inverse":
        alpha = n.min() / n
    elif alpha_from == "reference":
        order = torch.argsort(-n, stable=True)  # classes by count, largest first
        ratio = n[order] / n.max()  # (K,) descending
        alpha = torch.empty_like(n)
        alpha[order] = ratio.flip(0)
    else:
        raise ValueError(f"unknown alpha_from {alpha_from!r}: one of {', '.join(ALPHAS)}")
    w = alpha / alpha.mean()
    return alpha.float(), w.float()


def _f32(x: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 logits under autocast are promoted; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _log_p_and_log_1m_p(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """log p_y and log(1 - p_y), both (B,), in float32. log(1 - p_y) is the log-sum-exp of the other
    classes' log-probabilities, so it stays finite (and its gradient defined) when p_y rounds to 1."""
    logp = F.log_softmax(_f32(logits), dim=-1)  # (B, K)
    log_py = logp.gather(1, target[:, None]).squeeze(1)  # (B,)
    others = logp.scatter(1, target[:, None], float("-inf"))  # (B, K), the target class removed
    return log_py, torch.logsumexp(others, dim=-1)


def bce(logits: Tensor, target: Tensor, w: Tensor) -> Tensor:
    """Class-balanced cross-entropy, per sample: w[y] * CE. logits (B, K), target (B,) int64,
    w (K,) (``class_weights(...)[1]``) -> (B,) float32 (float64 for float64 logits)."""
    x = _f32(logits)
    return w.to(x)[target] * F.cross_entropy(x, target, reduction="none")


def focal(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017) without class weights, per sample: (1 - p_y)^gamma * (-log p_y).
    logits (B, K), target (B,) int64 -> (B,) float32 (float64 for float64 logits). gamma = 0 is plain CE."""
    log_py, log_1m = _log_p_and_log_1m_p(logits, target)
    return torch.exp(gamma * log_1m) * (-log_py)


def arl(logits: Tensor, target: Tensor, alpha: Tensor, w: Tensor, detach_exponent: bool = False,
        gamma_scale: float = 1.0) -> Tensor:
    """Adaptive Regularization Loss, per sample:

        w_y * (1 - p_y) ^ (gamma_scale * (p_y + alpha_y)) * (-log p_y),   p = softmax(logits)

    logits (B, K) are the logits being trained (FixMatch: the strong view), target (B,) int64 (the
    pseudo-labels), alpha and w (K,) from ``class_weights`` -> (B,) float32 (float64 for float64
    logits). A focal loss whose exponent adapts per sample: the modulating factor shrinks more for
    confident samples (large p_y) and rare classes (alpha near 1), less for frequent classes (alpha
    near N_min / N_max); w_y then re-balances the classes.

    The reference code (BAE-JEEON/Adaptive-Regularization-Loss, regularization_loss.py) computes
    NLLLoss(weight=alpha / mean(alpha), reduction='none') * (1 - p_y) ^ (p_y + alpha_y) with p_y not
    detached: the gradient flows through the exponent too (detach_exponent=False, the default; True
    treats p_y there as a constant, like a focal loss's modulating factor: same value, a gradient up to
    ~5 % different). Its alpha is ``class_weights(..., "reference")``. gamma_scale multiplies the exponent:
    the paper's gamma = 2 column is gamma_scale=2 (the code has gamma = 1 only). See the FixMatch card for
    which settings give each column of the paper's table.
    """
    log_py, log_1m = _log_p_and_log_1m_p(logits, target)
    p_exp = log_py.exp()
    if detach_exponent:
        p_exp = p_exp.detach()
    exponent = gamma_scale * (p_exp + alpha.to(log_py)[target])  # (B,)
    return w.to(log_py)[target] * torch.exp(exponent * log_1m) * (-log_py)


# ---- contrastive / embedding-quality terms (SimCLR pretraining) ----


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) over the 2N views. z1, z2 (N, D): two views of the
    same N images; each is L2-normalised here. Anchor i's positive is the other view of image i, the
    2N - 2 other views are its negatives; the loss is the mean over all 2N anchors. The similarity is
    computed in (at least) float32 with autocast off: a bf16 matmul of unit vectors (8 mantissa bits) divided by
    a temperature of 0.1-0.5 would quantise the logits to steps of ~0.02-0.08."""
    if z1.shape != z2.shape or z1.ndim != 2 or len(z1) == 0:
        raise ValueError(f"nt_xent needs two (N, D) views with N >= 1, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = len(z1)
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(_f32(torch.cat([z1, z2])), dim=1)  # (2N, D)
        sim = (z @ z.T) / temperature  # (2N, 2N)
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        sim = sim.masked_fill(self_mask, float("-inf"))  # an anchor is never its own negative
        target = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # (2N,) index of the other view
        return F.cross_entropy(sim, target)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Wang & Isola 2020, eq. 4: mean over positive pairs of ||f(x) - f(y)||_2^alpha, on L2-normalised
    features (normalised here, in at least float32). z1, z2 (N, D) -> scalar; 0 = views map to the same point."""
    with torch.autocast(z1.device.type, enabled=False):
        a, b = F.normalize(_f32(z1), dim=1), F.normalize(_f32(z2), dim=1)  # (N, D)
        return (a - b).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola 2020, eq. 5: log of the mean over pairs i < j of exp(-t ||f(x_i) - f(x_j)||^2), on
    L2-normalised features. z (N, D), N >= 2 -> scalar <= 0; lower = spread more uniformly on the sphere.
    Computed as a log-sum-exp so that well-spread features do not underflow to log(0)."""
    if len(z) < 2:
        raise ValueError(f"uniformity needs at least 2 points, got {len(z)}")
    with torch.autocast(z.device.type, enabled=False):
        sq = torch.pdist(F.normalize(_f32(z), dim=1)).pow(2)  # (N (N - 1) / 2,)
        return torch.logsumexp(-t * sq, dim=0) - torch.log(sq.new_tensor(float(len(sq))))
