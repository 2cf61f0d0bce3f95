"""THE training loop. Nothing else in semisup iterates over batches or calls backward().

One loop for every algorithm, read top to bottom in ``run``; each piece lives in ``semisup/loop``:

    prepare(cfg) -> Setup       data, split, model, EMA, algorithm state, optimiser, DDP (writes nothing)
    RunDir                      checks the run directory, then the only writer into it (rank 0)
    BatchSource.batch(k)        the batch of step k: a pure function of (seed, k, rank), so resume is exact
    optimize(...)               one step: LR / BN momentum, forward + losses, non-finite policy, backward, EMA
    IntervalStats               the training statistics since the last evaluation
    Evaluator                   test / validation metrics of the EMA model, and what best.pt is chosen on
    checkpoints                 the components a checkpoint saves and a resume restores
    Stopper, Monitor            signals / time limit / patience; progress bar and TensorBoard
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from . import allocator, dist
from .config import Config
from .errors import LostRank
from .loop import checkpoints
from .loop.batches import BatchSource
from .loop.checkpoints import LoopState
from .loop.evaluator import Evaluator
from .loop.interval import IntervalStats
from .loop.monitor import Monitor
from .loop.optimize import NonFinite, lr_at, optimize
from .loop.rundir import RunDir, eval_part
from .loop.setup import Setup, data_fingerprint, prepare
from .loop.stopper import Stopper, stalled
from .metrics import apr, ler
from .runlock import RunLock


@dataclass
class TrainResult:
    run_dir: Path
    final: dict  # the last evaluation ({"step", "test": {...}, "val": {...}?}; "val" alone without a test set)
    best: dict  # the evaluation that produced best.pt
    steps: int
    train_seconds: float
    images_per_s: float


def train(cfg: Config, arrays: dict | None = None, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run (or resume) one training run described by ``cfg``; returns the final metrics. One process per run
    directory: a second train / --resume on a directory another process is training in fails at once."""
    lock = RunLock(Path(cfg.run.out))
    try:
        return run(cfg, arrays, resume, overwrite, lock)
    except RuntimeError as e:
        if dist.communication_failed(e):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise LostRank(f"lost contact with another process of this job ({first}); it stops here: once every "
                           f"rank can run again, continue with --resume --run.out={cfg.run.out}") from None
        raise
    finally:
        lock.release()


def run(cfg: Config, arrays: dict | None, resume: bool, overwrite: bool, lock: RunLock) -> TrainResult:
    s = prepare(cfg, arrays)
    run_dir = RunDir(cfg, lock, s.rt.dist.main)
    fingerprint = data_fingerprint(s.ds)
    manifest = {**s.split.manifest(s.ds.train_y, cfg.run.seed, s.ds.num_classes), "data_fingerprint": fingerprint}
    run_dir.check(resume, overwrite, fingerprint)
    run_dir.create(resume, manifest)  # from here on the run directory is ours (rank 0 alone writes)
    loop = Loop(s, run_dir)
    if resume:
        loop.resume(manifest)
    monitor = Monitor(cfg, run_dir.path, loop.state.step, s.rt.dist.main)
    with Stopper(cfg, s.rt.device, s.rt.dist.main) as stopper:
        try:
            loop.run(stopper, monitor)
        finally:
            monitor.close()
    return loop.finish(stopper)


