"""Batch norm + LeakyReLU alone: PyTorch's kernels vs semisup's fused CPU kernel (run.fused_bn).

Training-mode forward + backward on channels_last tensors of WRN-28-2's FixMatch step (960 images: 32
channels at 32x32, 64 at 16x16, 128 at 8x8), bf16 and fp32; median of --reps calls, the two paths
alternating. Also each path's input-gradient error against a float64 reference, as a relative L2 norm
(a max-norm would be dominated by the few elements whose pre-activation is within rounding of 0, where
the LeakyReLU mask may flip between float and float64 and that element's gradient changes by 0.9x).
Run it under jemalloc, as `semisup train` runs:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 \
        python benchmarks/micro/bench_bn_act.py --reps 9
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402

from semisup.models import fused  # noqa: E402

SHAPES = [(960, 32, 32, 32), (960, 64, 16, 16), (960, 128, 8, 8)]


def _case(shape, dtype):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(shape[1], eps=1e-3, momentum=0.01)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(shape) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    return bn, nn.LeakyReLU(0.1, inplace=True), x, dy


def _step(bn, act, x, dy, on: bool):
    fused.set_enabled(on)
    x.grad = bn.weight.grad = bn.bias.grad = None
    fused.bn_act(bn, act, x).backward(dy)
    return x.grad


def _dx_error(bn, x, dy, got) -> float:
    xd = x.detach().double().requires_grad_()
    y = F.leaky_relu(F.batch_norm(xd, None, None, bn.weight.detach().double(), bn.bias.detach().double(), True,
                                  0.0, bn.eps), 0.1)
    y.backward(dy.double())
    return ((got.double() - xd.grad).norm() / xd.grad.norm()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    a = p.parse_args()
    if fused.library() is None:
        sys.exit(f"the fused kernel is unavailable: {fused.unavailable_reason()}")
    before = fused.enabled()
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for shape in SHAPES:
            bn, act, x, dy = _case(shape, dtype)
            err = {on: _dx_error(bn, x, dy, _step(bn, act, x, dy, on)) for on in (False, True)}
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(a.reps):
                for on in (False, True):
                    t = time.perf_counter()
                    _step(bn, act, x, dy, on)
                    times[on].append(time.perf_counter() - t)
            med = {on: statistics.median(v) * 1e3 for on, v in times.items()}
            rows.append((str(dtype).replace("torch.", ""), "x".join(map(str, shape)), med[False], med[True],
                         err[False], err[True]))
            print(rows[-1], flush=True)
    fused.set_enabled(before)
    body = [f"Training-mode batch norm + LeakyReLU(0.1), forward + backward, channels_last, {torch.get_num_threads()} "
            f"threads, median of {a.reps} alternating calls. dx error: ||dx - dx_float64|| / ||dx_float64|| (L2).\n",
            "| dtype | N x C x H x W | PyTorch ms | fused ms | speed-up | PyTorch dx error | fused dx error |",
            "|---|---|---|---|---|---|---|"]
    for dt, shape, t0, t1, e0, e1 in rows:
        body.append(f"| {dt} | {shape} | {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | {e0:.1e} | {e1:.1e} |")
    results.publish("Batch norm + LeakyReLU: PyTorch's kernels vs the fused CPU kernel", "\n".join(body),
                    write=not a.no_write)


if __name__ == "__main__":
    main()
