"""bf16 autocast vs fp32: test accuracy of the same short FixMatch runs (same seeds, labels, schedule).

    python benchmarks/bf16_parity.py --steps 300 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1")
    a = p.parse_args()
    acc: dict[str, list[float]] = {"off": [], "bf16": []}
    for seed in map(int, a.seeds.split(",")):
        for amp in acc:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "semisup", "train", "--preset", "fashion_mnist_40",
                                f"--run.seed={seed}", f"--run.amp={amp}", f"--train.steps={a.steps}",
                                f"--train.eval_every={a.steps}", f"--run.out={tmp}/r", "--run.progress=false",
                                "--run.tensorboard=false"], check=True, stdout=subprocess.DEVNULL)
                acc[amp].append(json.loads((Path(tmp) / "r" / "summary.json").read_text())["final"]["test_top1"])
            print(amp, seed, acc[amp][-1], flush=True)
    rows = [f"FixMatch, smallcnn, Fashion-MNIST 40 labels, {a.steps} steps, test top-1 of the EMA model; "
            "the same seed gives the same labels, initialisation and batches under both precisions.\n",
            "| seed | fp32 | bf16 autocast | difference (points) |", "|---|---|---|---|"]
    for i, seed in enumerate(a.seeds.split(",")):
        rows.append(f"| {seed} | {acc['off'][i] * 100:.2f} | {acc['bf16'][i] * 100:.2f} | "
                    f"{(acc['bf16'][i] - acc['off'][i]) * 100:+.2f} |")
    rows.append(f"| mean | {statistics.mean(acc['off']) * 100:.2f} | {statistics.mean(acc['bf16']) * 100:.2f} | "
                f"{(statistics.mean(acc['bf16']) - statistics.mean(acc['off'])) * 100:+.2f} |")
    results.append("bf16 autocast vs fp32: accuracy on short runs", "\n".join(rows))


if __name__ == "__main__":
    main()
