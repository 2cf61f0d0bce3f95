"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017, "Mean teachers are better role models", arXiv:1703.01780).

The teacher is an exponential moving average of the student's weights; the student's class distribution on one
augmentation is pulled toward the teacher's on another:

    L = CE(l_lab, y) + lambda_u * r(t) * mean_{b,k}( (softmax(student(weak)_b) - softmax(teacher(weak2)_b))_k^2 )
    teacher <- a_n teacher + (1 - a_n) student,   a_n = min(1 - 1 / (n + 1), decay)
    r(t) = exp(-5 (1 - t / rampup)^2) for t < rampup, then 1

Defaults from the official code (github.com/CuriousAI/mean-teacher): decay 0.999 (the CIFAR-10 runs; the SVHN
runs use 0.99 during the ramp-up: ``decay_rampup=0.99``), the warm-up a_n of its PyTorch
``update_ema_variables`` (a true average of the weights seen so far until 1 - 1/(n+1) exceeds ``decay``),
lambda_u = 100 on MSE averaged over classes (TensorFlow ``max_consistency_cost``; its final runs scale it by the
labelled fraction M/N because their cross-entropy is averaged over the whole mixed minibatch; here both terms
are per-batch means, so 100 unscaled is the same balance), sigmoid ramp-up over 40000 of 150000 steps
(``rampup`` = 0.267). The teacher side carries no gradient (stop-gradient in both official codes); the student
side does. USB's Mean Teacher computed this loss on the teacher's logits twice, so unlabelled data gave the
student no gradient: tests/algorithms/test_contract.py checks it.

State (``MeanTeacherState``, checkpointed with the run): ``teacher``, a deep copy of the model with
requires_grad False (so the loop does not optimise it), buffers included, and ``updates``, the number of EMA
updates made so far (n above). Algorithms may not touch the optimizer, so the teacher is updated at the START
of each step from the student's current weights, i.e. the weights after the previous step's optimizer update.
Step k therefore sees exactly the teacher the official code uses at iteration k (its n-th update uses the same
weights and the same a_n); the only shift is that the update from the final optimizer step is never applied,
and a checkpoint holds the teacher one update behind the student (resuming applies it first, so a resumed run
matches an uninterrupted one).

Deviations and details:
- Student: one forward pass over [labelled weak, unlabelled "weak"] (BN statistics over that mixed batch);
  teacher: its own pass over unlabelled "weak2" (an independent weak draw) under no_grad. The teacher runs in
  the student's mode (train during training: dropout and batch statistics, as the official code's
  ``ema_model.train()``); only parameters are averaged, and the teacher's BN running statistics are its own,
  updated by its forward passes, also as in the official PyTorch code.
- Consistency on the unlabelled batch only (the official code also applies it to labelled images); no input
  Gaussian noise; r(0) = exp(-5) rather than 0.
- Stats: ``pseudo_label`` = argmax of the teacher's distribution, ``mask`` = ones (reporting only).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import losses
from ..config.rules import NONNEG, UNIT, UNIT_OPEN, check_fields, param
from ..schedules import sigmoid_rampup
from .contract import StepOutput
from .registry import register


class MeanTeacherState(nn.Module):
    """The EMA teacher (frozen deep copy of the student) and the count of EMA updates made so far."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def decay_at(self, decay: float) -> float:
        """a_n = min(1 - 1 / (n + 1), decay) for the next update, n = updates made so far."""
        n = int(self.updates)
        return min(1.0 - 1.0 / (n + 1), decay)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """teacher = a_n * teacher + (1 - a_n) * student on parameters; then n += 1."""
        t_params, s_params = list(self.teacher.parameters()), list(student.parameters())
        if len(t_params) != len(s_params):
            raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}: not the same model")
        a = self.decay_at(decay)
        torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - a)
        self.updates += 1


@register
@dataclass(frozen=True)
class MeanTeacher:
    name: ClassVar[str] = "mean_teacher"
    mu: ClassVar[int] = 1  # train.mu=auto: USB's classic-CV configs
    views_l: ClassVar[tuple] = ("weak",)
    views_u: ClassVar[tuple] = ("weak", "weak2")

    decay: float = param(0.999, UNIT_OPEN)
    lambda_u: float = param(100.0, NONNEG)
    rampup: float = param(40000.0 / 150000.0, UNIT)
    # the teacher's decay while the consistency weight ramps up (progress < rampup), ``decay`` after it: the
    # TensorFlow code's ema_decay_during_rampup (its default 0.99, kept by its SVHN runs; its CIFAR-10 scripts
    # set 0.999, the value of ``decay``). 0: ``decay`` throughout (those CIFAR-10 runs, the PyTorch code)
    decay_rampup: float = param(0.0, UNIT_OPEN)

    def decay_now(self, progress: float) -> float:
        """The teacher's decay cap for the update at ``progress``: decay_rampup during the ramp-up if set."""
        return self.decay_rampup if self.decay_rampup > 0 and progress < self.rampup else self.decay

    def validate(self):
        check_fields(self)

    def weight(self, progress: float) -> float:
        """lambda_u * r(t) with t = progress in [0, 1]."""
        return self.lambda_u * sigmoid_rampup(progress, self.rampup)

    def init_state(self, model, ctx):
        return MeanTeacherState(model)

    def step(self, model, batch, state, progress):
        state.update(model, self.decay_now(progress))  # fold in the weights the previous optimizer step produced
        x_l, u_s, u_t = batch.x_l["weak"], batch.x_u["weak"], batch.x_u["weak2"]
        B = x_l.shape[0]
        logits = model(torch.cat([x_l, u_s])).logits  # (B + U, K)
        logits_l, logits_s = logits[:B], logits[B:]  # (B, K), (U, K) student, differentiable
        state.teacher.train(model.training)
        with torch.no_grad():
            logits_t = state.teacher(u_t).logits.float()  # (U, K) teacher, no graph
        loss_x = losses.ce(logits_l, batch.y_l)
        loss_u = losses.softmax_mse(logits_s, logits_t)  # gradient reaches the student only
        loss = loss_x + self.weight(progress) * loss_u
        pseudo = logits_t.argmax(dim=-1)  # (U,) int64, reporting only
        mask = torch.ones_like(pseudo, dtype=torch.float32)  # (U,)
        return StepOutput(loss, {"loss_x": loss_x, "loss_u": loss_u}, pseudo, mask)
