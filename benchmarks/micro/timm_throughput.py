"""Training throughput (images/s) of timm backbones as semisup builds them (model.name=timm:<arch>).

    python benchmarks/micro/timm_throughput.py                                   # resnet18, convnext_atto, 32 / 96 px
    python benchmarks/micro/timm_throughput.py --archs vit_tiny_patch16_224 --sizes 32 96 --batch 64 --steps 5

A step = forward, cross-entropy, backward, SGD (Nesterov momentum) update of one batch of --batch
random images, with what semisup's runtime does on this CPU: channels_last and bf16 autocast when the
CPU computes bf16 natively (AVX512_BF16 / AMX; else fp32). Weights are random (speed does not depend
on them). Median over --steps timed steps after --warmup untimed ones. Prints a markdown table and
writes a JSON record (--out) with the exact command, torch / timm versions and the CPU's model name.
On a shared machine the figures move with the other jobs: the load column is the 1-minute load
average after the row; read the numbers as +-10 %.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from semisup.config import ModelConfig
from semisup.models import build_model
from semisup.runtime import cpu_has_native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
from results import cpu_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_models.py beside it
from bench_models import time_steps  # noqa: E402


def time_step(arch: str, size: int, batch: int, bf16: bool, warmup: int, steps: int) -> tuple[float, int]:
    """Median seconds per training step, and the parameter count."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=f"timm:{arch}"), 10, 3, size).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True, foreach=True)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)  # (B, C, H, W)
    y = torch.randint(0, 10, (batch,))
    return time_steps(model, x, y, bf16, warmup, steps, opt), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["resnet18", "convnext_atto"], help="timm architectures")
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 96], help="image sides in pixels")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast even where the CPU has native bf16")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "records" / "timm_throughput.json"),
                    help="JSON record to write ('' to skip)")
    ap.add_argument("--note", default="", help="free text stored in the record (e.g. 'shared machine')")
    args = ap.parse_args()
    import timm

    torch.set_num_threads(args.threads)
    bf16 = cpu_has_native_bf16() and not args.fp32
    command = shlex.join(["python", "benchmarks/micro/timm_throughput.py", *sys.argv[1:]])
    cpu = cpu_name() or platform.processor() or "unknown"
    head = (f"{cpu}, {os.cpu_count()} logical CPUs, {args.threads} thread(s); torch {torch.__version__}, "
            f"timm {timm.__version__}; {'bf16 autocast' if bf16 else 'fp32'} + channels_last; batch {args.batch}; "
            f"median of {args.steps} steps after {args.warmup}")
    print(f"$ {command}\n{head}" + (f"\n{args.note}" if args.note else "") + "\n")
    print("| backbone | input | params | images/s | ms / step | load |")
    print("|---|---|---|---|---|---|")
    rows = []
    for arch in args.archs:
        for size in args.sizes:
            sec, params = time_step(arch, size, args.batch, bf16, args.warmup, args.steps)
            load = os.getloadavg()[0]
            rows.append({"arch": arch, "image_size": size, "batch": args.batch, "params": params,
                         "images_per_s": round(args.batch / sec, 1), "ms_per_step": round(sec * 1000, 1),
                         "load_1min": round(load, 2)})
            print(f"| timm:{arch} | 3x{size}x{size} | {params:,} | {args.batch / sec:,.0f} | {sec * 1000:,.0f} | "
                  f"{load:.1f} |", flush=True)
    if args.out:
        record = {"command": command, "torch": torch.__version__, "timm": timm.__version__, "cpu": cpu,
                  "logical_cpus": os.cpu_count(), "threads": args.threads, "bf16": bf16, "channels_last": True,
                  "steps": args.steps, "warmup": args.warmup, "note": args.note,
                  "step": "forward + cross-entropy + backward + SGD update", "rows": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
