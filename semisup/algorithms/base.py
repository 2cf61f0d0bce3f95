"""What the loop hands an algorithm: a batch of views and the run's fixed context."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor


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
