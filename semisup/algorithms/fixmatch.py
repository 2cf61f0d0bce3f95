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

Class-imbalance options for the unlabelled term (``loss_u``, hard labels only): "ce" (the paper),
"bce" (class-balanced CE, w_y * CE), "focal" ((1 - p_y)^focal_gamma * CE) and "arl" (the Adaptive
Regularization Loss, ``losses.arl``, with ``arl_detach`` / ``arl_gamma_scale``). The class weights
come from the labelled counts; for any loss_u but "ce" they are kept as buffers of the state module
(``alpha``, ``w``; "focal" ignores them), for "ce" the state stays None. The per-sample loss is still masked
by confidence and averaged over the whole unlabelled batch, as for CE.

``loss_x`` applies the same family to the labelled term (true labels, mean over the labelled batch),
default "ce" (the paper). The ARL reference code (BAE-JEEON/Adaptive-Regularization-Loss, train.py) uses
ARL on both terms, with its own alpha (``arl_alpha=reference``, ``losses.class_weights``) and the gradient
through the exponent (``arl_detach=false``); the ``cifar10_lt_arl`` preset is that code. Which settings
give which column of the paper's table is in the FixMatch card (``semisup card fixmatch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import losses
from ..config.rules import NONNEG, POSITIVE, UNIT, check_fields, one_of, param
from ..errors import ConfigError
from ..pseudo import confidence_mask
from .contract import StepOutput
from .registry import register

LOSSES_U = ("ce", "bce", "focal", "arl")


class ClassWeights(nn.Module):
    """Buffers alpha (K,) and w (K,) = alpha / mean(alpha), from the labelled counts (losses.class_weights)."""

    def __init__(self, labelled_counts, alpha_from: str = "reference"):
        super().__init__()
        alpha, w = losses.class_weights(labelled_counts, alpha_from)
        self.register_buffer("alpha", alpha)
        self.register_buffer("w", w)


@register
@dataclass(frozen=True)
class FixMatch:
    name: ClassVar[str] = "fixmatch"
    mu: ClassVar[int] = 7  # train.mu=auto: FixMatch's
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "strong")

    threshold: float = param(0.95, UNIT)
    lambda_u: float = param(1.0, NONNEG)
    T: float = param(1.0, POSITIVE)
    hard_label: bool = True
    loss_u: str = param("ce", one_of(*LOSSES_U))  # ce | bce | focal | arl
    loss_x: str = param("ce", one_of(*LOSSES_U))  # the same family for the labelled term
    focal_gamma: float = param(2.0, NONNEG)
    arl_detach: bool = False  # the reference differentiates through p_y in the exponent
    arl_gamma_scale: float = param(1.0, POSITIVE)
    # alpha of arl / bce: reference (the ARL code's) | inverse (N_min / N_k)
    arl_alpha: str = param("reference", one_of(*losses.ALPHAS))

    def validate(self):
        check_fields(self)
        if self.loss_u != "ce" and not self.hard_label:
            raise ConfigError(f"algorithm.loss_u={self.loss_u!r} needs hard pseudo-labels: "
                              "set algorithm.hard_label=true")

    def init_state(self, model, ctx):
        if self.loss_u != "ce" or self.loss_x != "ce":
            return ClassWeights(ctx.labelled_counts, self.arl_alpha)
        return None

    # ---- the pieces, public so that other algorithms compose FixMatch (DASO, ABC) ----

    def forward(self, model, batch):
        """One forward over [labelled weak, unlabelled weak, unlabelled strong] -> (ModelOutput with
        logits (B + 2U, K) and features (B + 2U, D), B)."""
        x_l, u_w, u_s = batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]
        return model(torch.cat([x_l, u_w, u_s])), x_l.shape[0]

    def probs(self, logits_w):
        """The weak view's pseudo-label distribution softmax(l / T), detached, float32. (U, K) -> (U, K)."""
        return torch.softmax(logits_w.detach().float() / self.T, dim=-1)

    def unlabelled_loss(self, logits_s, probs, state):
        """The masked unlabelled term for strong-view logits (U, K) trained toward ``probs`` (U, K) (any
        pseudo-label distribution: FixMatch's own or another algorithm's) -> (loss_u, pseudo (U,), mask (U,))."""
        _, pseudo, mask = confidence_mask(probs, self.threshold)
        if not self.hard_label:
            per_sample = losses.soft_ce(logits_s, probs, reduction="none")
        else:
            per_sample = self._per_sample(self.loss_u, logits_s, pseudo, state)  # (U,)
        return losses.masked_mean(per_sample, mask), pseudo, mask

    def labelled_loss(self, logits_l, y, state):
        """The labelled term: ``loss_x`` of logits (B, K) toward the labels (B,), mean over the batch."""
        return self._per_sample(self.loss_x, logits_l, y, state).mean()

    def _per_sample(self, kind, logits, target, state):
        """Per-sample loss ``kind`` (one of LOSSES_U) of logits (N, K) toward hard targets (N,) -> (N,)."""
        if kind != "ce" and state is None:
            raise ValueError(f"fixmatch with a {kind!r} loss needs the state from init_state (class weights)")
        if kind == "bce":
            return losses.bce(logits, target, state.w)
        if kind == "focal":
            return losses.focal(logits, target, self.focal_gamma)
        if kind == "arl":
            return losses.arl(logits, target, state.alpha, state.w, detach_exponent=self.arl_detach,
                              gamma_scale=self.arl_gamma_scale)
        return losses.ce(logits, target, reduction="none")

    def step(self, model, batch, state, progress):
        out, B = self.forward(model, batch)
        logits_l = out.logits[:B]
        logits_w, logits_s = out.logits[B:].chunk(2)  # (U, K) each
        loss_x = self.labelled_loss(logits_l, batch.y_l, state)
        loss_u, pseudo, mask = self.unlabelled_loss(logits_s, self.probs(logits_w), state)
        loss = loss_x + self.lambda_u * loss_u
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u}, pseudo, mask)
