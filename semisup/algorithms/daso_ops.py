"""DASO's pseudo-label math (Oh et al., CVPR 2022): semantic pseudo-labels from class prototypes, blended
into the linear classifier's by distribution-aware weights. Pure functions; shapes: B batch, K classes,
D features."""
from __future__ import annotations

import torch
from torch import Tensor


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
