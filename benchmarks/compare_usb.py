"""Side by side with USB (semilearn 0.3.2) on this machine: FixMatch, WRN-28-2, Fashion-MNIST 40 labels
(USB's own seed-0 labelled indices for both), B 64, mu 7, threshold 0.95, SGD 0.03 Nesterov, wd 5e-4,
EMA 0.999. Runs alternate (USB, semisup bf16, semisup bf16 without the fused batch-norm kernel, semisup fp32,
repeat) so machine drift hits all alike.

    bash ../shared/peers/usb/setup.sh          # once: USB in its own venv
    python benchmarks/compare_usb.py --iters 12 --repeats 2

Accuracy at equal steps: `--accuracy-steps N` instead trains each trainer once for N steps (USB with its
own evaluation) and tabulates the test top-1 of the EMA model next to images/s. The default network there is
WRN-10-2 (both trainers have it; a WRN-28-2 run of 500 steps would take USB ~1.5 h on 2 cores), with the
EMA decay lowered to 0.99 for both (`--ema-m`): at 0.999 the EMA model of a few hundred steps is still
mostly its random start.

    python benchmarks/compare_usb.py --accuracy-steps 500 --net wrn_10_2 --ema-m 0.99

USB pads 28x28 to 32x32 with zeros and replicates to 3 channels; semisup resizes to
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


def usb_argv(net: str, iters: int, out: Path, evaluate: bool, ema_m: float) -> list[str]:
    return [str(USB_PY), str(PEER / "usb_fashion.py"), "--net", net, "--iters", str(iters), "--ema-m", str(ema_m),
            "--json", str(out), "--save-dir", str(out.parent), *([] if evaluate else ["--no-eval"])]


def semisup_argv(net: str, iters: int, out: Path, amp: str, cl: str, ema_m: float, *extra: str) -> list[str]:
    depth = int(net.split("_")[1])  # wrn_28_2 -> 28 (width 2 is semisup's default)
    return [sys.executable, "-m", "semisup", "train", "--preset", "fashion_mnist_40", "--model.name=wrn",
            f"--model.depth={depth}", "--data.image_size=32",
            f"--data.labelled_idx_file={PEER / 'fmnist_lb_idx_seed0.npy'}", f"--optim.ema={ema_m}",
            f"--train.steps={iters}", f"--train.eval_every={iters}", f"--run.amp={amp}",
            f"--run.channels_last={cl}", f"--run.out={out}", "--run.progress=false", "--run.tensorboard=false", *extra]


def run_usb(iters: int, env: dict, net: str = "wrn_28_2", evaluate: bool = False, ema_m: float = 0.999) -> dict:
    """USB's figures (steady_img_s; test_top1_ema / test_top1_raw when ``evaluate``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "usb.json"
        subprocess.run(usb_argv(net, iters, out, evaluate, ema_m), check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run_semisup(iters: int, env: dict, amp: str, cl: str, net: str = "wrn_28_2", ema_m: float = 0.999,
                *extra: str) -> dict:
    """The last metrics line: step_images / step_seconds_median, and test.top1 of the EMA model."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(semisup_argv(net, iters, Path(tmp) / "run", amp, cl, ema_m, *extra), check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])


def img_s(rec: dict) -> float:
    """Images per second of the loop's median step."""
    return rec["step_images"] / rec["step_seconds_median"]


def accuracy(a, env: dict) -> None:
    """One run per trainer at ``a.accuracy_steps``: test top-1 of the EMA model (and USB's raw model)."""
    usb = run_usb(a.accuracy_steps, env, a.net, True, a.ema_m)
    print("USB", usb, flush=True)
    rows = {"semisup bf16 + channels_last": (), "semisup bf16 + channels_last, USB's BN momentum 0.001":
            ("--model.bn_momentum=0.001",)}  # fp32 vs bf16 accuracy: bf16_parity.py
    ours = {k: run_semisup(a.accuracy_steps, env, "bf16", "true", a.net, a.ema_m, *x) for k, x in rows.items()}
    print({k: v["test"]["top1"] for k, v in ours.items()}, flush=True)
    body = [f"FixMatch, {a.net.upper().replace('_', '-')}, Fashion-MNIST at 32x32, 40 labels (USB's seed-0 "
            f"indices for both), B 64, mu 7, threshold 0.95, SGD 0.03 Nesterov with cosine decay, wd 5e-4, "
            f"{a.accuracy_steps} steps, EMA decay {a.ema_m} for both, seed 0, one run per row, both under jemalloc. "
            "Test top-1 on the 10,000 test images after the last step. semisup runs with its defaults otherwise "
            "(model.bn_momentum=auto: min(0.1, 10 / steps) below 10k steps; USB's WRN: 0.001).\n",
            "Throughput is the throughput section's (these runs may share the machine with others).\n",
            "| trainer | test top-1, EMA model | raw model |", "|---|---|---|",
            f"| USB 0.3.2 (fp32) | {100 * usb['test_top1_ema']:.2f} | {100 * usb['test_top1_raw']:.2f} |"]
    for k, r in ours.items():
        body.append(f"| {k} | {100 * r['test']['top1']:.2f} | – |")
    results.publish("Side by side with USB 0.3.2: FixMatch test accuracy at equal steps", "\n".join(body))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--accuracy-steps", type=int, default=0,
                   help="instead of throughput: train each trainer once for this many steps and compare test top-1")
    p.add_argument("--net", default="wrn_10_2", choices=["wrn_10_2", "wrn_16_2", "wrn_28_2"],
                   help="network of the accuracy runs (the throughput runs are WRN-28-2)")
    p.add_argument("--ema-m", type=float, default=0.99, help="EMA decay of the evaluated model, accuracy runs")
    a = p.parse_args()
    lib = find_jemalloc()
    if lib is None or not USB_PY.exists():
        sys.exit("needs libjemalloc2 and the USB venv (../shared/peers/usb/setup.sh)")
    env = dict(os.environ, LD_PRELOAD=lib, MALLOC_CONF=MALLOC_CONF)  # the same allocator for both
    if a.accuracy_steps:
        return accuracy(a, env)
    unfused = "semisup bf16 + channels_last, run.fused_bn=off (PyTorch's batch norm and LeakyReLU kernels)"
    rows: dict[str, list[float]] = {"USB 0.3.2 (fp32)": [], "semisup fp32": [], unfused: [],
                                    "semisup bf16 + channels_last (defaults)": []}
    for _ in range(a.repeats):
        rows["USB 0.3.2 (fp32)"].append(run_usb(a.iters, env)["steady_img_s"])
        rows["semisup bf16 + channels_last (defaults)"].append(img_s(run_semisup(a.iters, env, "bf16", "true")))
        rows[unfused].append(img_s(run_semisup(a.iters, env, "bf16", "true", "wrn_28_2", 0.999, "--run.fused_bn=off")))
        rows["semisup fp32"].append(img_s(run_semisup(a.iters, env, "off", "false")))
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
    results.publish("Side by side with USB 0.3.2: FixMatch step throughput", "\n".join(body))


if __name__ == "__main__":
    main()
