"""DASO on FixMatch (Oh, Kim & Kweon, CVPR 2022, "DASO: Distribution-Aware Semantics-Oriented Pseudo-label
for Imbalanced Semi-Supervised Learning", arXiv:2106.05682; reference code ytaek-oh/daso).

FixMatch (composed, not inherited: ``self.base`` is a FixMatch built from this algorithm's fields) with
another pseudo-label and one extra loss:
* per class, a FIFO queue of the last ``queue_len`` (256) features of LABELLED images, computed by an EMA
  copy of the model; prototypes C_k = mean of queue k;
* a similarity classifier q = softmax(cos(z, C) / T_proto) on the student's features z of the weak
  unlabelled view (T_proto 0.05);
* the blended pseudo-label p' = (1 - v_k) p + v_k q, k = argmax p, v_k = m_k^(1/T_dist) / max_j m_j^(1/T_dist),
  m the class histogram of the final pseudo-labels (argmax p', unmasked) of the last ``dist_period`` (100)
  steps, refreshed every ``dist_period`` steps (batch.step); FixMatch's threshold and loss then apply to p';
* semantic alignment H(q_weak, q_strong), q_weak a fixed target, q_strong from the strong view's features.

    L = CE(l_weak, y) + lambda_u * FixMatch_u(p') + lambda_align * H(q_weak, q_strong)

``T_dist``: 1.5 (default) when the unlabelled class distribution is believed consistent with the labelled
one, 0.3 otherwise (uniform / reversed), the paper's CIFAR-10-LT settings. Blending and alignment start at
``progress >= warmup`` (paper: 5000 of 250k steps = 0.02); before that p' = p and loss_align = 0, while the
queue and the histogram fill from step 0, as in the reference. State (checkpointed): ``encoder_ema`` (a
frozen deep copy of the model), the queue (K, L, D) with fill counts and write positions, the histogram.

Deviations and details:
- The EMA copy is the algorithm's own (it cannot see the loop's), updated at the start of each step by
  ``ema.follow_`` at decay ctx.ema (optim.ema): it equals the loop's EMA model as of the previous step, the
  model the reference enqueues with. Our choice: it runs in eval mode (BN running statistics copied from the
  student), so queue features do not depend on a labelled-only batch's statistics. optim.ema=0: the student.
- Before the first refresh the histogram is empty and v = 1 for every class (p' = q); the reference's is
  undefined there (its warm-up covers it). An empty queue gives a zero prototype (similarity 0), as there.
- Under DDP the loop averages the state's float buffers: histograms stay exact up to scale; queues are
  averaged slot by slot (an approximation).
- Stats ``pseudo_label_linear`` = argmax p and ``pseudo_label_sim`` = argmax q (U,): per-class recall of
  either classifier against the hidden labels (the loop tracks them without a mask).

``daso_remixmatch``: the same on ReMixMatch (``self.base`` a ReMixMatch; the reference's ReMixMatchDASO).
The linear pseudo-label is ReMixMatch's guess (distribution-aligned, sharpened); it is blended with q as
above, and the blend is the target of everything downstream (MixUp targets and the pre-mixup loss of the
first strong view); no confidence mask (ReMixMatch has none). The alignment loss uses the first strong
view's features from ReMixMatch's concatenated forward; q comes from the weak forward (no gradient, as in
the reference). Labelled features for the queue come from the weak labelled view (ReMixMatch itself trains
on the strong one). ReMixMatch's state (distribution buffer, rotation head) is ``state.base``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses
from ..config.rules import AT_LEAST_1, NONNEG, POSITIVE, UNIT, borrow, check_fields, param
from ..ema import follow_
from .contract import StepOutput
from .daso_ops import daso_blend, daso_weights, prototype_logits
from .fixmatch import FixMatch
from .registry import register
from .remixmatch import ReMixMatch


class DASOState(nn.Module):
    def __init__(self, model: nn.Module, num_classes: int, num_features: int, queue_len: int, ema: float,
                 base: nn.Module | None = None, warmup: str = "recent"):
        super().__init__()
        self.base = base  # the base algorithm's own state (ReMixMatch's), if any
        self.decay, self.warmup = ema, warmup
        self.encoder_ema = copy.deepcopy(model).eval()
        for p in self.encoder_ema.parameters():
            p.requires_grad_(False)
            p.grad = None
        K, L, D = num_classes, queue_len, num_features
        self.register_buffer("queue", torch.zeros(K, L, D))  # slot (k, i): a feature of class k
        self.register_buffer("queue_size", torch.zeros(K, dtype=torch.long))  # filled slots (<= L)
        self.register_buffer("queue_ptr", torch.zeros(K, dtype=torch.long))  # next slot to write (the oldest)
        self.register_buffer("pl_hist", torch.zeros(K))  # m: histogram of the last full period
        self.register_buffer("pl_counts", torch.zeros(K))  # counts of the current period

    @torch.no_grad()
    def enqueue(self, feats: Tensor, labels: Tensor) -> None:
        """Push feats (N, D) of classes labels (N,) in order; each class keeps its last L features."""
        K, L = self.queue.shape[:2]
        onehot = F.one_hot(labels, K)  # (N, K)
        n = onehot.sum(0)  # (K,)
        rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # (N,) position within its class
        keep = rank >= n[labels] - L  # older ones would be overwritten in this same push
        slot = (self.queue_ptr[labels] + rank) % L  # (N,)
        self.queue[labels[keep], slot[keep]] = feats[keep].to(self.queue)
        self.queue_ptr.copy_((self.queue_ptr + n) % L)
        self.queue_size.copy_((self.queue_size + n).clamp(max=L))

    def prototypes(self) -> Tensor:
        """C (K, D): mean of each class's filled slots (unfilled slots are zero; an empty queue gives 0)."""
        return self.queue.sum(1) / self.queue_size.clamp(min=1).unsqueeze(1).to(self.queue)

    def refresh(self, model: nn.Module, x_l: Tensor, y_l: Tensor, step: int) -> Tensor:
        """Start of a step: the EMA encoder follows the student (as of the previous step), labelled features
        x_l (B, ...) of classes y_l (B,) are enqueued -> the prototypes C (K, D), no gradient."""
        follow_(self.encoder_ema, model, step, self.decay, self.warmup)
        self.encoder_ema.eval()
        with torch.no_grad():
            self.enqueue(self.encoder_ema(x_l).features.float(), y_l)  # (B, D)
        return self.prototypes()

    @torch.no_grad()
    def count(self, pseudo: Tensor, step: int, period: int) -> None:
        """Add this step's final pseudo-labels (U,); after every ``period``-th step the histogram is refreshed."""
        self.pl_counts += torch.bincount(pseudo, minlength=len(self.pl_counts)).to(self.pl_counts)
        if (step + 1) % period == 0:
            self.pl_hist.copy_(self.pl_counts)
            self.pl_counts.zero_()


