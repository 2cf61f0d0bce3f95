"""Pi-model (Laine & Aila, ICLR 2017, "Temporal Ensembling for Semi-Supervised Learning", arXiv:1610.02242).

Each unlabelled image is evaluated twice under independent stochastic augmentation and dropout; the two class
distributions are pulled together:

    L = CE(l_lab, y) + w(t) * mean_{b,k}( (softmax(z_b) - softmax(z~_b))_k^2 )
    w(t) = w_max * exp(-5 (1 - t / rampup)^2) for t < rampup, then w_max

Defaults from the official code (github.com/s-laine/tempens, config.py / train.py): w_max = 100 for the
Pi-model (30 is Temporal Ensembling's), ramp-up over the first 80 of 300 epochs (``rampup`` = 80/300), squared
error averaged over classes and samples, and *both* branches carry gradient (no stop-gradient on either;
USB detaches one side). Scale convention: the paper averages its cross-entropy over the whole mixed minibatch
(so it is diluted by the labelled fraction M/N) and scales w_max by M/N to match; here the cross-entropy is a
mean over the labelled batch and the consistency a mean over the unlabelled batch, so the same balance is w_max
itself, unscaled (USB, same per-batch means, uses 10).

Deviations:
- Views "weak" and "weak2" are two independent weak augmentation draws (flip + crop; the paper adds Gaussian
  input noise, which the loop's weak view does not).
- One forward pass over [labelled, unlabelled view 1, unlabelled view 2]: dropout masks are drawn per sample,
  so the two views still get independent dropout, but batch-norm statistics are shared by the whole mixed batch
  (the official code runs the two branches as separate passes, each with its own mean-only BN statistics).
- The consistency term covers the unlabelled batch only (the paper also applies it to labelled images, which
  here have a single view); w(0) = exp(-5) w_max instead of the official code's 0 for the first epoch.
- Stats: no hard pseudo-label exists, so ``pseudo_label`` = argmax of the first view's distribution and
  ``mask`` = ones, for the loop's pseudo-label-quality metric only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import losses
from ..config.rules import NONNEG, UNIT, check_fields, param
from ..schedules import sigmoid_rampup
from .contract import StepOutput
from .registry import register


@register
@dataclass(frozen=True)
class PiModel:
    name: ClassVar[str] = "pi_model"
    mu: ClassVar[int] = 1  # train.mu=auto: USB's classic-CV configs
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "weak2")

    w_max: float = param(100.0, NONNEG)
    rampup: float = param(80.0 / 300.0, UNIT)

    def validate(self):
        check_fields(self)

    def weight(self, progress: float) -> float:
        """w(t) with t = progress in [0, 1]."""
        return self.w_max * sigmoid_rampup(progress, self.rampup)

    def init_state(self, model, ctx):
        return None

    def step(self, model, batch, state, progress):
        x_l, u_1, u_2 = batch.x_l["weak"], batch.x_u["weak"], batch.x_u["weak2"]
        B = x_l.shape[0]
        logits = model(torch.cat([x_l, u_1, u_2])).logits  # (B + 2U, K)
        logits_l = logits[:B]  # (B, K)
        z_1, z_2 = logits[B:].chunk(2)  # (U, K) each, both differentiable
        loss_x = losses.ce(logits_l, batch.y_l)
        loss_u = losses.softmax_mse(z_1, z_2)
        loss = loss_x + self.weight(progress) * loss_u
        pseudo = z_1.detach().argmax(dim=-1)  # (U,) int64, reporting only
        mask = torch.ones_like(pseudo, dtype=torch.float32)  # (U,)
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u}, pseudo, mask)
