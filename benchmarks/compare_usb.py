"""Side by side with USB (semilearn 0.3.2) on this machine: FixMatch, WRN-28-2, Fashion-MNIST 40 labels
(USB's own seed-0 labelled indices for both), B 64, mu 7, threshold 0.95, SGD 0.03 Nesterov, wd 5e-4,
EMA 0.999. Runs alternate (USB, semisup bf16, semisup fp32, repeat) so machine drift hits all alike.

    bash ../shared/peers/usb/setup.sh          # once: USB in its own venv
    python benchmarks/compare_usb.py --iters 12 --repeats 2

Throughput only: accuracy after a dozen steps means nothing (compare accuracy at equal, much larger
step counts). USB pads 28x28 to 32x32 with zeros and replicates to 3 channels; semisup resizes to
32x32 (data.image_size=32) and keeps 1 channel: the same network at the same resolution (the first
convolution reads 1 channel instead of 3, <0.1% of the FLOPs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

from semisup.allocator import MALLOC_CONF, find_jemalloc  # noqa: E402

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "usb"
USB_PY = Path(os.environ.get("USB_VENV", Path.home() / ".cache/semisup-peers/usb-venv")) / "bin" / "python"


def run_usb(iters: int, env: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "usb.json"
        subprocess.run([str(USB_PY), str(PEER / "usb_fashion.py"), "--net", "wrn_28_2", "--iters", str(iters),
                        "--no-eval", "--json", str(out), "--save-dir", tmp], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["steady_img_s"]


def run_semisup(iters: int, env: dict, amp: str, cl: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "semisup", "train", "--preset", "fashion_mnist_40",
                        "--model.name=wrn", "--data.image_size=32",
                        f"--data.labelled_idx_file={PEER / 'fmnist_lb_idx_seed0.npy'}",
                        f"--train.steps={iters}", f"--train.eval_every={iters}", f"--run.amp={amp}",
                        f"--run.channels_last={cl}", f"--run.out={tmp}/run", "--run.progress=false",
                        "--run.tensorboard=false"], check=True, env=env, stdout=subprocess.DEVNULL)
        rec = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        return rec["step_images"] / rec["step_seconds_median"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    lib = find_jemalloc()
    if lib is None or not USB_PY.exists():
        sys.exit("needs libjemalloc2 and the USB venv (../shared/peers/usb/setup.sh)")
    env = dict(os.environ, LD_PRELOAD=lib, MALLOC_CONF=MALLOC_CONF)  # the same allocator for both
    rows: dict[str, list[float]] = {"USB 0.3.2 (fp32)": [], "semisup fp32": [], "semisup bf16 + channels_last": []}
    for _ in range(a.repeats):
        rows["USB 0.3.2 (fp32)"].append(run_usb(a.iters, env))
        rows["semisup bf16 + channels_last"].append(run_semisup(a.iters, env, "bf16", "true"))
        rows["semisup fp32"].append(run_semisup(a.iters, env, "off", "false"))
        print({k: v[-1] for k, v in rows.items()}, flush=True)
    usb = statistics.median(rows["USB 0.3.2 (fp32)"])
    body = [f"FixMatch, WRN-28-2, Fashion-MNIST at 32x32, 960 images/step (64 + 2x448), {a.iters} steps per run, "
            f"{a.repeats} alternating runs per row, both under jemalloc. USB: its steady images/s (after 3 warm-up "
            "iterations, data loading included); semisup: the loop's median step time (data + augmentation "
            "included).\n",
            "| trainer | images/s (median) | runs | vs USB |", "|---|---|---|---|"]
    for k, v in rows.items():
        body.append(f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} | "
                    f"{statistics.median(v) / usb:.2f}x |")
    results.append("Side by side with USB 0.3.2: FixMatch step throughput", "\n".join(body))


if __name__ == "__main__":
    main()
