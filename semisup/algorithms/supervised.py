"""Supervised baseline: cross-entropy on the (weakly augmented) labelled batch only.

The unlabelled stream is not drawn at all (``views_u = ()``), so the baseline costs only its own
compute; with the same model, schedule and labelled batches it is the reference every SSL method
must beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import losses
from .contract import StepOutput
from .registry import register


@register
@dataclass(frozen=True)
class Supervised:
    name: ClassVar[str] = "supervised"
    mu: ClassVar[int] = 0  # train.mu=auto: no unlabelled batch
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ()

    def validate(self):
        """No hyper-parameters, nothing to check."""

    def init_state(self, model, ctx):
        return None

    def step(self, model, batch, state, progress):
        logits = model(batch.x_l["weak"]).logits  # (B, K)
        loss_x = losses.ce(logits, batch.y_l)
        return StepOutput(loss_x, {"loss_x": loss_x})
