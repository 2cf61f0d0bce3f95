"""Pure pseudo-label operations. Shapes: B batch, K classes."""
from __future__ import annotations

import torch
from torch import Tensor


def confidence_mask(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch pseudo-labels. probs (B, K) -> (confidence (B,), label (B,) int64, mask (B,) float)."""
    conf, label = probs.max(dim=-1)
    return conf, label, (conf >= threshold).to(probs.dtype)


def sharpen(probs: Tensor, T: float) -> Tensor:
    """p^(1/T) renormalised (MixMatch). probs (B, K) -> (B, K)."""
    p = probs.pow(1.0 / T)
    return p / p.sum(dim=-1, keepdim=True)
