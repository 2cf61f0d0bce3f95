"""Fashion-MNIST, 40 labels (4 per class): FixMatch vs supervised, same labels, model and schedule.

Runs the `semisup` CLI (so the commands in RESULTS.md are exactly what ran) for each algorithm and
seed, then appends a table to RESULTS.md.

    python benchmarks/fashion_mnist_40.py --seeds 0 --steps 5000
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--algorithms", default="fixmatch,supervised")
    p.add_argument("--out", default="runs/bench_fashion_mnist_40")
    p.add_argument("--extra", default="", help="more --section.key=value overrides, one string")
    a = p.parse_args()
    rows, cmds = {}, []
    for alg in a.algorithms.split(","):
        for seed in map(int, a.seeds.split(",")):
            out = Path(a.out) / f"{alg}_s{seed}"
            argv = ["semisup", "train", "--preset", "fashion_mnist_40", f"--algorithm.name={alg}",
                    f"--run.seed={seed}", f"--train.steps={a.steps}", f"--run.out={out}", "--overwrite",
                    "--run.progress=false", *shlex.split(a.extra)]
            cmds.append(" ".join(argv))
            print("+", cmds[-1], flush=True)
            subprocess.run([sys.executable, "-m", "semisup", *argv[1:]], check=True)
            s = json.loads((out / "summary.json").read_text())
            rows.setdefault(alg, []).append(s)
    body = ["Test set: the 10,000 Fashion-MNIST test images. Labels: 4 per class drawn with the run seed "
            "(seed 0 for the headline); the rest of the 60,000 train images unlabelled. Model smallcnn "
            f"(width 2), {a.steps} steps, B 64, mu 7, SGD 0.03 Nesterov, cosine, EMA 0.999, bf16 autocast, "
            "channels_last. `final` is the EMA model at the last step; `best` the best evaluation "
            "(every 500 steps, selected on the test set as USB reports it; quote `final`).\n",
            "| algorithm | seeds | final top-1 | best top-1 | balanced acc | train minutes | images/s | allocator "
            "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for alg, ss in rows.items():
        fin = [s["final"]["test_top1"] * 100 for s in ss]
        best = [s["best"]["test_top1"] * 100 for s in ss]
        bal = [s["final"]["test_balanced_acc"] * 100 for s in ss]
        mins = [s["train_seconds"] / 60 for s in ss]

        def fmt(v):
            return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")

        body.append(f"| {alg} | {len(ss)} | {fmt(fin)} | {fmt(best)} | {fmt(bal)} | {fmt(mins)} | "
                    f"{statistics.median(s['images_per_s'] for s in ss):.0f} | {ss[0]['allocator']} | "
                    f"{max(s.get('peak_rss_mb', 0) for s in ss):.0f} |")
    body.append("\nCommands:\n\n" + "\n".join(f"    {c}" for c in cmds))
    results.append("Fashion-MNIST, 40 labels: FixMatch vs supervised", "\n".join(body))


if __name__ == "__main__":
    main()
