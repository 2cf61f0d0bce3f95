"""What the loop hands an algorithm: a batch of views and the run's fixed context."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..ema import follow_
from ..errors import ConfigError

# Ranges for check_ranges: (predicate, what the message says the value must be)
POSITIVE = (lambda v: v > 0, "> 0")
NONNEG = (lambda v: v >= 0, ">= 0")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
UNIT = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
UNIT_OPEN = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def check_ranges(alg, **rules) -> None:
    """An algorithm's validate(): field=(predicate, text) for each hyper-parameter; the first value out of
    range raises ConfigError 'algorithm.FIELD=VALUE is out of range: must be TEXT'."""
    for k, (ok, text) in rules.items():
        v = getattr(alg, k)
        if not ok(v):
            raise ConfigError(f"algorithm.{k}={v} is out of range: must be {text}")


@dataclass
class Batch:
    x_l: dict[str, Tensor]  # labelled views: name -> float (B, C, H, W)
    y_l: Tensor  # (B,) int64
    x_u: dict[str, Tensor] = field(default_factory=dict)  # unlabelled views: name -> float (U, C, H, W)
    step: int = 0  # global optimisation step (for algorithms that refresh something every N steps)


@dataclass(frozen=True)
class Context:
    """Facts about the run an algorithm may use when it builds its state."""

    num_classes: int
    labelled_counts: np.ndarray  # (K,) labelled images per class
    num_features: int  # the model's feature dimension
    steps: int  # total optimisation steps
    device: object | None = None
    ema: float = 0.999  # the loop's EMA decay (optim.ema) for evaluation; 0 = no EMA, evaluation uses the model
    ema_warmup: str = "recent"  # optim.ema_warmup: how the decay rises to ``ema`` (ema.decay_at)


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
