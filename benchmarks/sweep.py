"""Shared by the sweep benchmarks (fashion_mnist.py, imbalanced.py): run `semisup train` commands a few at a
time and keep a small committed record of each finished run, so a sweep too long for one sitting continues
in a later one, on a new machine, where it stopped.

A record (under the sweep's records folder, mirroring the run folder) holds the exact command, config.yaml,
summary.json and metrics.jsonl; no checkpoints. A record is reused only when its command is the same as the
one the sweep would run now, that command still resolves to the recorded config.yaml (a default changed since
makes the same words another run) and the run was not stopped early.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECORD_FILES = ("config.yaml", "summary.json", "metrics.jsonl")
RECORDS = Path(__file__).resolve().parent / "records"


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    """The options every sweep has; runs go to runs/bench_<name>, records to benchmarks/records/<name>."""
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--out", default=f"runs/bench_{name}")
    p.add_argument("--records", default=str(RECORDS / name),
                   help="where each finished run's small record is kept (commit it)")
    p.add_argument("--extra", default="", help="more --section.key=value overrides for every run, one string")
    p.add_argument("--force", action="store_true", help="rerun runs that already finished")
    p.add_argument("--no-write", action="store_true", help="print the tables only; do not append to RESULTS.md")


def run_tail(a: argparse.Namespace, seed: int, out: Path, mu: int | None = None) -> list[str]:
    """The end of every sweep command: seed, budget (``mu`` overrides the sweep's --mu), output folder, threads
    and the --extra overrides."""
    return [f"--run.seed={seed}", f"--train.steps={a.steps}", f"--train.mu={a.mu if mu is None else mu}",
            f"--run.out={out}",
            "--overwrite", "--run.progress=false", *([f"--run.threads={a.threads}"] if a.threads else []),
            *shlex.split(a.extra)]


# config keys that do not change a run's result (where it writes, how it reports, threads)
NEUTRAL_KEYS = {("run", "out"), ("run", "progress"), ("run", "tensorboard"), ("run", "threads")}


def resolved_config(argv: list[str]) -> dict:
    """The config ``semisup train ARGV`` would run, as a nested dict without the result-neutral keys."""
    import yaml

    from semisup import config as C

    args = [a for a in argv[2:] if a != "--overwrite"]  # argv = ["semisup", "train", ...]
    preset = None
    if "--preset" in args:
        i = args.index("--preset")
        preset = args[i + 1]
        args = args[:i] + args[i + 2:]
    cfg = yaml.safe_load(C.to_yaml(C.resolve(preset, overrides=args)))
    for sec, key in NEUTRAL_KEYS:
        cfg.get(sec, {}).pop(key, None)
    return cfg


def _same_config(argv: list[str], recorded: Path) -> bool:
    import yaml

    from semisup import config as C

    old = yaml.safe_load(C.to_yaml(C.from_dict(C.load_saved(recorded))))
    for sec, key in NEUTRAL_KEYS:
        old.get(sec, {}).pop(key, None)
    return old == resolved_config(argv)


def run_one(argv: list[str], out: Path, record: Path, force: bool = False) -> Path:
    """Run ``argv`` (``semisup train ...``, writing ``out``) unless ``record`` holds a finished run of the same
    command and config; returns the record folder."""
    cmd = " ".join(argv)
    if not force and (record / "command.txt").exists() and all((record / f).exists() for f in RECORD_FILES):
        if (record / "command.txt").read_text().strip() == cmd and \
                not json.loads((record / "summary.json").read_text()).get("stopped_early"):
            if _same_config(argv, record / "config.yaml"):
                return record
            print(f"  {record}: same command, but its defaults have changed since; running it again", flush=True)
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "semisup", *argv[1:]], check=True, stdout=f, stderr=subprocess.STDOUT)
    record.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        shutil.copyfile(out / name, record / name)
    (record / "command.txt").write_text(cmd + "\n")
    return record


def run_all(runs: list[tuple[list[str], Path, Path]], jobs: int, force: bool = False) -> list[Path]:
    """``runs`` = (argv, out, record) each; ``jobs`` at a time, in order; returns the records, in order."""
    def go(run):
        argv, out, record = run
        print("+", " ".join(argv), flush=True)
        rec = run_one(argv, out, record, force)
        s = json.loads((rec / "summary.json").read_text())
        print(f"  {out}: final {s['final']['test_top1']:.4f} ({s['train_seconds'] / 60:.1f} min)", flush=True)
        return rec

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(go, runs))


def last_record(record: Path) -> dict:
    """The last line of metrics.jsonl (the final evaluation, with its train-side statistics)."""
    return json.loads((record / "metrics.jsonl").read_text().splitlines()[-1])


def fmt(v: list[float], digits: int = 2) -> str:
    """mean ± sample std (the mean alone for one value; '–' for none)."""
    if not v:
        return "–"
    return f"{statistics.mean(v):.{digits}f}" + (f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else "")


def precision(summaries: list[dict]) -> str:
    """What the runs computed in, from their summaries' ``amp`` (str of the autocast dtype, 'None' = fp32)."""
    amps = sorted({s.get("amp", "?") for s in summaries})
    return {"torch.bfloat16": "bf16 autocast", "None": "fp32"}.get(amps[0], amps[0]) if len(amps) == 1 \
        else "mixed precisions " + ", ".join(amps)
