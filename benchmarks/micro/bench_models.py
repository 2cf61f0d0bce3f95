"""Forward + backward throughput of every model, fp32 vs bf16 autocast, channels_last off / on.

    python benchmarks/micro/bench_models.py                  # all models at their typical sizes
    python benchmarks/micro/bench_models.py --models smallcnn --variants   # + the smallcnn design options
    python benchmarks/micro/bench_models.py --batch wrn=64 --steps 5

Prints a markdown table of images/s (median over --steps timed steps after --warmup untimed
ones; a step = forward, cross-entropy, backward, zero_grad; no optimizer). The CPU may be
shared with other jobs: the last column is the 1-minute load average after the row (about
--threads when the benchmark ran alone); repeat and compare medians, read numbers as +-10 %.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from semisup.config import ModelConfig
from semisup.models import MODELS, Classifier, build_model
from semisup.models.base import gap

# name -> (in_channels, image_size, batch): smallcnn / lenet on Fashion-MNIST-like 28x28x1 at a
# FixMatch-ish CPU batch; wrn / resnet18 on CIFAR 32x32x3 at FixMatch's 64 + 2 * 448 = 960
# (resnet18 at 256: ~4x wrn's compute per image, 960 would take minutes per configuration).
TYPICAL = {
    "smallcnn": (1, 28, 512),
    "lenet": (1, 28, 512),
    "wrn": (3, 32, 960),
    "resnet18": (3, 32, 256),
}
MODES = [("fp32", False, False), ("fp32+CL", False, True), ("bf16", True, False), ("bf16+CL", True, True)]


def cba(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]


class _Seq(nn.Sequential):
    def forward(self, x):
        return gap(super().forward(x))  # (B, C)


def _vgg(convs_per_stage: int) -> Classifier:
    layers, cin = [], 1
    for cout in (32, 64, 128):
        for _ in range(convs_per_stage):
            layers += cba(cin, cout)
            cin = cout
        layers.append(nn.MaxPool2d(2))
    return Classifier(_Seq(*layers), 128, 10)


def smallcnn_variants() -> dict:
    """Factories of the designs weighed for `smallcnn` (widths 32-64-128, 28x28x1, 10 classes)."""
    return {
        "3 convs, conv-BN-act-pool": lambda: _vgg(1),
        "6 convs, conv-BN-act-pool": lambda: _vgg(2),
        "6 convs, conv-pool-BN-act (chosen)": lambda: build_model(ModelConfig(name="smallcnn"), 10, 1, 28),
    }


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, warmup: int, steps: int,
               opt: torch.optim.Optimizer | None = None) -> float:
    """Median seconds per forward+backward step (+ the optimizer's step when ``opt`` is given)."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).logits, y)
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, make, c: int, s: int, b: int, args) -> str:
    cells = []
    for _, bf16, cl in MODES:
        torch.manual_seed(0)
        model = make().train()
        x = torch.randn(b, c, s, s)  # (B, C, H, W)
        y = torch.randint(0, 10, (b,))
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        sec = time_steps(model, x, y, bf16, args.warmup, args.steps)
        cells.append(f"{b / sec:,.0f} ({sec * 1000:,.0f} ms)")
    params = sum(p.numel() for p in model.parameters())
    load = os.getloadavg()[0]  # ~threads when alone; higher means another job shared the cores
    return f"| {name} | {c}x{s}x{s} | {b} | {params:,} | " + " | ".join(cells) + f" | {load:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(TYPICAL), help=f"from: {', '.join(MODELS.names())}")
    ap.add_argument("--batch", nargs="*", default=[], help="overrides as name=N, e.g. wrn=64")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", action="store_true", help="also time the smallcnn design options")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.batch)}

    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps after {args.warmup}")
    print("images/s (ms per forward+backward step); CL = channels_last\n")
    print("| model | input | batch | params | " + " | ".join(m for m, _, _ in MODES) + " | load |")
    print("|---|---|---|---|" + "---|" * (len(MODES) + 1))
    for name in args.models:
        c, s, b = TYPICAL.get(name, (3, 32, 256))
        b = batch.get(name, b)
        make = lambda name=name, c=c, s=s: build_model(ModelConfig(name=name), 10, c, s)
        print(bench(name, make, c, s, b, args), flush=True)
    if args.variants:
        for vname, make in smallcnn_variants().items():
            print(bench(f"smallcnn option: {vname}", make, 1, 28, batch.get("smallcnn", 512), args), flush=True)


if __name__ == "__main__":
    main()
