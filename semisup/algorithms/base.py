"""Building blocks algorithms share: an auxiliary head with an EMA copy. (Hyper-parameter rules are field
metadata: semisup.config.rules.)"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..ema import follow_


class AuxHead(nn.Module):
    """A second linear classifier on the model's features (``head``, trained by an algorithm and optimised
    with the model by the loop, its gradient reaching the shared encoder) with a frozen EMA copy
    (``head_ema``) for inference: the loop evaluates its EMA model, so an algorithm that predicts with its
    own head (ABC, ACR) uses head_ema there. ``follow(step)`` at the start of each step keeps it at the
    loop's decay, one update behind the loop's EMA (immaterial at 0.999). A state module subclasses this
    to add its own buffers."""

    def __init__(self, num_features: int, num_classes: int, decay: float, xavier: bool = False,
                 warmup: str = "recent"):
        super().__init__()
        self.head = nn.Linear(num_features, num_classes)
        if xavier:  # glorot-normal weights, zero bias
            nn.init.xavier_normal_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.head_ema = copy.deepcopy(self.head).requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def follow(self, step: int) -> None:
        follow_(self.head_ema, self.head, step, self.decay, self.warmup)

    def logits(self, feats: Tensor, ema: bool = False) -> Tensor:
        """feats (N, D) -> (N, K) float32 logits of head (ema=False) or head_ema, autocast off as the model's head."""
        with torch.autocast(feats.device.type, enabled=False):
            return (self.head_ema if ema else self.head)(feats.float())
