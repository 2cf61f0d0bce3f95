"""bf16 autocast vs fp32: test accuracy of the same short FixMatch runs (same seeds, labels, schedule).

    python benchmarks/micro/bf16_parity.py --steps 300 --seeds 0,1

Or pair the runs of two finished sweeps' logs (sweeps/fashion_mnist.py, sweeps/imbalanced.py; see records.py)
whose commands differ only in ``--run.amp`` (and the output folder), run by run, without training anything:

    python benchmarks/micro/bf16_parity.py --from-records benchmarks/records/fashion_mnist_3000.jsonl \
        benchmarks/records/fashion_mnist_3000_bf16.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py, records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--from-records", nargs=2, metavar=("FP32_LOG", "BF16_LOG"),
                   help="pair the runs of two sweeps' logs instead of training (a path without .jsonl: PATH.jsonl)")
    p.add_argument("--unfused", action="store_true",
                   help="also train bf16 with run.fused_bn=off (PyTorch's batch-norm kernels) for a third column")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()
    if a.from_records:
        fp32, bf16 = (records.log_path(x) for x in a.from_records)
        results.publish("bf16 autocast vs fp32: paired sweep runs", from_records(fp32, bf16), write=not a.no_write)
        return
    settings = {"fp32": ["--run.amp=off"], "bf16 autocast": ["--run.amp=bf16"]}
    if a.unfused:
        settings["bf16 autocast, run.fused_bn=off"] = ["--run.amp=bf16", "--run.fused_bn=off"]
    acc: dict[str, list[float]] = {k: [] for k in settings}
    for seed in map(int, a.seeds.split(",")):
        for name, extra in settings.items():
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "semisup", "train", "--preset", "fashion_mnist_40",
                                f"--run.seed={seed}", *extra, f"--train.steps={a.steps}",
                                f"--train.eval_every={a.steps}", f"--run.out={tmp}/r", "--run.progress=false",
                                "--run.tensorboard=false"], check=True, stdout=subprocess.DEVNULL)
                acc[name].append(json.loads((Path(tmp) / "r" / "summary.json").read_text())["final"]["test_top1"])
            print(name, seed, acc[name][-1], flush=True)
    names = list(settings)
    rows = [f"FixMatch, smallcnn, Fashion-MNIST 40 labels, {a.steps} steps, test top-1 of the EMA model; "
            "the same seed gives the same labels, initialisation and batches under every setting. "
            "Differences: each column minus fp32, in points.\n",
            "| seed | " + " | ".join(names) + " | " + " | ".join(f"{n} - fp32" for n in names[1:]) + " |",
            "|---" * (2 * len(names)) + "|"]
    for i, seed in enumerate([*a.seeds.split(","), "mean"]):
        v = {n: (acc[n][i] if seed != "mean" else statistics.mean(acc[n])) * 100 for n in names}
        rows.append(f"| {seed} | " + " | ".join(f"{v[n]:.2f}" for n in names) + " | "
                    + " | ".join(f"{v[n] - v['fp32']:+.2f}" for n in names[1:]) + " |")
    results.publish("bf16 autocast vs fp32: accuracy on short runs", "\n".join(rows), write=not a.no_write)


def _comparable(cmd: str) -> str:
    """A record's command without what may differ between the two precisions: --run.amp and --run.out."""
    return " ".join(t for t in cmd.split() if not t.startswith(("--run.amp=", "--run.out=")))


def from_records(fp32: Path, bf16: Path) -> str:
    """The table of the runs recorded in both logs (same run key, commands equal but for --run.amp): test
    top-1 of each, the paired difference, per algorithm and over all pairs."""
    runs32, runs16 = records.read(fp32), records.read(bf16)
    pairs = []
    for rel in sorted(set(runs32) & set(runs16)):
        c32, c16 = (" ".join(r[rel]["command"]) for r in (runs32, runs16))
        if _comparable(c32) != _comparable(c16):
            raise SystemExit(f"{rel}: the two commands differ in more than --run.amp:\n  {c32}\n  {c16}")
        r32, r16 = runs32[rel]["summary"], runs16[rel]["summary"]
        if (r32.get("amp"), r16.get("amp")) != ("None", "torch.bfloat16"):
            raise SystemExit(f"{rel}: expected an fp32 and a bf16 run, got {r32.get('amp')} and {r16.get('amp')}")
        pairs.append((rel, r32, r16))
    if not pairs:
        raise SystemExit(f"no run is recorded under both {fp32} and {bf16}")
    rows = [f"Records: fp32 `{fp32}`, bf16 `{bf16}`; each pair is the same command "
            "(seed, labels, initialisation, batches, schedule) but for `--run.amp`. `final` = test top-1 of the "
            "EMA model after the last step. Minutes: each run's own training time (the two sweeps may have "
            "run at different times; the speed-up holds only if they ran under the same load).\n",
            "| run | fp32 | bf16 | bf16 - fp32 (points) | fp32 min | bf16 min | speed-up |",
            "|---|---|---|---|---|---|---|"]
    by_alg: dict[str, list[float]] = {}
    for rel, r32, r16 in pairs:
        a32, a16 = r32["final"]["test_top1"] * 100, r16["final"]["test_top1"] * 100
        t32, t16 = r32["train_seconds"] / 60, r16["train_seconds"] / 60
        by_alg.setdefault(rel.rsplit("_s", 1)[0], []).append(a16 - a32)
        rows.append(f"| {rel} | {a32:.2f} | {a16:.2f} | {a16 - a32:+.2f} | {t32:.1f} | {t16:.1f} | {t32 / t16:.2f}x |")
    diffs = [d for v in by_alg.values() for d in v]
    rows += ["", "| runs | pairs | mean difference (points) | std | min | max |", "|---|---|---|---|---|---|"]
    for name, v in [*by_alg.items(), ("all", diffs)]:
        sd = f"{statistics.stdev(v):.2f}" if len(v) > 1 else "–"
        rows.append(f"| {name} | {len(v)} | {statistics.mean(v):+.2f} | {sd} | {min(v):+.2f} | {max(v):+.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
