"""``optimize``: one optimisation step, the only place in semisup that calls backward().

For step k: the learning rate and the batch-norm momentum of step k, the algorithm's forward pass and
losses under autocast, the non-finite policy (``train.nonfinite``: stop, or skip the step and undo what
its forward pass changed), backward, the all-reduce of the algorithm's own parameters and buffers
(DDP averages the model's), the optimiser step, and the EMA update.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import record_function

from .. import dist
from ..algorithms import Batch
from ..algorithms.contract import StepOutput
from ..errors import UserError
from ..schedules import LR_SCHEDULES
from .checkpoints import LoopState
from .setup import Setup

MAX_SKIP_WARNINGS = 10  # train.nonfinite=skip: warn for the first few skipped steps, then only count them
MAX_CONSECUTIVE_SKIPS = 50  # ... and stop as `stop` would when this many in a row fail: the weights are broken


def lr_at(s: Setup, step: int) -> float:
    """The learning rate of ``step`` (optim.schedule)."""
    cfg = s.cfg
    return cfg.optim.lr * LR_SCHEDULES[cfg.optim.schedule](step, cfg.train.steps, cfg.optim.warmup_steps)


def set_step(s: Setup, step: int) -> None:
    """The learning rate and batch-norm momentum of ``step``. BN momentum:
    momentum_t = max(m, 1/(t+1)), a cumulative average for the first 1/m steps (``setup.batchnorms``);
    the attribute changes once, so torch.compile recompiles at most once for it."""
    lr = lr_at(s, step)
    for m, base in s.bns:
        want = None if step + 1 < 1.0 / base else base
        if m.momentum != want:
            m.momentum = want
    for g in s.opt.param_groups:
        g["lr"] = lr


class NonFinite:
    """train.nonfinite: "stop" raises on the first non-finite loss; "skip" undoes the step's forward pass
    (BN running statistics, the algorithm's state) and goes on, until the weights themselves are
    non-finite or MAX_CONSECUTIVE_SKIPS steps in a row failed. It counts skipped steps in ``loop.skipped``
    (checkpointed: the count covers the whole run)."""

    def __init__(self, s: Setup, loop: LoopState):
        self.s, self.loop, self.skip = s, loop, s.cfg.train.nonfinite == "skip"
        self.in_a_row = 0

    def snapshot(self):
        """What a forward pass changes besides the weights: BN running statistics and the algorithm's state."""
        if not self.skip:
            return None
        state = self.s.state
        bufs = [b.detach().clone() for b in self.s.model.buffers()]
        st = {k: v.detach().clone() for k, v in state.state_dict().items()} if state is not None else None
        return bufs, st

    @torch.no_grad()
    def _restore(self, snap) -> None:
        for b, saved in zip(self.s.model.buffers(), snap[0]):
            b.copy_(saved)
        if self.s.state is not None:
            self.s.state.load_state_dict(snap[1])

    def failed(self, out: StepOutput, step: int, snap) -> None:
        """A non-finite loss at ``step``: raise (stop, or skipping cannot help), or undo and count it."""
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (("loss", out.loss), *out.terms.items())
                          if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1)
        where = str(Path(self.s.cfg.run.out))
        if not self.skip:
            raise UserError(f"non-finite loss at step {step} ({terms}); stopped, {where!r} keeps the last good "
                            "checkpoint; lower optim.lr, set run.amp=off, or resume with --train.nonfinite=skip to "
                            "skip such steps")
        self._restore(snap)  # the forward pass may have put NaN into BN statistics
        self.in_a_row += 1
        broken = not all(bool(torch.isfinite(p).all()) for p in self.s.model.parameters())
        if broken or self.in_a_row >= MAX_CONSECUTIVE_SKIPS:
            why = "the weights themselves are non-finite" if broken else \
                f"so was every one of the last {self.in_a_row} steps"
            raise UserError(f"non-finite loss at step {step} ({terms}) and {why}: skipping steps cannot recover; "
                            f"{where!r} keeps the last good checkpoint; lower optim.lr and start again")
        self.loop.skipped += 1
        if self.s.rt.dist.main and self.loop.skipped <= MAX_SKIP_WARNINGS:
            more = "; further skips are only counted (skipped_steps in metrics.jsonl)" \
                if self.loop.skipped == MAX_SKIP_WARNINGS else ""
            print(f"semisup: warning: non-finite loss at step {step} ({terms}); step skipped "
                  f"(train.nonfinite=skip){more}", file=sys.stderr)


def optimize(s: Setup, batch: Batch, step: int, nonfinite: NonFinite) -> tuple[StepOutput, bool]:
    """One step on ``batch``: the algorithm's StepOutput, and whether the weights were updated (False: the
    loss was non-finite and train.nonfinite=skip skipped the step)."""
    set_step(s, step)
    snap = nonfinite.snapshot()
    with s.rt.autocast(), record_function("semisup.forward"):  # the forward pass and the losses
        out = s.cfg.algorithm.step(s.net, batch, s.state, step / s.cfg.train.steps)
    if dist.any_rank(not bool(torch.isfinite(out.loss)), s.rt.device):  # every rank stops or skips alike
        nonfinite.failed(out, step, snap)
        return out, False
    nonfinite.in_a_row = 0
    s.opt.zero_grad(set_to_none=True)
    with record_function("semisup.backward"):  # backward + all-reduce + optimizer step
        s.rt.backward_step(out.loss, s.opt, before_step=lambda: dist.all_reduce_(_state_grads(s)))
        dist.all_reduce_(_state_buffers(s))
    if s.ema is not None:
        with record_function("semisup.ema"):
            s.ema.update(s.model, step)
    return out, True


def _state_grads(s: Setup) -> list:
    """The gradients of the algorithm's own trainable parameters (rotation head): averaged over ranks by hand,
    as DDP only syncs the model's."""
    params = s.state.parameters() if s.state is not None else ()
    return [p.grad for p in params if p.requires_grad and p.grad is not None]


def _state_buffers(s: Setup) -> list:
    """The algorithm's float buffers (running distributions), averaged over ranks so every rank agrees."""
    return [b for b in (s.state.buffers() if s.state is not None else ()) if b.is_floating_point()]
