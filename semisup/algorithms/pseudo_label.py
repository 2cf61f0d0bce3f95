"""Pseudo-Label (Lee, ICML 2013 Workshop on Challenges in Representation Learning: "Pseudo-Label: The Simple
and Efficient Semi-Supervised Learning Method for Deep Neural Networks").

The class with the highest predicted probability on an unlabelled image is used as if it were its true label,
recomputed at every weight update:

    L = CE(l_lab, y) + alpha(t) * mean_b( CE(l_unl_b, argmax l_unl_b) )
    alpha(t) = 0 for t < T1,  alpha_f (t - T1) / (T2 - T1) for T1 <= t < T2,  alpha_f for t >= T2

Paper defaults: alpha_f = 3, T1 = 100, T2 = 600 epochs (T1 = 200, T2 = 800 with DAE pre-training). Here t is
training progress in [0, 1], so T1 and T2 are fractions of the run (fields ``t1``, ``t2``) and scale with its
length. The paper's total number of epochs could not be checked in the sources at hand, so the defaults
t1 = 0.1, t2 = 0.6 read the epoch counts as fractions of a 1000-epoch run: an assumption, not a paper fact
(USB instead ramps linearly from 0 to 1 over the first 40% of training, i.e. t1 = 0, t2 = 0.4).

Deviations and details:
- The unlabelled batch is the weak view (flip + crop), as in USB; the paper (MNIST, 2013) used no augmentation.
- The pseudo-label comes from the same forward pass, detached: with dropout in the network (the ``lenet``
  model has it) the labels carry the same dropout noise as the predictions they train, as in the paper where
  pseudo-labels are recalculated at every update of the dropout network, and as in USB.
- One forward pass over the concatenated labelled and unlabelled batches: batch-norm statistics are computed
  over the mixed batch (USB runs two passes and freezes BN running statistics on the unlabelled one).
- ``label_from=eval`` takes the pseudo-labels from a separate forward in eval mode (no dropout, batch norm's
  running statistics), then trains on the train-mode forward, as the seed experiment's code does;
  ``ramp_unit=steps`` counts t1 and t2 in optimisation steps (its T1 = 100, T2 = 700). The preset
  ``mnist_pl_seed`` is its protocol.
- ``threshold`` > 0 keeps only pseudo-labels whose confidence is at least ``threshold`` (USB's variant, which
  uses 0.95); the default 0.0 is the paper's method (every unlabelled image is used). The mean is over the
  whole unlabelled batch (masked entries count as zero), as in FixMatch.
- ``dist_align=True`` (off by default; not in the paper) aligns the pseudo-label probabilities to the
  labelled class distribution before the argmax and the threshold, q = Normalize(p * p(y) / p~(y)), p~ the
  mean prediction over the last ``dist_buffer`` unlabelled batches (ReMixMatch's distribution alignment,
  semisup.pseudo.DistAlignState).

When the supervised baseline is strong, the paper's method can end below it, and one class carries the
loss. On Fashion-MNIST with 1000 labels (the mnist_pl_seed protocol, labels from the eval pass, 3 seeds;
benchmarks/RESULTS.md) Pseudo-Label ended 3.8 points below supervised and the shirt class, the one
supervised recognises worst (55 % recall), fell to 5 % while alpha(t) ramped up: the hard argmax of the
dropout-free network, weighted 3x the labels, trains a class whose images seldom win it toward its
look-alikes. ``threshold=0.95`` removes the deficit there (+0.0, the unsure images left out rather than
relabelled); alpha_f = 1 or labels from the dropout pass (the default) leave -0.3 / -0.5; dist_align only
-2.5 (the labels it forces onto the lost class are mostly wrong). At 40 labels, where the baseline is weak,
the threshold costs accuracy instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import losses
from ..config.rules import AT_LEAST_1, NONNEG, UNIT, check_fields, one_of, out_of_range, param
from ..pseudo import DistAlignState, confidence_mask
from ..schedules import linear_ramp
from .contract import StepOutput
from .registry import register


@register
@dataclass(frozen=True)
class PseudoLabel:
    name: ClassVar[str] = "pseudo_label"
    mu: ClassVar[int] = 1  # train.mu=auto: USB's classic-CV configs
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak",)

    alpha_f: float = param(3.0, NONNEG)
    t1: float = 0.1
    t2: float = 0.6
    threshold: float = param(0.0, UNIT)
    # t1 / t2 as fractions of the run (progress) or as optimisation steps (steps)
    ramp_unit: str = param("progress", one_of("progress", "steps"))
    # the pseudo-labels' forward: same_pass (train mode, detached) | eval (no dropout)
    label_from: str = param("same_pass", one_of("same_pass", "eval"))
    # align the pseudo-label probabilities to the labelled class distribution (ReMixMatch's alignment)
    dist_align: bool = False
    dist_buffer: int = param(128, AT_LEAST_1)

    def validate(self):
        check_fields(self)
        top = 1.0 if self.ramp_unit == "progress" else float("inf")  # t1 <= t2, both within the run
        if not 0 <= self.t1 <= top:
            raise out_of_range("algorithm.t1", self.t1, f"in [0, {top:g}]")
        if not self.t1 <= self.t2 <= top:
            raise out_of_range("algorithm.t2", self.t2, f"in [t1={self.t1}, {top:g}]")

    def alpha(self, progress: float, step: int = 0) -> float:
        """The paper's alpha(t): t = progress in [0, 1] (ramp_unit=progress) or the step (ramp_unit=steps)."""
        return self.alpha_f * linear_ramp(step if self.ramp_unit == "steps" else progress, self.t1, self.t2)

    def init_state(self, model, ctx):
        return DistAlignState(ctx.labelled_counts, self.dist_buffer) if self.dist_align else None

    def step(self, model, batch, state, progress):
        x_l, u_w = batch.x_l["weak"], batch.x_u["weak"]
        B = x_l.shape[0]
        if self.label_from == "eval":  # the seed's code: labels from the network without dropout, then the loss
            was = model.training
            model.eval()
            with torch.no_grad():
                probs = torch.softmax(model(u_w).logits.float(), dim=-1)  # (U, K)
            model.train(was)
        logits = model(torch.cat([x_l, u_w])).logits  # (B + U, K)
        logits_l, logits_u = logits[:B], logits[B:]  # (B, K), (U, K)
        loss_x = losses.ce(logits_l, batch.y_l)

        if self.label_from == "same_pass":
            probs = torch.softmax(logits_u.detach().float(), dim=-1)  # (U, K) detached target
        if state is not None:  # dist_align: align to p(y) with the running p~, then push the raw p into p~
            aligned = state.align(probs)  # (U, K)
            state.update(probs)
            probs = aligned
        _, pseudo, mask = confidence_mask(probs, self.threshold)  # (U,), (U,) int64, (U,) float
        per_sample = losses.ce(logits_u, pseudo, reduction="none")  # (U,)
        loss_u = losses.masked_mean(per_sample, mask)
        loss = loss_x + self.alpha(progress, batch.step) * loss_u
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u}, pseudo, mask)
