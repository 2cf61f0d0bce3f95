"""Shared by the sweep benchmarks (fashion_mnist.py, imbalanced.py): run `semisup train` commands a few at a
time and record each finished run in the sweep's log (benchmarks/records/<sweep>.jsonl, see records.py), so a
sweep too long for one sitting continues in a later one, on a new machine, where it stopped.

A run is reused from the log only when its command is the same as the one the sweep would run now, that
command still resolves to the recorded config (a default changed since makes the same words another run) and
the run was not stopped early; otherwise it runs and its line is replaced. A run stopped part-way (SIGTERM at
the end of a sitting: it evaluates, writes last.pt and exits 143) continues from its last.pt when the sweep
comes back to it with the same config (semisup's resume is exact: the same result as an unbroken run); its
log line names every CPU it ran on.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import records  # noqa: E402


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    """The options every sweep has; runs go to runs/bench_<name>, the log to benchmarks/records/<name>.jsonl."""
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--out", default=f"runs/bench_{name}")
    p.add_argument("--records", default=str(records.RECORDS / f"{name}.jsonl"),
                   help="the sweep's run log, one line per finished run (commit it); a path without .jsonl "
                        "names PATH.jsonl")
    p.add_argument("--extra", default="", help="more --section.key=value overrides for every run, one string")
    p.add_argument("--force", action="store_true", help="rerun runs that already finished")
    p.add_argument("--no-write", action="store_true", help="print the tables only; do not write RESULTS.md")


def chosen(methods: str, known, labels: int) -> list[str]:
    """The --methods list, each checked against ``known``, and --labels a multiple of 10 (balanced over 10
    classes); a one-line exit naming what is wrong otherwise."""
    names = [m for m in methods.split(",") if m]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"--methods must be of {', '.join(known)} (got {', '.join(unknown)})")
    if labels % 10:
        raise SystemExit("--labels must be a multiple of 10 (labels per class x 10 classes)")
    return names


def run_tail(a: argparse.Namespace, seed: int, out: Path, mu: int | None = None) -> list[str]:
    """The end of every sweep command: seed, budget (``mu`` overrides the sweep's --mu), output folder, threads
    and the --extra overrides."""
    return [f"--run.seed={seed}", f"--train.steps={a.steps}", f"--train.mu={a.mu if mu is None else mu}",
            f"--run.out={out}",
            "--overwrite", "--run.progress=false", *([f"--run.threads={a.threads}"] if a.threads else []),
            *shlex.split(a.extra)]


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
    return records.result_config(yaml.safe_load(C.to_yaml(C.resolve(preset, overrides=args))))


def same_config(argv: list[str], recorded: dict) -> bool:
    """Whether ``argv`` resolves to the ``recorded`` config (a log line's), result-neutral keys aside; keys a
    recorded config predates count as the value it ran with (records.as_ran)."""
    return records.as_ran(recorded) == resolved_config(argv)


def finished(summary: dict, config: dict) -> bool:
    """Whether a run ended as planned: all its steps, or stopped by its own train.max_minutes (a time budget),
    not by a signal or a crash."""
    limit = config.get("train", {}).get("max_minutes", 0) or 0
    return not summary.get("stopped_early") or (limit > 0 and summary.get("train_seconds", 0) >= limit * 60)


def reusable(argv: list[str], entry: dict | None) -> bool:
    """Whether a log line is a finished run of ``argv`` that needs no rerun (same command, ``finished``, the
    command still resolves to its config)."""
    if entry is None or " ".join(entry["command"]) != " ".join(argv) or not finished(entry["summary"], entry["config"]):
        return False
    if same_config(argv, entry["config"]):
        return True
    print(f"  {entry['run']}: same command, but its defaults have changed since; running it again", flush=True)
    return False


def adoptable(argv: list[str], out: Path) -> bool:
    """Whether ``out`` already holds a finished run of the config ``argv`` resolves to (run by hand there)."""
    import json

    import yaml

    if not (out / "summary.json").exists() or not (out / "config.yaml").exists():
        return False
    config = yaml.safe_load((out / "config.yaml").read_text())
    return finished(json.loads((out / "summary.json").read_text()), config) and same_config(argv, config)


def resumable(argv: list[str], out: Path) -> bool:
    """Whether ``out`` holds an unfinished run of the config ``argv`` resolves to, with a checkpoint to go on
    from (last.pt)."""
    import json

    import yaml

    if not (out / "last.pt").exists() or not (out / "config.yaml").exists():
        return False
    config = yaml.safe_load((out / "config.yaml").read_text())
    summary = out / "summary.json"
    if summary.exists() and finished(json.loads(summary.read_text()), config):
        return False
    return same_config(argv, config)


def beside(out: Path, suffix: str) -> Path:
    """The file kept beside the run folder ``out``: its name and ``suffix`` (the whole name, so that run folders
    named with a dot, such as ``CE_lambda_u0.067_s0``, keep files of their own)."""
    return out.parent / (out.name + suffix)


def run_one(argv: list[str], out: Path, log: Path, key: str, force: bool = False, adopt: bool = False,
            resume: bool = True) -> dict:
    """Run ``argv`` (``semisup train ...``, writing ``out``) unless ``log`` holds a reusable run of it under
    ``key``, or (``adopt``) ``out`` holds a finished run of its config; with ``resume``, an unfinished run of
    its config in ``out`` continues from its last.pt. Returns the run's log line (recording it when it ran or
    was adopted); the CPUs it ran on are kept beside the run folder (``out``.cpus), one line per process."""
    entry = records.read(log).get(key)
    if not force and reusable(argv, entry):
        return entry
    if not force and adopt and adoptable(argv, out):
        print(f"  {out}: a finished run of this config is there; recording it", flush=True)
        entry = records.from_run_dir(out, argv, key, date=records.file_date(out / "summary.json"))
        records.put(log, entry)
        return entry
    go_on = not force and resume and resumable(argv, out)
    cmd = [a for a in argv if a != "--overwrite"] + ["--resume"] if go_on else argv
    run_log, cpus = beside(out, ".log"), beside(out, ".cpus")
    run_log.parent.mkdir(parents=True, exist_ok=True)
    if go_on:
        print(f"  {out}: continuing its unfinished run from last.pt", flush=True)
        earlier = cpus.read_text() if cpus.exists() else "unknown CPU\n"
    cpus.write_text((earlier if go_on else "") + records.cpu_name() + "\n")
    with open(run_log, "a" if go_on else "w") as f:
        subprocess.run([sys.executable, "-m", "semisup", *cmd[1:]], check=True, stdout=f, stderr=subprocess.STDOUT)
    ran_on = " + ".join(dict.fromkeys(cpus.read_text().split("\n")[:-1]))  # in order, each once
    entry = records.from_run_dir(out, argv, key, cpu=ran_on)
    records.put(log, entry)
    return entry


def run_all(runs: list[tuple[list[str], Path, str]], log: Path, jobs: int, force: bool = False,
            adopt: bool = False, resume: bool = True) -> list[dict]:
    """``runs`` = (argv, out, key) each; ``jobs`` at a time, in order; returns their log lines, in order.
    ``resume``: an unfinished run continues from its last.pt (``run_one``)."""
    check_imported(log)

    def go(run):
        argv, out, key = run
        print("+", " ".join(argv), flush=True)
        e = run_one(argv, out, log, key, force, adopt, resume)
        s = e["summary"]
        print(f"  {out}: final {s['final']['test_top1']:.4f} ({s['train_seconds'] / 60:.1f} min)", flush=True)
        return e

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(go, runs))


def check_imported(log: Path) -> None:
    """Stop (one line) when run folders of the folder layout lie beside the log unimported: the sweep would
    run them again."""
    left = records.unimported(log)
    if left:
        raise SystemExit(f"{log.with_suffix('')} holds {len(left)} run folder(s) not in {log.name} "
                         f"({left[0]}, ...); import them first: python benchmarks/records.py import "
                         f"{log.with_suffix('')}")


def last_record(entry: dict) -> dict:
    """The last metrics line of a run (the final evaluation, with its train-side statistics)."""
    return entry["metrics"][-1]


def precision(summaries: list[dict]) -> str:
    """What the runs computed in, from their summaries' ``amp`` (str of the autocast dtype, 'None' = fp32)."""
    amps = sorted({s.get("amp", "?") for s in summaries})
    return {"torch.bfloat16": "bf16 autocast", "None": "fp32"}.get(amps[0], amps[0]) if len(amps) == 1 \
        else "mixed precisions " + ", ".join(amps)
