"""Exponential moving average of a model's weights, used for evaluation (FixMatch / USB: decay 0.999)."""
from __future__ import annotations

import copy

import torch
from torch import nn

# optim.ema_warmup: how the decay d_t of optimisation step t (0-based) rises to optim.ema
WARMUPS = ("recent", "uniform", "none")


def decay_at(decay: float, step: int, warmup: str = "recent") -> float:
    """The EMA decay used for the update after optimisation step ``step`` (0-based).

    - ``recent`` (the default): d_t = min(decay, (1 + t) / (10 + t)), TensorFlow's
      ExponentialMovingAverage with num_updates. The average covers about the last t / 9 steps, so
      a short run evaluates its recent weights; at decay 0.999 it equals the constant after 8,990 steps.
    - ``uniform``: d_t = min(decay, 1 - 1 / (t + 1)), Mean Teacher's warm-up: until 1 / (1 - decay)
      steps the uniform average of every weight since initialisation (at 0.999 the first 1000 steps,
      most of a CPU-budget run; the evaluated model then lags the trained one by half the run).
    - ``none``: the constant decay of FixMatch's and USB's code (the EMA starts from the random
      initialisation and needs ~1 / (1 - decay) steps to forget it).
    """
    if warmup == "recent":
        return min(decay, (1.0 + step) / (10.0 + step))
    if warmup == "uniform":
        return min(decay, 1.0 - 1.0 / (step + 1))
    if warmup == "none":
        return decay
    raise ValueError(f"unknown EMA warm-up {warmup!r}: one of {', '.join(WARMUPS)}")

class ModelEMA(nn.Module):
    """Holds a frozen copy; ``update`` does ema = d_t * ema + (1 - d_t) * w on parameters (one fused
    foreach lerp) and copies buffers (BN running statistics) as they are, as the references do.

    d_t = decay_at(decay, t, warmup) at optimisation step t (0-based: a pure function of the step).
    FixMatch uses a constant 0.999, which the default warm-up equals after 8,990 of its 2^20 steps;
    without a warm-up a run of a few thousand steps would evaluate mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: str = "recent"):
        super().__init__()
        decay_at(decay, 0, warmup)  # an unknown warm-up fails here, not at the first update
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pairs = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._pairs is None:  # cached lists: no per-step Python over named params
            src = dict(model.named_parameters())
            self._pairs = (
                [p for _, p in self.module.named_parameters()],
                [src[n] for n, _ in self.module.named_parameters()],
                [b for _, b in self.module.named_buffers()],
                [dict(model.named_buffers())[n] for n, _ in self.module.named_buffers()],
            )
        ema_p, p, ema_b, b = self._pairs
        d = decay_at(self.decay, step, self.warmup)
        torch._foreach_lerp_(ema_p, p, 1.0 - d)
        if ema_b:  # a model without buffers (no batch norm) has nothing to copy
            torch._foreach_copy_(ema_b, b)

    def forward(self, x):
        return self.module(x)


@torch.no_grad()
def follow_(ema: nn.Module, model: nn.Module, step: int, decay: float, warmup: str = "recent") -> None:
    """For an algorithm that keeps its own EMA copy ``ema`` of ``model`` (or of a part of it): called at
    the START of step ``step``, it applies the update ModelEMA.update(model, step - 1) made after the
    previous step, so the copy then equals the loop's EMA as of that step (step 0: nothing, the copy is
    the initial weights). Parameters lerp with d = decay_at(decay, step - 1, warmup), buffers are copied. Tensors
    are matched by order, not name, so a DDP- or torch.compile-wrapped model works too."""
    if step < 1:
        return
    e_p, m_p = list(ema.parameters()), [p.detach() for p in model.parameters()]
    e_b, m_b = list(ema.buffers()), list(model.buffers())
    if len(e_p) != len(m_p) or len(e_b) != len(m_b):
        raise ValueError(f"EMA copy has {len(e_p)} parameters / {len(e_b)} buffers, the model {len(m_p)} / "
                         f"{len(m_b)}: not the same module")
    d = decay_at(decay, step - 1, warmup)
    torch._foreach_lerp_(e_p, m_p, 1.0 - d)
    if e_b:
        torch._foreach_copy_(e_b, m_b)
