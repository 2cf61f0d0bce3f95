"""Pure pseudo-label operations. Shapes: B batch, K classes."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def confidence_mask(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch pseudo-labels. probs (B, K) -> (confidence (B,), label (B,) int64, mask (B,) float)."""
    conf, label = probs.max(dim=-1)
    return conf, label, (conf >= threshold).to(probs.dtype)


def sharpen(probs: Tensor, T: float) -> Tensor:
    """p^(1/T) renormalised (MixMatch). probs (B, K) -> (B, K)."""
    p = probs.pow(1.0 / T)
    return p / p.sum(dim=-1, keepdim=True)


def mixup_lambda(n: int, alpha: float, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """MixMatch's lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), one per sample
    (eq. 8-9; the reference draws one per sample too). Uses torch's global RNG. -> (n,) in [0.5, 1]."""
    a = torch.tensor(float(alpha), device=device)
    lam = torch.distributions.Beta(a, a).sample((n,))  # (n,)
    return torch.maximum(lam, 1 - lam).to(dtype)


def mixup(x: Tensor, y: Tensor, lam: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """MixUp of each sample i with sample index[i]: lam_i * a_i + (1 - lam_i) * a_index[i], for the inputs
    and the (soft) targets alike. x (N, ...), y (N, K), lam (N,), index (N,) int64 -> (x', y')."""
    lx = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (N, 1, ..., 1)
    ly = lam.to(y.dtype).view(-1, 1)  # (N, 1)
    return lx * x + (1 - lx) * x[index], ly * y + (1 - ly) * y[index]


def dist_align(probs: Tensor, p_target: Tensor, p_model: Tensor, eps: float = 1e-6) -> Tensor:
    """ReMixMatch distribution alignment: Normalize(q * p(y) / p~(y)). probs (B, K); p_target (K,) the
    class distribution to match (labelled data); p_model (K,) the running mean of the model's
    predictions on unlabelled data. ``eps`` as the reference ((1e-6 + p) / (1e-6 + p~)). -> (B, K)."""
    q = probs * ((eps + p_target) / (eps + p_model))  # (B, K)
    return q / q.sum(dim=-1, keepdim=True)


class DistAlignState(nn.Module):
    """The running distributions of distribution alignment: p_data (K,) the labelled class distribution,
    p_model (dist_buffer, K) the mean predictions of the last ``dist_buffer`` unlabelled batches (a ring
    initialised to uniform, as ReMixMatch's reference PMovingAverage)."""

    def __init__(self, labelled_counts, dist_buffer: int):
        super().__init__()
        counts = torch.as_tensor(labelled_counts, dtype=torch.float32)
        self.register_buffer("p_data", counts / counts.sum())  # (K,)
        self.register_buffer("p_model", torch.full((dist_buffer, len(counts)), 1.0 / len(counts)))

    def p_tilde(self) -> Tensor:
        v = self.p_model.mean(0)  # (K,)
        return v / v.sum()

    def align(self, probs: Tensor) -> Tensor:
        """dist_align of probs (B, K) toward p_data with the current p~ -> (B, K)."""
        return dist_align(probs, self.p_data, self.p_tilde())

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """Push this batch's mean prediction (probs (U, K)) into the ring of the last batches."""
        self.p_model.copy_(torch.cat([self.p_model[1:], probs.mean(0, keepdim=True).to(self.p_model)]))


def mixup_union(x_l: Tensor, t_l: Tensor, u_views: list, q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """MixMatch / ReMixMatch MixUp over the shuffled union W of the labelled batch and K unlabelled
    views that share the guess q. x_l (B, C, H, W), t_l (B, K_cls) one-hot, u_views K x (U, C, H, W),
    q (U, K_cls) -> mixed inputs (B + K U, C, H, W) and targets (B + K U, K_cls); labelled rows first."""
    x_all = torch.cat([x_l, *u_views])  # (B + K U, C, H, W)
    t_all = torch.cat([t_l, q.repeat(len(u_views), 1)])  # (B + K U, K_cls)
    n = x_all.shape[0]
    lam = mixup_lambda(n, alpha, device=x_all.device)  # (n,)
    return mixup(x_all, t_all, lam, torch.randperm(n, device=x_all.device))



# ---- DASO (Oh et al., CVPR 2022): semantic pseudo-labels from class prototypes ----


def prototype_logits(feats: Tensor, prototypes: Tensor, T: float) -> Tensor:
    """Cosine similarity to each class prototype over a temperature: cos(z_b, C_k) / T, float32.
    feats (B, D), prototypes (K, D) -> (B, K). A zero prototype (empty queue) has similarity 0 with
    every feature, as torch's CosineSimilarity gives it. softmax of this is DASO's similarity classifier q."""
    z = torch.nn.functional.normalize(feats.float(), dim=-1)  # (B, D)
    c = torch.nn.functional.normalize(prototypes.float(), dim=-1)  # (K, D)
    return z @ c.t() / T


def daso_weights(hist: Tensor, T_dist: float) -> Tensor:
    """DASO's distribution-aware blending weights v_k = m_k^(1/T_dist) / max_j m_j^(1/T_dist), m the class
    histogram (K,) of the pseudo-labels (counts or frequencies: the scale cancels) -> (K,) in [0, 1]; the
    most frequent class gets 1. An all-zero histogram (nothing counted yet) gives v = 1 for every class."""
    m = hist.float().clamp(min=0)
    if not bool((m > 0).any()):
        return torch.ones_like(m)
    m = m / m.max()  # scale-free before the power: no overflow for large counts
    w = m.pow(1.0 / T_dist)
    return w / w.max()


def daso_blend(p: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """p' = (1 - v_k) p + v_k q with k = argmax p per row. p (B, K) the linear classifier's probabilities,
    q (B, K) the similarity classifier's, v (K,) from ``daso_weights`` -> (B, K) (rows still sum to 1)."""
    w = v.to(p)[p.argmax(dim=-1)].unsqueeze(1)  # (B, 1)
    return (1 - w) * p + w * q


# ---- ACR (Wei & Gan, CVPR 2023): logit adjustment and the anchor-weighted adjustment strength ----


def logit_adjustment(prior: Tensor, tau, eps: float = 1e-12) -> Tensor:
    """Logit-adjustment offsets log(prior^tau + eps) (Menon et al., ICLR 2021; ACR's reference
    ``compute_adjustment_by_py``, eps 1e-12 as there). prior (K,) a class distribution, tau a float or a
    0-d tensor (0 gives ~0 offsets) -> (K,) float32. Add to logits for the logit-adjusted loss
    CE(l + adj, y); subtract from logits to remove the prior from a prediction, softmax(l - adj)."""
    return torch.log(prior.float() ** tau + eps)


def sym_kl(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Symmetric KL divergence 0.5 KL(p || q) + 0.5 KL(q || p) over the last dim. p, q (..., K)
    distributions (broadcast) -> (...). Terms with p_k = 0 (q_k = 0) count 0, as torch's KLDivLoss; the
    other argument of each log is clamped at ``eps`` so a zero entry gives a large, finite value (the
    ACR reference computes it with KLDivLoss(reduction='sum') and no clamp: inf, then a NaN tau it skips)."""
    p, q = p.float(), q.float()
    kl_pq = (torch.xlogy(p, p) - p * q.clamp_min(eps).log()).sum(-1)
    kl_qp = (torch.xlogy(q, q) - q * p.clamp_min(eps).log()).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def anchor_weights(divergences: Tensor) -> Tensor:
    """ACR's anchor weights softmax(d) over the anchors' divergences d (A,) (symmetric KL of the
    estimated unlabelled class distribution to each anchor) -> (A,), summing to 1. Note the sign, as the
    reference (``KL_softmax = exp(count_KL[0]) / sum exp(count_KL)``): the FARTHEST anchor gets the most
    weight; the anchor the estimate equals (d = 0) the least."""
    return torch.softmax(divergences.float(), dim=-1)


def acr_tau(divergences: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """ACR's adaptive adjustment strength tau = tau_min + (tau_max - tau_min) * w_con, w = anchor_weights(d),
    d (3,) the divergences to the anchors in the order (consistent = labelled prior, uniform, reversed
    prior) -> 0-d tensor. Reference: taumin = 0, taumax = --tau1 = 2 (train.py). An estimate equal to the
    labelled prior gives a tau near tau_min (pseudo-labels keep the labelled prior), one equal to the
    reversed prior a tau near tau_max (the prior removed twice: a reversed one imposed), uniform between."""
    return tau_min + (tau_max - tau_min) * anchor_weights(divergences)[0]
