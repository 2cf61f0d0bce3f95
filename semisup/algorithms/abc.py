"""ABC on FixMatch (Lee, Shin & Kim, NeurIPS 2021, "ABC: Auxiliary Balanced Classifier for Class-imbalanced
Semi-supervised Learning", arXiv:2110.10368).

FixMatch (composed: ``self.base`` is a FixMatch built from this algorithm's fields, its loss unchanged) plus
an auxiliary balanced classifier, a linear head on the same features (trainable, held in the state module
and optimised with the model by the loop, gradients reaching the shared encoder), trained with Bernoulli
masks that balance the classes:

    L = FixMatch + lambda_abc * ( mean_b M_l(y_b) CE(h(f_b), y_b)
                                  + sum_s mean_u 1[max p^h_u >= tau] M_u(yh_u) H(p^h_u, h(f(strong_s,u))) )

* labelled: M_l(y) ~ Bernoulli(N_min / N_y) per sample (N the labelled counts; the rarest class always kept);
* unlabelled: the target is the ABC head's own weak-view prediction p^h (soft, detached), as the official
  ABCfix.py (``torch.log(logitsu2) * logitsu1.detach()``); ``soft_targets=false`` trains toward its argmax
  yh instead. A sample counts when max p^h is at least tau (FixMatch's threshold, the code's 0.95) and
  M_u(yh) ~ Bernoulli(1 - t (1 - N_min / N_yh)), one draw shared by the S strong views, t = progress in [0, 1]:
  every pseudo-label kept at the start, the labelled ratio N_min / N_yh at the end. Our reading of the
  paper's schedule; the reference codes step it per "epoch" of 500 iterations (1 - (e / 500)(1 - N_min / N_k)),
  here it is continuous in progress. Both means run over the whole batch (FixMatch's convention).
* inference: the ABC head alone (``predict``), not the model's own head.

Deviations and details:
- Official code (LeeHyuck/ABC, ABCfix.py): S = 2 strong views of each unlabelled image (FixMatch's term is
  the mean over both, the ABC's term the sum of one masked mean per view) and as many unlabelled images as
  labelled ones (mu = 1, train.mu=auto). Its optimiser is Adam (lr 0.002, constant, 500 x 500 steps) with a
  weight decay of 0.02 lr applied by its EMA optimiser to every parameter: here the default too (optim.*=auto
  resolves to AdamW with decoupled weight decay 0.02 x lr on the weights, constant lr; ``--optim.name=sgd``
  gives the shared SGD + cosine). Measured on Fashion-MNIST-LT (benchmarks/RESULTS.md, "ABC: the reference's
  Adam against the shared SGD"). Its strong augmentation is RandAugment(3, 4) before flip-and-crop plus a
  16-px cutout; here data.strong.
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
from ..config.rules import AT_LEAST_1, NONNEG, borrow, check_fields, param
from ..config.schema import REFERENCE_ADAM
from ..pseudo import confidence_mask
from .base import AuxHead
from .contract import StepOutput
from .fixmatch import FixMatch
from .registry import register


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
@borrow(FixMatch, "threshold", "lambda_u", "T")  # threshold: also the ABC's confidence threshold
class ABC:
    name: ClassVar[str] = "abc"
    mu: ClassVar[int] = 1  # train.mu=auto: the official code's unlabelled batch = the labelled one
    optim: ClassVar[dict] = REFERENCE_ADAM  # optim.*=auto: the official code's Adam, MixMatch's
    views_l: ClassVar[tuple] = ("weak",)

    lambda_abc: float = param(1.0, NONNEG)
    soft_targets: bool = True  # the ABC head's unlabelled target: its own weak-view distribution (official code)
    strong_views: int = param(2, AT_LEAST_1)  # the official code's two strong views (inputs_u2, inputs_u3)

    @property
    def views_u(self) -> tuple:
        return ("weak", "strong", *(f"strong{k}" for k in range(2, self.strong_views + 1)))

    @property
    def base(self) -> FixMatch:
        return FixMatch(threshold=self.threshold, lambda_u=self.lambda_u, T=self.T)

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return ABCState(ctx.labelled_counts, ctx.num_features, ctx.ema, ctx.ema_warmup)

    def predict(self, model, x, state, ema: bool = True):
        """Inference logits (N, K) of the ABC head on the model's features; ``ema``: model is the loop's EMA copy."""
        return state.logits(model(x).features, ema)

    def step(self, model, batch, state, progress):
        fm = self.base
        state.follow(batch.step)
        x_l, u_w = batch.x_l["weak"], batch.x_u["weak"]
        u_s = [batch.x_u[v] for v in self.views_u[1:]]  # S x (U, C, H, W)
        B, U, S = x_l.shape[0], u_w.shape[0], len(u_s)
        out = model(torch.cat([x_l, u_w, *u_s]))  # logits (B + (1 + S) U, K): one forward
        logits_w, logits_s = out.logits[B:B + U], out.logits[B + U:]  # (U, K), (S U, K)
        loss_x = losses.ce(out.logits[:B], batch.y_l)
        loss_u, pseudo, mask = fm.unlabelled_loss(logits_s, fm.probs(logits_w).repeat(S, 1), None)

        h = state.logits(out.features)  # (B + (1 + S) U, K) ABC logits
        h_w = h[B:B + U]
        m_l = bernoulli_mask(state.keep_l[batch.y_l])  # (B,)
        loss_abc_x = losses.masked_mean(losses.ce(h[:B], batch.y_l, reduction="none"), m_l)
        p_h = fm.probs(h_w)  # (U, K) the ABC head's own weak-view distribution, detached
        _, yh, conf = confidence_mask(p_h, self.threshold)  # (U,)
        m_u = conf * bernoulli_mask(keep_unlabelled(state.keep_l, progress)[yh])  # (U,), shared by the views
        loss_abc_u = sum(
            losses.masked_mean(losses.soft_ce(h_v, p_h, reduction="none") if self.soft_targets
                               else losses.ce(h_v, yh, reduction="none"), m_u)
            for h_v in h[B + U:].split(U))
        loss = loss_x + self.lambda_u * loss_u + self.lambda_abc * (loss_abc_x + loss_abc_u)
        terms = {"loss_x": loss_x, "loss_u": loss_u, "loss_abc_x": loss_abc_x, "loss_abc_u": loss_abc_u}
        return StepOutput(loss, terms, pseudo[:U], mask[:U], {"abc": yh})
