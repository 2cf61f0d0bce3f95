"""Pure functions of training progress t in [0, 1] (or of the step): ramps and learning-rate decay."""
from __future__ import annotations

import math


def fixmatch_cosine(step: int, total: int, warmup: int = 0) -> float:
    """LR multiplier: linear warm-up, then FixMatch's cos(7 pi k / 16 K) (ends at cos(7pi/16) ~ 0.2)."""
    if step < warmup:
        return (step + 1) / warmup
    k = step - warmup
    K = max(1, total - warmup)
    return math.cos(7.0 * math.pi * k / (16.0 * K))


def constant(step: int, total: int, warmup: int = 0) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def cosine_zero(step: int, total: int, warmup: int = 0) -> float:
    """LR multiplier: linear warm-up, then the full half cosine 0.5 (1 + cos(pi k / K)), k counted after the
    warm-up, which would reach 0 at k = K (SimCLR's schedule; FixMatch's ``cosine`` stops at 0.2)."""
    if step < warmup:
        return (step + 1) / warmup
    K = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, K) / K))


LR_SCHEDULES = {"cosine": fixmatch_cosine, "cosine_zero": cosine_zero, "constant": constant}


def linear_ramp(t: float, start: float, end: float) -> float:
    """0 before ``start``, 1 after ``end``, linear in between (Pseudo-Label's alpha(t) shape)."""
    if t <= start:
        return 0.0
    if t >= end:
        return 1.0
    return (t - start) / (end - start)


def sigmoid_rampup(t: float, length: float = 1.0) -> float:
    """exp(-5 (1 - t/length)^2) for t < length, then 1 (Laine & Aila 2017; Tarvainen & Valpola 2017)."""
    if length <= 0 or t >= length:
        return 1.0
    x = 1.0 - max(t, 0.0) / length
    return math.exp(-5.0 * x * x)
