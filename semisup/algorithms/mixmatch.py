"""MixMatch (Berthelot et al., NeurIPS 2019, arXiv:1905.02249).

Label guess q = Sharpen(mean_k softmax(model(u_k)), T) over K = 2 weak views of each unlabelled image
(no gradient). The labelled batch (one-hot targets) and all K unlabelled batches (target q each) form
the union W; every sample is mixed with a random sample of the shuffled W, lambda' = max(lambda,
1 - lambda), lambda ~ Beta(alpha, alpha) per sample (the reference's MixMode 'xxy.yxy'):

    L = soft_CE(X') + lambda_u * ramp(t) * mean_{b,k} (softmax(model(U'))_bk - q'_bk)^2

Defaults (paper sec. 4 / reference google-research/mixmatch): T 0.5, K 2, alpha 0.75, lambda_u 75 (the
CIFAR-10 value of the reference's runs/table1.sh; the paper calls 100 a good starting point, and it is the
code's flag default and USB's value). The L2 loss is averaged over classes too, as the paper's
1/(L |U'|) and the code's tf.reduce_mean. lambda_u ramps up linearly over the first ``rampup``
fraction of training: the paper's 16k steps (warmup_kimg 1024 of train_kimg 65536) = 1/64.
Short runs: the fraction keeps the paper's ratio, not its 16k steps. In a 1000-step run 1/64 is 16
steps, so lambda_u = 75 acts on sharpened guesses of a nearly untrained network; measured on Fashion-MNIST
(40 labels, smallcnn, 1000 steps, benchmarks/RESULTS.md) one seed of three collapsed to 35 % (five classes
never predicted from step 100 on) while ``rampup=0.4`` gave 73 % on that seed (+2.3 and -1.1 points on the other two):
for runs much shorter than the paper's 2^20 steps, set ``algorithm.rampup`` to a few tenths (USB's configs use 0.4).

The unlabelled batch matters more: with train.mu = 3 (three unlabelled images per labelled one, so six of every
seven samples of the union W are guessed), 3000-step 40-label Fashion-MNIST runs lost whole classes after
their best evaluation (one seed ended with four classes under 10 % recall) and ended below supervised
(54.0 vs 55.5 % over three seeds), while at the paper's mu = 1 (the default, train.mu=auto) every seed
beat supervised: 66.6 %, and 70.4 % with USB's ramp-up 0.4 (benchmarks/RESULTS.md; both with the shared SGD).

``dist_align=True`` (off by default; not in the MixMatch paper) applies ReMixMatch's distribution
alignment to the averaged guess before sharpening, q = Sharpen(Normalize(p * p(y) / p~(y)), T), p~ the
mean guess over the last ``dist_buffer`` batches (semisup.pseudo.DistAlignState): the ablation that
isolates the one ReMixMatch ingredient that keeps the marginal of the guesses at the labelled class
distribution. Without it, a class the sharpened guesses stop predicting gets no target mass and does not
come back (measured in benchmarks/RESULTS.md: classes collapse in long Fashion-MNIST 40-label runs).

Optimiser: the reference's Adam, lr 0.002, weight decay 0.02 x lr applied to the weights after each step, no lr
decay (optim.*=auto resolves to it; ``--optim.name=sgd`` gives the shared SGD + cosine instead). Measured on
Fashion-MNIST 40 labels, 3000 steps, mu 1, three seeds: 68.50 % against 66.60 % with the shared SGD, better on
every seed; at 250 labels 76.27 % against 77.48 %, one seed of three drifting late with Adam (with a cosine
decay too) where SGD does not (benchmarks/RESULTS.md, "The paper's optimiser against the shared SGD").

Deviations: the reference interleaves the K + 1 mixed batches so each of its separate forward passes
sees BN statistics of the whole union; here one concatenated forward of all mixed batches computes
them over the union directly. The label-guess forward runs in train mode under no_grad, so its
batch-norm running statistics are updated too (the reference discards those updates). The paper uses
an unlabelled batch as large as the labelled one: train.mu = 1, which train.mu=auto (the default) gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import losses
from ..config.rules import AT_LEAST_1, NONNEG, POSITIVE, UNIT, check_fields, param
from ..config.schema import REFERENCE_ADAM
from ..pseudo import DistAlignState, mixup_union, sharpen
from ..schedules import linear_ramp
from .contract import StepOutput
from .registry import register


def ramp(progress: float, rampup: float) -> float:
    """Linear ramp 0 -> 1 over the first ``rampup`` fraction of training (1 throughout if rampup = 0)."""
    return 1.0 if rampup <= 0 else linear_ramp(progress, 0.0, rampup)


@register
@dataclass(frozen=True)
class MixMatch:
    name: ClassVar[str] = "mixmatch"
    mu: ClassVar[int] = 1  # train.mu=auto: the paper: as many unlabelled as labelled images
    optim: ClassVar[dict] = REFERENCE_ADAM  # optim.*=auto: the reference's Adam
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "weak2")  # K = 2 independent weak views

    T: float = param(0.5, POSITIVE)
    alpha: float = param(0.75, POSITIVE)
    lambda_u: float = param(75.0, NONNEG)
    rampup: float = param(1 / 64, UNIT)
    dist_align: bool = False
    dist_buffer: int = param(128, AT_LEAST_1)

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return DistAlignState(ctx.labelled_counts, self.dist_buffer) if self.dist_align else None

    def step(self, model, batch, state, progress):
        x_l = batch.x_l["weak"]  # (B, C, H, W)
        u = [batch.x_u[v] for v in self.views_u]  # K x (U, C, H, W)
        B, U, K = x_l.shape[0], u[0].shape[0], len(u)

        with torch.no_grad():  # label guess: average over the K views, then sharpen
            p = torch.softmax(model(torch.cat(u)).logits.float(), dim=-1)  # (K U, C)
            p = p.view(K, U, -1).mean(0)  # (U, C)
            if state is not None:  # dist_align: align to p(y) with the running p~, then push p into p~
                p_aligned = state.align(p)
                state.update(p)
                p = p_aligned
            q = sharpen(p, self.T)  # (U, C)
        C = q.shape[1]

        x_mix, t_mix = mixup_union(x_l, F.one_hot(batch.y_l, C).float(), u, q, self.alpha)  # (B + K U, ...)

        logits = model(x_mix).logits  # (B + K U, C), one forward: BN statistics over the whole union
        loss_x = losses.soft_ce(logits[:B], t_mix[:B])
        loss_u = (torch.softmax(logits[B:].float(), dim=-1) - t_mix[B:]).pow(2).mean()  # mean over (K U, C)
        loss = loss_x + self.lambda_u * ramp(progress, self.rampup) * loss_u
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u}, q.argmax(-1), torch.ones(U, device=q.device))
