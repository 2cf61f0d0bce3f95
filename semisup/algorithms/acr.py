"""ACR on FixMatch (Wei & Gan, CVPR 2023, "Towards Realistic Long-Tailed Semi-Supervised Learning: Consistency
Is All You Need"; reference github.com/Gank0078/ACR train.py, also ported in USB semilearn/imb_algorithms/acr).

Two branches on the model's features: the model's own head (standard, logits l) and a balanced linear head h
(held trainable in the state module and optimised with the model by the loop, as ABC's). pi = labelled class
distribution, adj(t) = log(pi^t + 1e-12) (``acr_ops.logit_adjustment``), S strong views of each image:

    L = CE(l_x, y) + CE(h_x + adj(tau2), y)                                   (logit-adjusted loss for h)
      + lambda_u * mean_{s,u}( max(m(q1), m(p))   CE(l(strong_s), argmax q1) )     q1 = softmax((l_w - adj(tau)) / T)
      + lambda_u * mean_{s,u}( max(m(pb), m(q12)) CE(h(strong_s), argmax q12) )    q12 = softmax((l_w - adj(tau12)) / T)

with p = softmax(l_w / T), pb = softmax(h_w / T), m(.) = 1[max >= threshold] (the reference ORs the masks).
Adaptive consistency: tau (the standard branch's adjustment) follows the estimated unlabelled class
distribution u (buffer ``u_py``, uniform at first): from step ``est_start`` on, each step
u <- ema_u u + (1 - ema_u) hist / sum(hist), hist over the classes of the balanced head's confident weak-view
pseudo-labels (skipped when empty): by default (``u_estimate=presence``) 1 for each class with at least one
confident pseudo-label in the batch, 0 otherwise, as the reference's ``now_mask[targets_u_b] += mask_b``
(an indexed write that does not accumulate repeated indices: one sample per class survives); ``counts``
counts every confident sample (an estimate of the distribution itself, semisup's earlier default). The
symmetric KL of u to the anchors (pi, uniform, reversed pi) is
summed (``div_sum``). Every ``est_window`` steps after a full window, tau = tau1 * softmax(div_sum / est_window)[0]
(``acr_ops.acr_tau``; tau_min = 0) and the sum restarts: tau ~ 0 when u looks like pi, ~ tau1 when it looks
reversed. Before that tau = tau1. Inference: the balanced head alone, raw logits (``predict``): the
adjustment is in its training loss only, as the reference's test() (outputs_b = classify1(feat)).

Defaults, all the reference's argparse defaults: threshold 0.95, T 1, tau1 = tau12 = tau2 = 2, ema_u 0.9 (its
README runs CIFAR-10 with --ema-u 0.99), lambda_u 1 (its loss is Lx + Lu + Lx_b + Lu_b), two strong views
(inputs_u_s, inputs_u_s1; USB's port uses one: strong_views=1). The reference counts time in "epochs" of
eval_step = 500 iterations and estimates from epoch est_epoch + 1 = 6 on: here est_window = 500 steps and
est_start = 3000 steps (for a short run, e.g. 6000 steps, lower both).

Deviations: (1) presence: the reference keeps the mask of whichever sample of a class its indexed write keeps
(undefined on a GPU); here a class counts when any of its samples is confident. Its extra mask on unlabelled
samples marked -2 by its data code (labelled images it also puts in the unlabelled set) has no counterpart
here: semisup's unlabelled set excludes them. (2) tau stays tau1 until the first full
window, and a window without one confident balanced pseudo-label leaves tau as it was (buffer ``n_seen``; the
reference's empty accumulator gives equal weights, tau1 / 3: for its first estimating epoch and after any
such epoch). (3) Divergence logs clamped at 1e-12 (``acr_ops.sym_kl``): finite where the reference gets
inf / NaN and keeps the old tau. (4) EMA inference as ABC: ``head_ema`` (decay ctx.ema, ``ema.follow_`` at
the start of each step) pairs with the loop's EMA model; ``predict(..., ema=False)`` uses the trained head.
(5) One concatenated forward (BN over the whole batch); the reference interleaves. Balanced head init as its
fc1: xavier_normal weight, zero bias. The equations follow the reference code (train.py at commit a675f3e,
and USB's port); the paper's own equation text was not available to check against. Note the sign there:
the anchor weights are softmax(+divergence), so the anchor the estimate is FARTHEST from weighs most.
Short runs: tau1 = tau12 = tau2 = 2 shift the logits by up to 2 ln(gamma) (9.2 at gamma = 100) toward the
tail. On fashion_mnist_lt100 at 1000 steps (benchmarks/RESULTS.md) this overwhelmed the young model's
logits: the standard branch's pseudo-labels were 0.2 % correct at step 100 (70 % passing, through the OR
with the raw mask), the balanced head trained on them predicted the tail everywhere, so the estimate u
looked far from pi and tau stayed at its maximum: 46 % test top-1 (head recall 2 %) on three seeds,
against 80 % with all three set to 1. For short or strongly imbalanced runs, lower them.
Stats: ``pseudo_label`` / ``mask`` are the standard branch's (argmax q1, its OR mask); ``pseudo_label_bal``
the balanced head's weak argmax; ``tau`` the current adaptive tau.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import losses
from ..config.rules import AT_LEAST_1, NONNEG, UNIT_OPEN, borrow, check_fields, one_of, param
from ..pseudo import confidence_mask
from .acr_ops import acr_tau, logit_adjustment, sym_kl
from .base import AuxHead
from .contract import StepOutput
from .fixmatch import FixMatch
from .registry import register


class ACRState(AuxHead):
    """anchors (3, K): labelled prior pi, uniform, reversed pi; u_py (K,) the estimated unlabelled class
    distribution; div_sum (3,) this window's summed divergences to the anchors; tau () the current adaptive
    strength; head the trainable balanced classifier, head_ema its EMA (frozen)."""

    def __init__(self, labelled_counts, num_features: int, tau1: float, ema: float, warmup: str = "recent"):
        counts = torch.as_tensor(labelled_counts, dtype=torch.float32)
        if counts.numel() == 0 or bool((counts <= 0).any()):
            raise ValueError(f"acr needs a positive labelled count for every class, got {counts.tolist()}")
        pi, K = counts / counts.sum(), len(counts)
        # reference: fc1 as fc, xavier_normal, zero bias
        super().__init__(num_features, K, ema, xavier=True, warmup=warmup)
        self.register_buffer("anchors", torch.stack([pi, torch.full((K,), 1.0 / K), pi.flip(0)]))
        self.register_buffer("u_py", torch.full((K,), 1.0 / K))
        self.register_buffer("div_sum", torch.zeros(3))
        self.register_buffer("n_seen", torch.zeros(()))  # steps of this window with a non-empty histogram
        self.register_buffer("tau", torch.tensor(float(tau1)))

    @torch.no_grad()
    def observe(self, labels: Tensor, mask: Tensor, ema_u: float, presence: bool = True) -> None:
        """One step of estimation from pseudo-labels (U,) int64 and their mask (U,) float (no host sync):
        the classes present among the confident ones (presence) or their counts."""
        m = mask.to(self.u_py)
        hist = (torch.zeros_like(self.u_py).scatter_reduce_(0, labels, m, reduce="amax") if presence
                else torch.zeros_like(self.u_py).scatter_add_(0, labels, m))  # (K,)
        total = hist.sum()
        seen = total > 0
        u = ema_u * self.u_py + (1 - ema_u) * hist / total.clamp_min(1.0)
        self.u_py.copy_(torch.where(seen, u, self.u_py))
        self.div_sum.add_(torch.where(seen, sym_kl(self.u_py[None], self.anchors), 0.0))  # (3,)
        self.n_seen.add_(seen.to(self.n_seen))

    @torch.no_grad()
    def refresh(self, window: int, tau_max: float) -> None:
        """End of a window: tau from the window's divergences summed / window (as the reference, whatever the
        number of steps that counted), kept as it was if no step counted; then the sums restart."""
        new = acr_tau(self.div_sum / window, 0.0, tau_max)
        self.tau.copy_(torch.where(self.n_seen > 0, new, self.tau))
        self.div_sum.zero_()
        self.n_seen.zero_()


@register
@dataclass(frozen=True)
@borrow(FixMatch, "threshold", "lambda_u", "T")
class ACR:
    name: ClassVar[str] = "acr"
    mu: ClassVar[int] = 1  # train.mu=auto: the reference's --mu default (its README commands keep it)
    strong: ClassVar[str] = "randaugment_mc"  # data.strong=auto: the reference's TransformFixMatch
    views_l: ClassVar[tuple] = ("weak",)

    # max of the adaptive tau (standard branch's pseudo-labels); also its value before estimation
    tau1: float = param(2.0, NONNEG)
    tau12: float = param(2.0, NONNEG)  # fixed adjustment of the standard branch's pseudo-labels for the balanced head
    tau2: float = param(2.0, NONNEG)  # logit-adjusted labelled loss of the balanced head
    ema_u: float = param(0.9, UNIT_OPEN)
    est_start: int = param(3000, NONNEG)  # steps before estimation starts
    est_window: int = param(500, AT_LEAST_1)  # steps per tau re-estimate
    strong_views: int = param(2, AT_LEAST_1)
    # presence (the reference's 0/1 per class and batch) | counts
    u_estimate: str = param("presence", one_of("presence", "counts"))

    @property
    def views_u(self) -> tuple:
        return ("weak", "strong", *(f"strong{k}" for k in range(2, self.strong_views + 1)))

    @property
    def base(self) -> FixMatch:
        return FixMatch(threshold=self.threshold, lambda_u=self.lambda_u, T=self.T)

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return ACRState(ctx.labelled_counts, ctx.num_features, self.tau1, ctx.ema, ctx.ema_warmup)

    def predict(self, model, x, state, ema: bool = True):
        """Inference logits (N, K): the balanced head's raw logits on the model's features (no adjustment);
        ``ema``: model is the loop's EMA copy, so the head's EMA is used."""
        return state.logits(model(x).features, ema)

    def step(self, model, batch, state, progress):
        fm, s = self.base, batch.step
        state.follow(s)
        if s >= self.est_start + self.est_window and (s - self.est_start) % self.est_window == 0:
            state.refresh(self.est_window, self.tau1)
        x_l, u_w = batch.x_l["weak"], batch.x_u["weak"]
        u_s = [batch.x_u[v] for v in self.views_u[1:]]  # S x (U, C, H, W)
        B, U = x_l.shape[0], u_w.shape[0]
        out = model(torch.cat([x_l, u_w, *u_s]))  # logits (B + (1 + S) U, K): one forward
        h = state.logits(out.features)  # balanced branch, same rows
        l_w, h_w = out.logits[B:B + U].float(), h[B:B + U]
        pi = state.anchors[0]

        loss_x = losses.ce(out.logits[:B], batch.y_l)
        loss_x_b = losses.ce(h[:B] + logit_adjustment(pi, self.tau2), batch.y_l)
        _, y1, m1 = confidence_mask(fm.probs(l_w - logit_adjustment(pi, state.tau)), self.threshold)
        _, y12, m12 = confidence_mask(fm.probs(l_w - logit_adjustment(pi, self.tau12)), self.threshold)
        _, yb, mb = confidence_mask(fm.probs(h_w), self.threshold)
        mt = confidence_mask(fm.probs(l_w), self.threshold)[2]
        S = len(u_s)
        mask_u, mask_b = torch.maximum(m1, mt), torch.maximum(mb, m12)  # (U,) the reference's OR
        loss_u = losses.masked_mean(losses.ce(out.logits[B + U:], y1.repeat(S), reduction="none"), mask_u.repeat(S))
        loss_u_b = losses.masked_mean(losses.ce(h[B + U:], y12.repeat(S), reduction="none"), mask_b.repeat(S))
        if s >= self.est_start:
            state.observe(yb, mb, self.ema_u, presence=self.u_estimate == "presence")

        loss = loss_x + loss_x_b + self.lambda_u * (loss_u + loss_u_b)
        return StepOutput(loss, {"loss_x": loss_x, "loss_x_b": loss_x_b, "loss_u": loss_u, "loss_u_b": loss_u_b,
                                 "tau": state.tau.detach().clone()}, y1, mask_u, {"bal": yb})
