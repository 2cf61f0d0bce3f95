"""``Monitor``: what a person watches while a run trains: the progress bar (stderr, rank 0, run.progress)
and TensorBoard scalars (run.tensorboard, under RUN_DIR/tb). Neither changes a result."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import Config
from .rundir import flat


def summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a declared dependency
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


class Monitor:
    def __init__(self, cfg: Config, run_dir: Path, start: int, main: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=cfg.train.steps, initial=start, disable=not (cfg.run.progress and main),
                        dynamic_ncols=True, mininterval=1.0, unit="step", file=sys.stderr)
        self.writer = summary_writer(run_dir) if cfg.run.tensorboard and main else None
        self.last_eval = None

    def step(self, step: int, loss, lr: float) -> None:
        self.bar.update(1)
        if step % 10 == 0:
            self.bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.4f}",
                                 **({"acc": f"{self.last_eval:.4f}"} if self.last_eval is not None else {}))

    def record(self, record: dict, top1: float) -> None:
        self.last_eval = top1
        if self.writer is not None:
            for k, v in flat({p: record[p] for p in ("train", "test", "val") if p in record}).items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])
            self.writer.add_scalar("lr", record["lr"], record["step"])
            self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
