"""FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685).

Pseudo-label = argmax of the model's prediction on the weak view, kept when its confidence is at
least ``threshold``; the strong view is trained toward it with cross-entropy:

    L = CE(l_weak, y) + lambda_u * mean_b( 1[max p_b >= tau] * CE(p(strong_b), argmax p_b) )

Defaults are the paper's (tau 0.95, lambda_u 1, hard labels). One forward pass over the
concatenated labelled-weak, unlabelled-weak and unlabelled-strong batches, as the reference
implementation does on one device: batch-norm statistics are computed over the whole mixed batch
(the original TF code interleaves across devices for the same effect). ``T`` softens the
pseudo-label distribution used for confidence (T = 1 in the paper); ``hard_label=False`` trains
toward the full sharpened distribution instead (USB's option).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import losses
from ..errors import ConfigError
from ..pseudo import confidence_mask
from . import register


@register
@dataclass(frozen=True)
class FixMatch:
    name: ClassVar[str] = "fixmatch"
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "strong")

    threshold: float = 0.95
    lambda_u: float = 1.0
    T: float = 1.0
    hard_label: bool = True

    def validate(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"algorithm.threshold={self.threshold} is out of range: must be in [0, 1]")
        if self.T <= 0:
            raise ConfigError(f"algorithm.T={self.T} is out of range: must be > 0")
        if self.lambda_u < 0:
            raise ConfigError(f"algorithm.lambda_u={self.lambda_u} is out of range: must be >= 0")

    def init_state(self, model, ctx):
        return None

    def step(self, model, batch, state, progress):
        x_l, u_w, u_s = batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]
        B = x_l.shape[0]
        logits = model(torch.cat([x_l, u_w, u_s])).logits  # (B + 2U, K)
        logits_l = logits[:B]
        logits_w, logits_s = logits[B:].chunk(2)  # (U, K) each
        loss_x = losses.ce(logits_l, batch.y_l)

        probs = torch.softmax(logits_w.detach().float() / self.T, dim=-1)  # (U, K)
        _, pseudo, mask = confidence_mask(probs, self.threshold)
        if self.hard_label:
            per_sample = losses.ce(logits_s, pseudo, reduction="none")  # (U,)
        else:
            per_sample = losses.soft_ce(logits_s, probs, reduction="none")
        loss_u = losses.masked_mean(per_sample, mask)
        loss = loss_x + self.lambda_u * loss_u
        return loss, {"loss_x": loss_x, "loss_u": loss_u, "pseudo_label": pseudo, "mask": mask}