@register
@dataclass(frozen=True)
@borrow(FixMatch, "threshold", "lambda_u", "T")
class DASO:
    name: ClassVar[str] = "daso"
    mu: ClassVar[int] = 2  # train.mu=auto: DASO's protocol
    strong: ClassVar[str] = "randaugment_mc"  # data.strong=auto: the reference's RandAugment(2, 10, p 0.5) + cutout 16
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "strong")

    queue_len: int = param(256, AT_LEAST_1)
    T_proto: float = param(0.05, POSITIVE)
    # 1.5 unlabelled distribution consistent with the labelled one, 0.3 otherwise
    T_dist: float = param(1.5, POSITIVE)
    lambda_align: float = param(1.0, NONNEG)
    warmup: float = param(0.02, UNIT)
    dist_period: int = param(100, AT_LEAST_1)

    @property
    def base(self) -> FixMatch:
        return FixMatch(threshold=self.threshold, lambda_u=self.lambda_u, T=self.T)

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return DASOState(model, ctx.num_classes, ctx.num_features, self.queue_len, ctx.ema, warmup=ctx.ema_warmup)

    def step(self, model, batch, state, progress):
        fm = self.base
        protos = state.refresh(model, batch.x_l["weak"], batch.y_l, batch.step)  # (K, D)
        out, B = fm.forward(model, batch)
        logits_w, logits_s = out.logits[B:].chunk(2)  # (U, K) each
        z_w, z_s = out.features[B:].chunk(2)  # (U, D) each, student
        loss_x = losses.ce(out.logits[:B], batch.y_l)
        p = fm.probs(logits_w)  # (U, K) linear classifier, detached
        q = _similarity(self, z_w.detach(), protos)  # (U, K)
        p_final, loss_align = _blend(self, state, p, q, progress), _align(self, z_s, protos, q, progress)
        loss_u, pseudo, mask = fm.unlabelled_loss(logits_s, p_final, None)
        state.count(pseudo, batch.step, self.dist_period)
        loss = loss_x + self.lambda_u * loss_u + self.lambda_align * loss_align
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u, "loss_align": loss_align}, pseudo, mask,
                          {"linear": p.argmax(-1), "sim": q.argmax(-1)})


