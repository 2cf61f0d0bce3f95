"""What a checkpoint holds: one list of components, each saved with ``state_dict()`` and restored with
``load_state_dict()``, plus the loop's own counters. Nothing is saved that a resume does not restore
(``meta`` is checked against the run instead: a checkpoint of another model or dataset is refused)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint
from ..errors import UserError


@dataclass
class LoopState:
    """The loop's counters. ``train_seconds`` is the training time of earlier processes of this run (a resumed
    run adds its own); ``best`` the evaluation that made best.pt ({"score": -inf} before the first)."""

    step: int = 0
    best: dict = field(default_factory=lambda: {"score": -math.inf})
    train_seconds: float = 0.0
    skipped: int = 0  # train.nonfinite=skip: steps skipped since the run began
    stalled: bool = False  # train.patience ended the run (a pure function of best and step: not saved)


def components(s, source, interval) -> dict:
    """name -> the object whose state a checkpoint keeps under that key (None where the run has none)."""
    return {"model": s.model, "ema": s.ema.module if s.ema is not None else None, "optimizer": s.opt,
            "alg_state": s.state, "cta": source.cta, "runtime": s.rt, "interval": interval}


def state(parts: dict, loop: LoopState, seconds: float, meta: dict) -> dict:
    """The checkpoint of ``loop.step`` (``seconds``: the run's training time so far)."""
    return {"step": loop.step, **{k: v.state_dict() if v is not None else None for k, v in parts.items()},
            "best": loop.best, "train_seconds": seconds, "skipped_steps": loop.skipped, "meta": meta}


def restore(parts: dict, loop: LoopState, run_dir: Path, meta: dict) -> Path | None:
    """Load the newest good checkpoint of ``run_dir`` (last.pt, else last.prev.pt) into ``parts`` and ``loop``;
    returns the file read, or None when the run stopped before its first checkpoint (nothing is changed)."""
    ckpt, path = checkpoint.load_latest(run_dir, missing_ok=True)
    if ckpt is None:
        return None
    checkpoint.check_meta(ckpt, meta, path)
    try:
        for name, obj in parts.items():
            if obj is not None and (name != "interval" or ckpt.get("interval")):  # older runs kept no interval
                obj.load_state_dict(ckpt[name])
        loop.step, loop.best, loop.train_seconds = ckpt["step"], ckpt["best"], ckpt["train_seconds"]
        loop.skipped = ckpt.get("skipped_steps", 0)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {str(path)!r} does not match this model/dataset/algorithm: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    return path