class Loop:
    """The training loop's pieces for one run, and the loop itself (``run``)."""

    def __init__(self, s: Setup, run_dir: RunDir):
        self.s, self.run_dir = s, run_dir
        self.source = BatchSource(s)
        self.evaluator = Evaluator(s, self.source.view_fns["simclr"])
        self.interval = IntervalStats(s.ds.num_classes, s.rt.device, s.rt.dist.main)
        self.parts = checkpoints.components(s, self.source, self.interval)
        self.state = LoopState()
        self.nonfinite = NonFinite(s, self.state)
        self.images, self.t0 = 0, time.perf_counter()

    def resume(self, split_manifest: dict) -> None:
        """Restore the newest good checkpoint (none: the run starts from step 0), then rewind the log to it."""
        path = checkpoints.restore(self.parts, self.state, self.run_dir.path, self.s.meta)
        self.run_dir.resume_from(self.state.step if path else None, path, split_manifest)

    def run(self, stopper: Stopper, monitor: Monitor) -> None:
        """Steps state.step .. train.steps; evaluates every train.eval_every steps (and at a stop), checkpoints."""
        cfg, st = self.s.cfg, self.state
        self.s.model.train()
        self.t0 = time.perf_counter()
        st.stalled = stalled(st.best, st.step, cfg)  # a resumed run that had stopped early stays stopped
        while st.step < cfg.train.steps and not st.stalled:
            out, step_images = self.one_step()
            lr = lr_at(self.s, st.step - 1)
            monitor.step(st.step, out.loss, lr)
            halt = stopper.halt()  # a stop (time limit or a signal on any rank) evaluates too, as an extra record
            regular = st.step % cfg.train.eval_every == 0 or st.step == cfg.train.steps
            if regular or halt:
                self.evaluate(lr, step_images, monitor)
            if regular:  # not after a stop's extra record: the checkpoint carries the interval on, so the
                self.interval.reset()  # resumed run's next record averages the same steps
            if regular or halt or (cfg.train.save_every and st.step % cfg.train.save_every == 0):
                self.save("last.pt")
                dist.barrier()
            st.stalled = regular and stopper.patience_over(st.best, st.step)
            if halt or st.stalled:
                break

    def one_step(self) -> tuple:
        """Batch, optimisation step and statistics of step state.step; returns (StepOutput, images in the step)."""
        s, dd, step = self.s, self.s.rt.dist, self.state.step
        t_step = time.perf_counter()
        # the step's other randomness (dropout, an algorithm's masks) is a pure function of (seed, step, rank)
        # too, like its batch: a resumed run, every rank of it, continues the same streams
        torch.manual_seed(int(np.random.SeedSequence([s.cfg.run.seed, step, dd.rank, 11]).generate_state(1)[0]))
        with record_function("semisup.data"):
            batch, hidden = self.source.batch(step)
        self.interval.data_times.append(time.perf_counter() - t_step)
        out, applied = optimize(s, batch, step, self.nonfinite)
        if applied:
            self.interval.add(out, hidden)
        n = sum(len(v) for v in batch.x_l.values()) + sum(len(v) for v in batch.x_u.values())
        self.images += n * dd.world  # every rank processed an equal share
        self.interval.step_times.append(time.perf_counter() - t_step)
        self.state.step += 1
        return out, n * dd.world

    def seconds(self) -> float:
        """The run's training time so far, earlier processes included."""
        return self.state.train_seconds + time.perf_counter() - self.t0

    def save(self, name: str, seconds: float | None = None) -> None:
        seconds = self.seconds() if seconds is None else seconds
        self.run_dir.save(checkpoints.state(self.parts, self.state, seconds, self.s.meta), name)

    def evaluate(self, lr: float, step_images: int, monitor: Monitor) -> None:
        """Every rank's training statistics, then rank 0 evaluates, appends the record and saves best.pt if it
        is the best so far."""
        s, st = self.s, self.state
        if s.rt.dist.enabled:
            self.interval.all_reduce()
        if not s.rt.dist.main:
            return
        elapsed = time.perf_counter() - self.t0
        record = {"step": st.step, "lr": lr, "train_seconds": st.train_seconds + elapsed,
                  "train": self.interval.record(self.source.has_unlabelled)}
        measured = self.evaluator.measure()
        record.update(measured)
        part = eval_part(record)  # "val" when there is no test set
        record["images_per_s"] = self.images / elapsed if elapsed > 0 else 0.0
        record.update(self.interval.timing())
        record["step_images"] = step_images
        if s.cfg.train.nonfinite == "skip":
            record["skipped_steps"] = st.skipped  # since the run began
        self.run_dir.append(record)
        monitor.record(record, record[part]["top1"])
        score = self.evaluator.score(measured)
        if score > st.best["score"]:
            st.best = {"score": score, "step": st.step, "selected_on": self.evaluator.selected_on,
                       "metric": s.cfg.train.select_on,
                       f"{part}_top1": record[part]["top1"], f"{part}_balanced_acc": record[part]["balanced_acc"]}
            self.save("best.pt", st.train_seconds + elapsed)

    def finish(self, stopper: Stopper) -> TrainResult:
        """summary.json (rank 0), then the result; a run stopped by a signal raises Stopped after writing it."""
        s, st = self.s, self.state
        elapsed = time.perf_counter() - self.t0
        st.train_seconds += elapsed
        dist.barrier()
        final = self.run_dir.last_record()
        summary = summarize(s, st, final, self.images / elapsed if elapsed else 0.0)
        if s.rt.dist.main:
            summary.update(apr_summary(self.run_dir.records(), st.best, s.cfg))
            self.run_dir.write_summary(summary)
        stopper.raise_if_signalled(st.step, self.run_dir.path)
        return TrainResult(self.run_dir.path, final, st.best, st.step, st.train_seconds, summary["images_per_s"])


def summarize(s: Setup, st: LoopState, final: dict, images_per_s: float) -> dict:
    """summary.json: the final and best evaluations, how the run ended, and the machine facts."""
    cfg, rt, part = s.cfg, s.rt, eval_part(final)
    return {"steps": st.step, "train_seconds": st.train_seconds, "images_per_s": images_per_s,
            # without a test set the figures are validation figures: named val_*, and "evaluated_on" says so
            "evaluated_on": part,
            "final": {"step": final.get("step"), f"{part}_top1": final[part]["top1"],
                      f"{part}_balanced_acc": final[part]["balanced_acc"]},
            "best": st.best, "stopped_early": st.step < cfg.train.steps, "skipped_steps": st.skipped,
            "early_stopped": st.stalled and st.step < cfg.train.steps,  # train.patience ended it
            "allocator": allocator.describe(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
            "threads": torch.get_num_threads(), "amp": str(rt.amp_dtype), "device": str(rt.device),
            "fused_bn": rt.fused_bn}


def apr_summary(records: list[dict], best: dict, cfg: Config) -> dict:
    """APR, the average pass rate of the pseudo-labels: mean and std over the evaluations within
    train.apr_window x steps of the one that made best.pt (taken as convergence), and LER = that
    evaluation's test top-1 / APR mean (accuracy per unit of unlabelled data admitted by the mask: our
    reading of the ARL paper's learning efficiency). {} for runs without pseudo-labels."""
    recs = [r for r in records if "pass_rate" in r.get("train", {})]
    if not recs or "step" not in best:
        return {}
    c = min(range(len(recs)), key=lambda i: abs(recs[i]["step"] - best["step"]))
    half = int(cfg.train.apr_window * cfg.train.steps / cfg.train.eval_every)  # in evaluations
    mean, std = apr([r["train"]["pass_rate"] for r in recs], c, half)
    eff = ler(recs[c][eval_part(recs[c])]["top1"], mean)
    return {"apr": {"mean": mean, "std": std, "center_step": recs[c]["step"], "half_window_evals": half},
            "ler": None if eff != eff else eff}  # nan (nothing passed) -> null
