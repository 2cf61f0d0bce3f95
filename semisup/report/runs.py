"""Read what a run directory already holds (never write to it): config, split manifest, metrics.

Works on finished, running and resumed runs: a running run may have a half-written last line in
metrics.jsonl (skipped), and a resumed run may have logged the same evaluation twice (the later
record wins).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import UserError


@dataclass
class RunData:
    path: Path
    name: str
    config: dict  # config.yaml as written (resolved)
    records: list[dict]  # metrics.jsonl, one per evaluation, sorted by step, unique steps
    split: dict | None  # split.json's seed and counts (index lists dropped); None if missing
    summary: dict | None  # summary.json (a finished or stopped run), None while running
    skipped_last_line: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def part(self) -> str:
        """The record part holding the headline figures: "test", or "val" for data without a test set."""
        return "test" if "test" in self.records[-1] else "val"

    @property
    def part_name(self) -> str:
        return "test" if self.part == "test" else "validation"

    @property
    def num_classes(self) -> int:
        return len(self.records[-1][self.part]["per_class_recall"])

    @property
    def labelled_counts(self) -> list[int] | None:
        counts = (self.split or {}).get("counts", {}).get("labelled")
        return counts if counts and len(counts) == self.num_classes else None

    def order(self) -> list[int]:
        """Class indices head -> tail: most labelled images first, ties by class index."""
        counts = self.labelled_counts or [0] * self.num_classes
        return sorted(range(self.num_classes), key=lambda k: (-counts[k], k))

    @property
    def best(self) -> dict:
        """The evaluation best.pt was written at: top-1 on val when the run has one, else on test."""
        key = "val" if "val" in self.records[-1] else "test"
        return max(self.records, key=lambda r: (r[key if key in r else self.part]["top1"], -r["step"]))

    @property
    def final(self) -> dict:
        return self.records[-1]

    @property
    def steps_planned(self) -> int | None:
        return self.config.get("train", {}).get("steps")

    @property
    def status(self) -> str:
        if self.summary is None:
            return "running (or killed)"
        if self.summary.get("stopped_early"):
            return "stopped early"
        return "finished"


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """Records of metrics.jsonl by step (a repeated step: the later record wins) and whether an
    unparsable last line (a record being written right now) was skipped."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    by_step, skipped = {}, False
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "step" not in rec or not ("test" in rec or "val" in rec):
                raise ValueError("not an evaluation record")
        except ValueError as e:
            if i == len(lines) - 1:
                skipped = True
                continue
            raise UserError(f"{str(path)!r} line {i + 1} is not a metrics record ({e}); "
                            "was the file edited by hand?") from None
        by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)], skipped


def read_run(run_dir: str | Path, name: str | None = None) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} not found")
    cfg_file, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not cfg_file.exists():
        raise UserError(f"{str(run_dir)!r} holds no run (no config.yaml); pass the directory given as run.out")
    try:
        config = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{str(cfg_file)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    records, skipped = read_metrics(metrics) if metrics.exists() else ([], False)
    if not records:
        raise UserError(f"{str(run_dir)!r} has no evaluation in metrics.jsonl yet; build the report after the "
                        "first evaluation (every train.eval_every steps)")
    split = _read_json(run_dir / "split.json")
    if split is not None:
        split = {k: v for k, v in split.items() if k in ("seed", "num_classes", "counts")}
    run = RunData(run_dir, name or run_dir.name, config, records, split, _read_json(run_dir / "summary.json"),
                  skipped)
    if skipped:
        run.notes.append("the last line of metrics.jsonl was incomplete (an evaluation being written) and was skipped")
    return run


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_names(paths: list[Path]) -> list[str]:
    """Shortest distinct path suffixes: runs/a/fixmatch_s0 and runs/b/fixmatch_s0 -> a/fixmatch_s0, ..."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}:{n}" for i, n in enumerate(names)]  # the same directory given twice


def series(records: list[dict], *keys: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of records[...][k1][k2]..., leaving out records that lack the key."""
    xs, ys = [], []
    for r in records:
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float, list)):
            xs.append(r["step"])
            ys.append(v)
    return np.asarray(xs), np.asarray(ys, dtype=np.float64)