def _similarity(alg, z_w: Tensor, protos: Tensor) -> Tensor:
    """DASO's similarity classifier q = softmax(cos(z_w, C) / T_proto) on weak features z_w (U, D) -> (U, K)."""
    return torch.softmax(prototype_logits(z_w, protos, alg.T_proto), dim=-1)


def _blend(alg, state: DASOState, p: Tensor, q: Tensor, progress: float) -> Tensor:
    """p' = (1 - v_k) p + v_k q after the warm-up, p before it. p, q (U, K) -> (U, K)."""
    return daso_blend(p, q, daso_weights(state.pl_hist, alg.T_dist)) if progress >= alg.warmup else p


def _align(alg, z_s: Tensor, protos: Tensor, q: Tensor, progress: float) -> Tensor:
    """The semantic alignment loss H(q, softmax(cos(z_s, C) / T_proto)), z_s (U, D) the strong view's features
    (with gradient); 0 before the warm-up."""
    if progress < alg.warmup:
        return torch.zeros((), device=q.device)
    return losses.soft_ce(prototype_logits(z_s, protos, alg.T_proto), q)


@register
@dataclass(frozen=True)
@borrow(ReMixMatch)  # ReMixMatch's fields and defaults (see remixmatch.py), then DASO's
@borrow(DASO, "queue_len", "T_proto", "T_dist", "lambda_align", "warmup", "dist_period")
class DASOReMixMatch:
    name: ClassVar[str] = "daso_remixmatch"
    mu: ClassVar[int] = 2  # train.mu=auto: DASO's protocol
    views_l: ClassVar[tuple] = ("weak", "strong")

    @property
    def base(self) -> ReMixMatch:
        return ReMixMatch(K=self.K, T=self.T, alpha=self.alpha, lambda_u=self.lambda_u, lambda_u1=self.lambda_u1,
                          lambda_rot=self.lambda_rot, rampup=self.rampup, dist_buffer=self.dist_buffer)

    @property
    def views_u(self) -> tuple:
        return self.base.views_u

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return DASOState(model, ctx.num_classes, ctx.num_features, self.queue_len, ctx.ema,
                         base=self.base.init_state(model, ctx), warmup=ctx.ema_warmup)

    def step(self, model, batch, state, progress):
        rm = self.base
        protos = state.refresh(model, batch.x_l["weak"], batch.y_l, batch.step)  # (K, D)
        _, q_rm, out_w = rm.guess(model, batch.x_u["weak"], state.base)  # (U, K) aligned, sharpened
        q = _similarity(self, out_w.features.detach(), protos)  # (U, K)
        target = _blend(self, state, q_rm, q, progress)
        loss, terms, out, n = rm.train_toward(model, batch, state.base, target, progress)
        loss_align = _align(self, out.features[n:n + len(q)], protos, q, progress)  # first strong view
        pseudo = target.argmax(-1)
        state.count(pseudo, batch.step, self.dist_period)
        return StepOutput(loss + self.lambda_align * loss_align, {**terms, "loss_align": loss_align}, pseudo,
                          torch.ones_like(pseudo, dtype=torch.float), {"linear": q_rm.argmax(-1), "sim": q.argmax(-1)})
