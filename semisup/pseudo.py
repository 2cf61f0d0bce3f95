"""Pure pseudo-label operations that several algorithms share. Shapes: B batch, K classes.

An operation only one algorithm uses lives beside it (``algorithms/daso_ops.py``, ``algorithms/acr_ops.py``)."""
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
