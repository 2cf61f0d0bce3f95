"""Peak memory of training on a pool of 50,000 unlabelled images, at 96 x 96 and 224 x 224.

Builds (once) a pool from the CIFAR-10 JPEG folder: 25 labelled images per class from train/, and 50,000
unlabelled ones (the rest of train/ and the first test/ images, as symbolic links in one flat folder), no
test set. Then, per size, runs `semisup train` twice, with an empty cache (decoding every image into the
cache, then training) and with the cache filled, and reads the peak resident set size of the training
process (summary.json's peak_rss_mb: getrusage ru_maxrss). The images in memory as uint8 would need
50,000 x 3 x S x S bytes (1.3 GiB at 96, 7.0 GiB at 224): the pool is read per batch from the cache file.

    python benchmarks/micro/pool_memory.py --src /tmp/cifar10-jpeg --root /tmp/pool50k --sizes 96,224
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def build_pool(src: Path, root: Path, per_class: int, unlabelled: int) -> None:
    if (root / "unlabelled").is_dir() and len(os.listdir(root / "unlabelled")) == unlabelled:
        return
    shutil.rmtree(root, ignore_errors=True)
    rest = []
    for c in sorted(p.name for p in (src / "train").iterdir() if p.is_dir()):
        files = sorted((src / "train" / c).iterdir())
        (root / "labelled" / c).mkdir(parents=True)
        for f in files[:per_class]:
            os.symlink(f.resolve(), root / "labelled" / c / f.name)
        rest += files[per_class:]
    rest += sorted(p for c in sorted((src / "test").iterdir()) for p in sorted(c.iterdir()))
    if len(rest) < unlabelled:
        raise SystemExit(f"{src} has {len(rest)} images left for the pool, fewer than {unlabelled}")
    (root / "unlabelled").mkdir()
    for i, f in enumerate(rest[:unlabelled]):
        os.symlink(f.resolve(), root / "unlabelled" / f"u{i:06d}{f.suffix}")


def run(root: Path, size: int, cache: Path, steps: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "semisup", "train", "--data.name=pool", f"--data.root={root}",
           f"--data.image_size={size}", "--model.name=smallcnn", f"--train.steps={steps}",
           f"--train.eval_every={steps}", "--train.batch_size=16", "--train.mu=7", f"--run.threads={threads}",
           "--run.progress=false", "--run.tensorboard=false", f"--run.out={out}", "--overwrite"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "SEMISUP_CACHE": str(cache)})
    if p.returncode:
        raise SystemExit(f"semisup train failed: {p.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {"peak_rss_mb": s["peak_rss_mb"], "seconds": round(time.perf_counter() - t, 1),
            "images_per_s": round(s["images_per_s"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="a folder with train/<class>/* and test/<class>/*")
    p.add_argument("--root", required=True, help="where the pool is built (symbolic links)")
    p.add_argument("--sizes", default="96,224")
    p.add_argument("--unlabelled", type=int, default=50000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="/tmp/semisup-pool-memory-cache", help="emptied before each size")
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    a = p.parse_args()
    root, cache = Path(a.root), Path(a.cache)
    build_pool(Path(a.src), root, 25, a.unlabelled)
    rows = ["| image size | pool as uint8 in memory | first run: decode + train, peak RSS | cached: train, peak RSS "
            "| cache on disk |", "|---|---|---|---|---|"]
    for size in map(int, a.sizes.split(",")):
        shutil.rmtree(cache, ignore_errors=True)
        first = run(root, size, cache, a.steps, a.threads, Path(f"runs/pool_memory_{size}"))
        second = run(root, size, cache, a.steps, a.threads, Path(f"runs/pool_memory_{size}"))
        disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        ram = a.unlabelled * 3 * size * size
        rows.append(f"| {size} x {size} | {ram / 2**30:.2f} GiB | {first['peak_rss_mb']:.0f} MB ({first['seconds']} s) "
                    f"| {second['peak_rss_mb']:.0f} MB ({second['seconds']} s, {second['images_per_s']} img/s) "
                    f"| {disk / 2**30:.2f} GiB |")
        print(rows[-1], flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    body = (f"{a.unlabelled} unlabelled images (CIFAR-10 JPEGs upscaled by the pool's resize policy), 250 labelled, "
            f"no test set (50 held out for validation); `semisup train --data.name=pool --data.image_size=S "
            f"--model.name=smallcnn --train.steps={a.steps} --train.batch_size=16 --train.mu=7`; peak RSS = "
            "getrusage ru_maxrss of the training process (model, optimizer and batches included).\n\n"
            + "\n".join(rows))
    results.publish("Memory with a pool of 50,000 unlabelled images", body, write=not a.no_write)


if __name__ == "__main__":
    main()
