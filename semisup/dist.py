"""Multi-process training (PyTorch DDP, launched by torchrun): process group, rank helpers.

Global-batch semantics: ``train.batch_size`` (and ``mu``) describe the GLOBAL batch; each of the
``world`` ranks draws ``batch_size / world`` labelled and ``mu * batch_size / world`` unlabelled
images of the same global batch (the stream is a pure function of (seed, step), so the shares are
disjoint and together equal the single-process batch). DDP averages gradients over ranks, so with
per-rank losses that are means over equal-sized shares the update equals the single-process one
(up to batch-norm statistics, which stay per rank as in USB/FixMatch). The learning rate is taken
as given: if you grow the global batch, scale ``optim.lr`` linearly (Goyal et al. 2017).
Augmentation draws are seeded by (seed, step, rank). Only rank 0 writes the run directory.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(use_cuda: bool, timeout_s: float) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); NCCL on GPU,
    gloo on CPU. ``timeout_s`` bounds every collective: a lost rank fails the job instead of hanging it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local)


def all_reduce_(tensors: list[torch.Tensor], op: str = "mean") -> None:
    """In-place sum or mean over ranks of each tensor (no-op outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if op == "mean":
            t.div_(world)


def any_rank(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is True on any (stop requests must be agreed on)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def communication_failed(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank died or timed out (gloo / NCCL)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(k in text for k in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out",
                                   "timed out", "Broken pipe"))
