"""``RunDir``: the run directory and the only writer into it (rank 0 of a DDP job).

It checks a directory before anything is written (a run there already, a resume whose config or data
changed), creates it (config.yaml, split.json), rewinds a resumed run's log to its checkpoint, appends
the metrics records, writes checkpoints and summary.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from .. import checkpoint, dist
from ..config import Config, from_dict, load_saved, to_yaml
from ..errors import UserError
from ..runlock import RunLock

RUN_FILES = ("config.yaml", "split.json", "metrics.jsonl", "summary.json", "last.pt", "last.prev.pt",
             "best.pt", "best.prev.pt", "encoder.pt")
# Run-section keys that may change when a run is resumed (they do not change the result).
RESUMABLE_KEYS = {"run.progress", "run.tensorboard", "run.threads", "run.out", "train.max_minutes",
                  "run.dist_timeout", "train.nonfinite", "train.apr_window", "run.allow_data_change"}


def flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def eval_part(record: dict) -> str:
    """Which part of a metrics record holds the run's headline figures: "test", or "val" for a dataset without
    a test set (its figures are validation figures)."""
    return "test" if "test" in record else "val"


class RunDir:
    def __init__(self, cfg: Config, lock: RunLock, main: bool):
        self.path, self.cfg, self.lock, self.main = Path(cfg.run.out), cfg, lock, main

    def __str__(self) -> str:
        return str(self.path)

    # ---- before anything is written ----
    def check(self, resume: bool, overwrite: bool, fingerprint: str) -> None:
        """Refuse (UserError) a directory that holds another run, or a resume whose config or data changed.
        Every rank checks before rank 0 writes."""
        if self.main:
            self.lock.check("resume" if resume else "train in")
        if resume:
            self._check_config()
            self._check_data(fingerprint)
        elif any((self.path / f).exists() for f in RUN_FILES) and not overwrite:
            raise UserError(f"run directory {str(self.path)!r} already holds a run; pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --run.out")
        dist.barrier()

    def _check_config(self) -> None:
        saved = self.path / "config.yaml"
        if not saved.exists():
            raise UserError(f"cannot resume: {str(self.path)!r} holds no run (no config.yaml); drop --resume")
        # keys added after the run was written take their defaults (from_dict), or the value the run trained
        # with where the default changed since (load_saved)
        old = flat(yaml.safe_load(to_yaml(from_dict(load_saved(saved)))))
        new = flat(yaml.safe_load(to_yaml(self.cfg)))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)
        if diff:
            raise UserError(f"cannot resume {str(self.path)!r}: its config differs in {', '.join(diff)} "
                            f"(saved {diff[0]}={old.get(diff[0])!r}); use the saved config or a new run.out")

    def _check_data(self, fingerprint: str) -> None:
        """Refuse when the training data are not those the run started on (split.json's fingerprint; runs
        written before it existed have none and are not checked)."""
        try:
            saved = json.loads((self.path / "split.json").read_text()).get("data_fingerprint")
        except (OSError, ValueError):
            saved = None
        if saved and saved != fingerprint and not self.cfg.run.allow_data_change:
            raise UserError(f"cannot resume {str(self.path)!r}: the training data changed since the run started "
                            f"(data fingerprint {saved[:12]}..., now {fingerprint[:12]}...), so the split's indices "
                            "would point at other images; restore the data it trained on, or resume anyway with "
                            "--run.allow_data_change=true")

    # ---- writing ----
    def create(self, resume: bool, split_manifest: dict) -> None:
        """Take the directory: the lock, then (a new run) config.yaml and split.json in place of any old files."""
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            # two commands that both passed the checks: the second stops here, before writing
            self.lock.acquire("resume" if resume else "train in")
            if not resume:
                for f in RUN_FILES:
                    (self.path / f).unlink(missing_ok=True)
                checkpoint.write_text(self.path / "config.yaml", to_yaml(self.cfg))
                checkpoint.write_text(self.path / "split.json", json.dumps(split_manifest))
        dist.barrier()

    def resume_from(self, step: int | None, ckpt_path: Path | None, split_manifest: dict) -> None:
        """A resume whose checkpoint loaded (``step``; None: the run stopped before its first checkpoint): from
        here on the directory may change. A damaged last.pt is removed (the next save would rotate it onto
        last.prev.pt, the good one), and the log rewound to the checkpoint."""
        if self.main:
            if step is None:
                print(f"semisup: warning: {str(self.path)!r} holds no checkpoint (stopped before the first one); "
                      "starting it from step 0", file=sys.stderr)
                if not (self.path / "split.json").exists():
                    checkpoint.write_text(self.path / "split.json", json.dumps(split_manifest))
            elif ckpt_path.name != "last.pt":
                (self.path / "last.pt").unlink(missing_ok=True)
            self.rewind(step or 0)
        dist.barrier()

    def rewind(self, step: int) -> None:
        """Resuming from the checkpoint of ``step``: drop what a killed run logged after it (and a line cut
        in half by the kill), so metrics.jsonl ends as the uninterrupted run's did; clear stale temp files."""
        metrics = self.path / "metrics.jsonl"
        if metrics.exists():
            keep = []
            for line in metrics.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                    keep.append(line + "\n")
            tmp = metrics.with_name(f".metrics.jsonl.tmp{os.getpid()}")
            tmp.write_text("".join(keep))
            os.replace(tmp, metrics)
        checkpoint.remove_stale_temps(self.path)

    def append(self, record: dict) -> None:
        checkpoint.append_line(self.path / "metrics.jsonl", json.dumps(record) + "\n")

    def save(self, state: dict, name: str = "last.pt") -> None:
        if self.main:
            checkpoint.save(state, self.path / name)

    def write_summary(self, summary: dict) -> None:
        checkpoint.write_text(self.path / "summary.json", json.dumps(summary, indent=2))

    # ---- reading ----
    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines()]

    def last_record(self) -> dict:
        return json.loads((self.path / "metrics.jsonl").read_text().splitlines()[-1])
