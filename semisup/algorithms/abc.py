"""ABC on FixMatch (Lee, Shin & Kim, NeurIPS 2021, "ABC: Auxiliary Balanced Classifier for Class-imbalanced
Semi-supervised Learning", arXiv:2110.10368).

FixMatch (composed: ``self.base`` is a FixMatch built from this algorithm's fields, its loss unchanged) plus
an auxiliary balanced classifier, a linear head on the same features (trainable, held in the state module
and optimised with the model by the loop, gradients reaching the shared encoder), trained with Bernoulli
masks that balance the classes:

    L = FixMatch + lambda_abc * ( mean_b M_l(y_b) CE(h(f_b), y_b)
                                  + mean_u 1[max p^h_u >= tau] M_u(yh_u) CE(h(f(strong_u)), yh_u) )

* labelled: M_l(y) ~ Bernoulli(N_min / N_y) per sample (N the labelled counts; the rarest class always kept);
* unlabelled: yh = argmax of the ABC head's own weak-view prediction p^h, kept when its confidence is at least
  tau (FixMatch's threshold), and M_u(yh) ~ Bernoulli(1 - t (1 - N_min / N_yh)), t = progress in [0, 1]:
  every pseudo-label kept at the start, the labelled ratio N_min / N_yh at the end. Our reading of the
  paper's schedule; the reference codes step it per "epoch" of 500 iterations (1 - (e / 500)(1 - N_min / N_k)),
  here it is continuous in progress. Both means run over the whole batch (FixMatch's convention).
* inference: the ABC head alone (``predict``), not the model's own head.

Deviations and details:
- Hard pseudo-labels for the ABC's unlabelled term, as FixMatch's (ytaek-oh/daso's ABC re-implementation
  trains toward the soft prediction p^h).
- The loop evaluates its EMA model; the matching head is an EMA of the ABC head kept in the state
  (``head_ema``, decay ctx.ema = optim.ema, updated with ``ema.follow_`` at the start of each step, so at an
  evaluation it is one update behind the loop's EMA: immaterial at decay 0.999). ``predict(..., ema=False)``
  (evaluation of raw weights, or optim.ema = 0) uses the trained head itself.
- Masks come from torch.rand on the batch's device (the loop seeds torch per rank); no generator is kept.
- Stats: ``pseudo_label`` / ``mask`` are FixMatch's; ``pseudo_label_abc`` (U,) the ABC head's weak-view argmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import losses
from ..pseudo import confidence_mask
from . import register
from .base import NONNEG, AuxHead, check_ranges
from .fixmatch import FixMatch


def keep_unlabelled(keep_l: Tensor, progress: float) -> Tensor:
    """ABC's keep probability of an unlabelled sample by pseudo-label class: 1 - t (1 - N_min / N_k).
    keep_l (K,) = N_min / N_k, progress t in [0, 1] -> (K,): all ones at t = 0, keep_l at t = 1."""
    t = min(max(float(progress), 0.0), 1.0)
    return 1.0 - t * (1.0 - keep_l)


def bernoulli_mask(prob: Tensor) -> Tensor:
    """One Bernoulli(prob_i) draw per entry from torch's global RNG on prob's device. (N,) -> (N,) float 0/1."""
    return (torch.rand(prob.shape, device=prob.device) < prob).float()


class ABCState(AuxHead):
    """head: the trainable auxiliary classifier; head_ema: its EMA (frozen); keep_l (K,) = N_min / N_k."""

    def __init__(self, labelled_counts, num_features: int, ema: float, warmup: str = "recent"):
        keep_l, _ = losses.class_weights(labelled_counts)
        super().__init__(num_features, len(keep_l), ema, warmup=warmup)
        self.register_buffer("keep_l", keep_l)


@register
@dataclass(frozen=True)
class ABC:
    name: ClassVar[str] = "abc"
    mu: ClassVar[int] = 7  # train.mu=auto: FixMatch's (ABC is a head on FixMatch here)
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "strong")

    threshold: float = 0.95  # FixMatch's, also the ABC's confidence threshold
    lambda_u: float = 1.0
    T: float = 1.0
    lambda_abc: float = 1.0

    @property
    def base(self) -> FixMatch:
        return FixMatch(threshold=self.threshold, lambda_u=self.lambda_u, T=self.T)

    def validate(self):
        self.base.validate()
        check_ranges(self, lambda_abc=NONNEG)

    def init_state(self, model, ctx):
        return ABCState(ctx.labelled_counts, ctx.num_features, ctx.ema, ctx.ema_warmup)

    def predict(self, model, x, state, ema: bool = True):
        """Inference logits (N, K) of the ABC head on the model's features; ``ema``: model is the loop's EMA copy."""
        return state.logits(model(x).features, ema)

    def step(self, model, batch, state, progress):
        fm = self.base
        state.follow(batch.step)
        out, B = fm.forward(model, batch)
        logits_w, logits_s = out.logits[B:].chunk(2)  # (U, K) each
        loss_x = losses.ce(out.logits[:B], batch.y_l)
        loss_u, pseudo, mask = fm.unlabelled_loss(logits_s, fm.probs(logits_w), None)

        h = state.logits(out.features)  # (B + 2U, K) ABC logits
        h_w, h_s = h[B:].chunk(2)
        m_l = bernoulli_mask(state.keep_l[batch.y_l])  # (B,)
        loss_abc_x = losses.masked_mean(losses.ce(h[:B], batch.y_l, reduction="none"), m_l)
        _, yh, conf = confidence_mask(fm.probs(h_w), self.threshold)  # the ABC's own pseudo-labels (U,)
        m_u = conf * bernoulli_mask(keep_unlabelled(state.keep_l, progress)[yh])  # (U,)
        loss_abc_u = losses.masked_mean(losses.ce(h_s, yh, reduction="none"), m_u)
        loss = loss_x + self.lambda_u * loss_u + self.lambda_abc * (loss_abc_x + loss_abc_u)
        return loss, {"loss_x": loss_x, "loss_u": loss_u, "loss_abc_x": loss_abc_x, "loss_abc_u": loss_abc_u,
                      "pseudo_label": pseudo, "mask": mask, "pseudo_label_abc": yh}
