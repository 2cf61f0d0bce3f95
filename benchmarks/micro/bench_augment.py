"""Throughput of the batched augmentation views vs torchvision's per-image RandAugment.

Run:  .venv/bin/python benchmarks/micro/bench_augment.py [--repeats 7]
Prints a markdown table: images/s = batch size / median wall time of `repeats` calls after one
warm-up call, for batches of 448 uint8 images, with torch.set_num_threads(1) and (2).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from semisup.data import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402

B = 448  # FixMatch unlabelled batch (mu * B = 7 * 64)
SHAPES = {"28x28x1": (B, 1, 28, 28), "32x32x3": (B, 3, 32, 32)}


def timeit(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def equalize_bincount(x: torch.Tensor) -> torch.Tensor:
    """Our own vectorised PIL equalize (one bincount over offset bins), kept to compare with
    torchvision's batched kernel, which transforms.equalize uses because it was faster."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()  # (BC, HW)
    offs = torch.arange(b * c).unsqueeze(1) * 256
    hist = torch.bincount((flat + offs).view(-1), minlength=b * c * 256).view(b * c, 256)
    step = (h * w - hist.gather(1, flat.amax(1, keepdim=True))) // 255  # (BC, 1)
    lut = (step // 2 + hist.cumsum(1) - hist) // step.clamp(min=1)
    lut = torch.where(step == 0, torch.arange(256).expand_as(lut), lut).clamp_(max=255)
    return lut.gather(1, flat).to(torch.uint8).view(b, c, h, w)


def cases(x: torch.Tensor, gen: torch.Generator, tv_ra: v2.RandAugment) -> dict:
    mean, std = (0.5,) * x.shape[1], (0.25,) * x.shape[1]
    return {
        "weak (flip + crop)": lambda: T.weak(x, gen),
        "randaugment": lambda: T.randaugment(x, gen),
        "strong (weak + RA + cutout)": lambda: T.strong(x, gen),
        "to_float": lambda: T.to_float(x, mean, std),
        "equalize (torchvision batched)": lambda: T.equalize(x),
        "equalize (bincount)": lambda: equalize_bincount(x),
        "reference: v2.RandAugment per image": lambda: torch.stack([tv_ra(img) for img in x]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args()
    rows = [f"Batches of {B} uint8 images, median of {args.repeats} calls after a warm-up; `strong` = flip/crop "
            "+ RandAugment (FixMatch) + Cutout; the reference is torchvision v2 RandAugment applied image by "
            "image (no flip, crop or cutout).\n",
            "| op | image | threads | images/s | ms / batch |", "|---|---|---|---:|---:|"]
    tv_ra = v2.RandAugment()  # num_ops=2, magnitude=9
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, shape in SHAPES.items():
            x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            gen = torch.Generator().manual_seed(0)
            for op, fn in cases(x, gen, tv_ra).items():
                s = timeit(fn, args.repeats)
                rows.append(f"| {op} | {name} | {threads} | {B / s:,.0f} | {s * 1e3:.2f} |")
                print(rows[-1], flush=True)
    results.publish("Data pipeline alone: augmented images/s", "\n".join(rows), write=not args.no_write)


if __name__ == "__main__":
    main()
