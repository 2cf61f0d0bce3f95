"""Memory over a long run: the resident set size of a `semisup train` process at every evaluation.

Starts the command, watches its metrics.jsonl, and each time a record appears reads the process's current
RSS (VmRSS) and its peak so far (VmHWM) from /proc. A loop that keeps something per step (metrics, trackers,
queues, CTAugment's state) shows as a rising curve after the warm-up; a flat one after the first
evaluations is the goal.

    python benchmarks/micro/rss_curve.py -- --preset fashion_mnist_40 --train.steps=3000 --train.eval_every=100 \\
        --data.strong=ctaugment --run.out=runs/rss_curve --overwrite
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def watch(argv: list[str], run_dir: Path, poll: float = 0.1) -> list[dict]:
    """Run ``semisup train ARGV`` (run.out = run_dir); [{step, rss_mb, peak_mb}] at each record it writes."""
    metrics = run_dir / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "semisup", "train", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=None)
    curve, seen = [], 0
    try:
        while True:
            done = proc.poll() is not None
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            for line in lines[seen:]:
                try:
                    step = json.loads(line)["step"]
                except ValueError:
                    break  # a line being written: read it next time
                rss, hwm = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
                if rss is None:
                    break
                curve.append({"step": step, "rss_mb": round(rss / 1024, 1), "peak_mb": round(hwm / 1024, 1)})
                seen += 1
            if done:
                break
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"semisup train failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return curve


def growth_after(curve: list[dict], warmup_frac: float = 0.2) -> float:
    """RSS at the end minus the smallest RSS after the first ``warmup_frac`` of the evaluations (MB)."""
    tail = curve[max(1, int(len(curve) * warmup_frac)):]
    return tail[-1]["rss_mb"] - min(r["rss_mb"] for r in tail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    p.add_argument("overrides", nargs="+", help="the semisup train arguments (--run.out=DIR among them)")
    a = p.parse_args()
    out = next((o.split("=", 1)[1] for o in a.overrides if o.startswith("--run.out=")), None)
    if out is None:
        p.error("pass --run.out=DIR")
    curve = watch(a.overrides, Path(out))
    rows = ["| step | RSS MB | peak RSS MB |", "|---|---|---|"] + [
        f"| {r['step']} | {r['rss_mb']} | {r['peak_mb']} |" for r in curve]
    body = (f"Resident set size of the training process when each evaluation record was written. After the "
            f"first 20 % of the evaluations RSS moved by {growth_after(curve):+.1f} MB to the end (end minus the "
            "minimum since).\n\n"
            + "\n".join(rows))
    results.publish("Memory over a long run: RSS at every evaluation", body, write=not a.no_write)


if __name__ == "__main__":
    main()
