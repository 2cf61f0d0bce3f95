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
