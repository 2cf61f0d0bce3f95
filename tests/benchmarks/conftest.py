"""Shared by the benchmark-script tests: the scripts' import path, and a stand-in for the `semisup train`
subprocess the sweeps start, so a sweep runs in milliseconds without training.

The scripts import each other by name (records, results, sweep) with benchmarks/ and benchmarks/sweeps/ on
sys.path, as they do when run from the repository root; the tests import them the same way."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
for _d in (BENCH / "sweeps", BENCH):
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))


def fake_run_files(argv: list[str]) -> Path:
    """Write what ``semisup train ARGV`` leaves in its run folder (config.yaml, summary.json, metrics.jsonl),
    with made-up figures that differ by seed; returns the folder."""
    from semisup import config as C

    args = [a for a in argv[2:] if a not in ("--overwrite", "--resume")]
    i = args.index("--preset")
    preset, args = args[i + 1], args[:i] + args[i + 2:]
    cfg = C.resolve(preset, overrides=args)
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    top1 = 0.5 + 0.01 * cfg.run.seed
    (out / "config.yaml").write_text(C.to_yaml(cfg))
    (out / "summary.json").write_text(json.dumps({
        "steps": cfg.train.steps, "train_seconds": 60.0, "final": {"test_top1": top1, "test_balanced_acc": top1},
        "best": {"test_top1": top1, "step": cfg.train.steps}, "stopped_early": False, "peak_rss_mb": 900.0,
        "amp": "None", "allocator": "jemalloc", "apr": {"mean": 0.8}, "ler": 0.9}, indent=2))
    groups = {"head_recall": 0.9, "medium_recall": 0.7, "tail_recall": 0.6, "gmean_recall": 0.7,
              "minority_recall": 0.5}
    record = {"step": cfg.train.steps, "train_seconds": 60.0, "step_seconds_median": 0.5,
              "train": {"pass_rate": 0.75, "pl_acc": 0.8, "per_class_pass_rate": [0.5] * 10,
                        "per_class_passed": [90, 10] + [0] * 8},
              "test": {"top1": top1, **groups, "per_class_recall": [0.9] * 6 + [0.3 + 0.1 * cfg.run.seed] + [0.9] * 3}}
    first = {"step": 1, "test": {"top1": 0.1}, "train_seconds": 1.0, "step_seconds_median": 0.7}
    (out / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(record) + "\n")
    return out


@pytest.fixture
def fake_semisup(monkeypatch):
    """Replace subprocess.run for `python -m semisup train ...` by ``fake_run_files``; returns the list of the
    argv (``semisup train ...``) it was called with, in order."""
    calls = []
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if list(cmd[1:3]) != ["-m", "semisup"]:
            return real(cmd, *args, **kwargs)
        argv = ["semisup", *cmd[3:]]
        calls.append(argv)
        fake_run_files(argv)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)
    return calls
