"""``Stopper``: when the loop stops before train.steps: a signal, the time limit, or early stopping.

SIGTERM / SIGINT do not kill the step: the loop finishes it, evaluates, writes last.pt, then raises
:class:`Stopped`. In a DDP job every rank must stop at the same step, so each decision is agreed over
ranks (``dist.any_rank``).
"""
from __future__ import annotations

import signal
import time

from .. import dist
from ..config import Config


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGINT: the loop finished its step, evaluated and wrote last.pt, then raised this.
    The CLI exits with 128 + signum (143 for SIGTERM, 130 for SIGINT), the shell's "killed by"
    convention, so a scheduler or script can tell a pre-empted run (resume it) from a finished one."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def stalled(best: dict, step: int, cfg: Config) -> bool:
    """Early stopping: train.patience regular evaluations since the one that made best.pt. A pure
    function of the checkpointed ``best`` and the step, so a resumed early-stopped run stays stopped."""
    e = cfg.train.eval_every
    return cfg.train.patience > 0 and "step" in best and step // e - best["step"] // e >= cfg.train.patience


class Stopper:
    """A context manager: inside it SIGTERM / SIGINT only set ``signal``; the previous handlers come back after."""

    def __init__(self, cfg: Config, device, main: bool):
        self.cfg, self.device, self.main = cfg, device, main
        self.signal: int | None = None
        self.t0 = time.perf_counter()

    def __enter__(self):
        self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def _on_signal(self, sig, _frame) -> None:
        self.signal = sig

    def halt(self) -> bool:
        """A signal on any rank, or train.max_minutes of training in this process."""
        m = self.cfg.train.max_minutes
        timed_out = m > 0 and (time.perf_counter() - self.t0) / 60 > m
        return dist.any_rank(timed_out or bool(self.signal), self.device)

    def patience_over(self, best: dict, step: int) -> bool:
        """After a regular evaluation: rank 0 scored it, every rank stops alike."""
        return self.cfg.train.patience > 0 and dist.any_rank(self.main and stalled(best, step, self.cfg), self.device)

    def raise_if_signalled(self, step: int, run_dir) -> None:
        if self.signal and step < self.cfg.train.steps:
            name = signal.Signals(self.signal).name
            raise Stopped(f"stopped by {name} after step {step}; checkpoint {str(run_dir / 'last.pt')!r} written; "
                          f"continue with: semisup train --resume --run.out={run_dir}", self.signal)
