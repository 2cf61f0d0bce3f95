"""Training images/s under each allocator a `semisup train` process can run with: glibc malloc,
jemalloc preloaded by the caller with its default decay, and jemalloc as semisup's start-up sets it
(decay off). Alternating runs of the real command in fresh processes; reads the loop's median step
time, and the page faults and system time of each process. Example (CIFAR-10-LT preset, WRN-28-2,
320 images a step):

    python benchmarks/micro/bench_allocator.py --steps 60 --repeats 3 -- --preset=cifar10_lt_arl \
        --data.name=folder --data.root=/tmp/cifar10-jpeg --train.mu=2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # results.py
import results  # noqa: E402

from semisup.allocator import find_jemalloc  # noqa: E402

SETTINGS = {  # name -> environment changes (None: remove the variable)
    "glibc malloc": {"SEMISUP_ALLOCATOR": "system", "LD_PRELOAD": None, "MALLOC_CONF": None},
    "jemalloc, default decay (LD_PRELOAD alone)": {"SEMISUP_ALLOCATOR": "system", "LD_PRELOAD": "{lib}",
                                                   "MALLOC_CONF": None},
    "jemalloc, decay off (semisup's start-up)": {"SEMISUP_ALLOCATOR": None, "LD_PRELOAD": None, "MALLOC_CONF": None},
}


def environment(changes: dict, lib: str) -> dict:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v.format(lib=lib)
    return env


def one_run(overrides: list[str], steps: int, env: dict) -> dict:
    """One `python -m semisup train` of ``steps`` steps: the loop's figures and the process's faults and times."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "semisup", "train", *overrides, f"--train.steps={steps}",
               f"--train.eval_every={steps}", "--run.progress=false", "--run.tensorboard=false",
               f"--run.out={tmp}/run", "--overwrite"]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"bench_allocator: the run failed:\n{res.stderr[-3000:]}")
        rec = json.loads(Path(tmp, "run", "metrics.jsonl").read_text().splitlines()[-1])
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"step_s": rec["step_seconds_median"], "images": rec["step_images"], "top1": rec["test"]["top1"],
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps, "system_share": system / (user + system),
            "allocator": summary["allocator"]}


def table(rows: dict[str, list[dict]]) -> str:
    base = None
    out = ["| allocator | summary says | s/step (median of runs) | images/s | vs glibc | minor page faults / step "
           "| system time share | test top-1 after the run |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        step = statistics.median(r["step_s"] for r in runs)
        ips = runs[0]["images"] / step
        base = base or ips
        faults = statistics.median(r["faults_per_step"] for r in runs)
        share = statistics.median(r["system_share"] for r in runs)
        top1 = ", ".join(sorted({f"{r['top1']:.4f}" for r in runs}))
        each = ", ".join(f"{r['step_s']:.3f}" for r in runs)
        out.append(f"| {name} | {runs[0]['allocator']} | {step:.3f} ({each}) | {ips:.1f} | {ips / base:.2f}x "
                   f"| {faults:,.0f} | {share:.1%} | {top1} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="steps per run (the loop's median step time is read)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per allocator")
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    p.add_argument("overrides", nargs="*", help="semisup config: --preset=NAME and --section.key=value")
    a = p.parse_args()
    lib = find_jemalloc()
    if lib is None:
        sys.exit("bench_allocator: needs jemalloc (apt-get install libjemalloc2)")
    rows: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for i in range(a.repeats):
        for name, changes in SETTINGS.items():
            r = one_run(a.overrides, a.steps, environment(changes, lib))
            rows[name].append(r)
            print(f"run {i + 1} {name}: {r['step_s']:.3f} s/step, {r['faults_per_step']:,.0f} faults/step, "
                  f"system {r['system_share']:.1%}", flush=True)
    first = rows[next(iter(rows))][0]
    body = (f"`semisup train {' '.join(a.overrides)}`, {a.steps} steps a run ({first['images']} images a step), "
            f"{a.repeats} alternating runs per allocator, each a fresh process; page faults and system time are "
            f"the whole process's (start-up and the final evaluation included).\n\n{table(rows)}")
    preset, _ = results.split_preset(a.overrides)
    results.publish(f"Training speed by allocator: {preset or 'defaults'}", body, write=not a.no_write)


if __name__ == "__main__":
    main()
