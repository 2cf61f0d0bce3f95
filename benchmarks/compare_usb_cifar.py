"""Side by side with USB 0.3.2 on CIFAR-10, 4000 labels: FixMatch, WRN-28-2, the same labelled images, the same
settings (B 64, mu 7 or --mu, threshold 0.95, SGD 0.03 Nesterov, wd 5e-4, cosine over the run, EMA 0.999 without
warm-up as USB's), trained for the same number of steps; test top-1 of the EMA and of the raw weights, and
images/s. Runs on whatever device each trainer finds (a GPU when there is one).

    python benchmarks/compare_usb_cifar.py --data /tmp/cifar10-jpeg --steps 2000
    USB_PYTHON=~/.cache/semisup-peers/usb-venv/bin/python python benchmarks/compare_usb_cifar.py ...

semisup trains first and writes split.json; USB (benchmarks/usb_cifar.py, in USB's environment) then trains on
the labelled indices of that split, the rest of the train images unlabelled, as semisup's balanced split.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

HERE = Path(__file__).resolve().parent
USB_PY = os.environ.get("USB_PYTHON", str(Path.home() / ".cache/semisup-peers/usb-venv/bin/python"))


def semisup_run(data: str, steps: int, mu: int, out: Path, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "semisup", "train", "--preset", "cifar10_4000_wrn", "--data.name=folder",
            f"--data.root={data}", f"--train.steps={steps}", f"--train.mu={mu}", f"--train.eval_every={steps}",
            "--optim.ema_warmup=none",
            f"--run.out={out}", "--overwrite", "--run.progress=false", "--run.tensorboard=false", *extra]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    raw = subprocess.run([sys.executable, "-m", "semisup", "eval", str(out), "--raw"], check=True,
                         capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"trainer": "semisup", "steps": rec["step"], "test_top1_ema": rec["test"]["top1"],
            "test_top1_raw": json.loads(raw.stdout)["top1"], "device": summary["device"],
            "img_s": round(rec["step_images"] / rec["step_seconds_median"], 1),
            "command": " ".join(["semisup", *argv[3:]])}


def usb_run(data: str, steps: int, mu: int, split: Path, out: Path, workers: int) -> dict:
    js = out / "usb.json"
    argv = [USB_PY, str(HERE / "usb_cifar.py"), "--data", data, "--labelled", str(split), "--iters", str(steps),
            "--uratio", str(mu),
            "--num-workers", str(workers), "--json", str(js), "--save-dir", str(out / "usb")]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    r = json.loads(js.read_text())
    return {"trainer": "USB 0.3.2", "steps": r["iters"], "test_top1_ema": r["test_top1_ema"],
            "test_top1_raw": r["test_top1_raw"], "device": r["device"], "img_s": r["steady_img_s"],
            "command": " ".join(["$USB_PYTHON", "benchmarks/usb_cifar.py", *argv[2:]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the CIFAR-10 JPEG folder (train/<class>, test/<class>)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--mu", type=int, default=7, help="unlabelled-to-labelled batch ratio of both (USB's uratio)")
    p.add_argument("--out", default="runs/compare_usb_cifar")
    p.add_argument("--usb-workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("extra", nargs="*", help="more semisup overrides (e.g. --run.amp=off for fp32)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ours = semisup_run(a.data, a.steps, a.mu, out / "semisup", a.extra)
    peer = usb_run(a.data, a.steps, a.mu, out / "semisup" / "split.json", out, a.usb_workers)
    rows = ["| trainer | device | steps | test top-1, EMA | test top-1, raw weights | images/s |",
            "|---|---|---|---|---|---|"]
    for r in (peer, ours):
        rows.append(f"| {r['trainer']} | {r['device']} | {r['steps']} | {100 * r['test_top1_ema']:.2f} | "
                    f"{100 * r['test_top1_raw']:.2f} | {r['img_s']} |")
    body = (f"FixMatch, WRN-28-2, CIFAR-10 4000 labels (the labelled images of semisup's split for both), {a.steps} "
            f"steps, B 64, mu {a.mu}, "
            "threshold 0.95, SGD 0.03 Nesterov, wd 5e-4, cosine over the run, EMA 0.999 without warm-up; "
            f"USB with {a.usb_workers} loader workers per loader.\n\n" + "\n".join(rows) + "\n\nCommands:\n\n"
            + "\n".join(f"    {r['command']}" for r in (ours, peer)))
    results.publish("Side by side with USB 0.3.2 on CIFAR-10: FixMatch at equal steps", body,
                    write=not a.no_write)


if __name__ == "__main__":
    main()
