"""Run logs of the sweep benchmarks: one JSON line per finished run, one file per sweep.

A sweep (sweeps/fashion_mnist.py, sweeps/imbalanced.py) keeps its log in benchmarks/records/<sweep>.jsonl and
commits it, so a sweep too long for one sitting continues in a later one, on another machine, where it
stopped; every table is rebuilt from it. Each line is what a run folder holds that a table or a later sitting
needs (no checkpoints):

    {"run": "l40/fixmatch_s0",              the run's key: its folder under the sweep's --out
     "date": "2026-12-04T07:17:14+00:00",   when the record was written (UTC): the end of the run; for an
                                            imported folder, the last commit that changed its summary.json
                                            (else the file's modification time); null if unknown
     "cpu": "Intel(R) Xeon(R) Processor",   the CPU's model name; null if unknown
     "command": ["semisup", "train", ...],  the exact argv
     "config": {...},                       the resolved config.yaml, nested
     "summary": {...},                      summary.json
     "metrics": [{...}, ...]}               metrics.jsonl, one object per evaluation: the curve

Lines are sorted by run key; recording a run replaces the line of its key, so a run imported or rerun twice
is one line.

Runs recorded in the folder layout (DIR/<run key>/ with command.txt, config.yaml, summary.json and
metrics.jsonl, e.g. benchmarks/records/cifar10_lt_arl/cifar10_lt_arl/CE_s0/) go into DIR.jsonl with:

    python benchmarks/records.py import benchmarks/records/cifar10_lt_arl
    python benchmarks/records.py import benchmarks/records/cifar10_lt_arl --remove   # then delete the folders

and back into folders (the same four files, byte for byte) with:

    python benchmarks/records.py export benchmarks/records/cifar10_lt_arl.jsonl /tmp/cifar10_lt_arl
    python benchmarks/records.py list benchmarks/records/cifar10_lt_arl.jsonl       # key, date, final top-1

Two logs of the same sweep (an earlier one and its rerun after defaults changed) side by side, by run name and
seed, with the config fields that differ:

    python benchmarks/records.py compare benchmarks/records/imbalanced_3000.jsonl \
        benchmarks/records/imbalanced_3000_ref.jsonl --publish "TITLE"

or a variant against its control, seed by seed (the logs may be one file):

    python benchmarks/records.py compare OLD.jsonl NEW.jsonl --pair l40/mixmatch_adam=l40/mixmatch_mu1
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results.py beside it
from results import cpu_name, fmt  # noqa: E402

RECORDS = Path(__file__).resolve().parent / "records"
FOLDER_FILES = ("command.txt", "config.yaml", "summary.json", "metrics.jsonl")
_write_lock = threading.Lock()  # the sweeps record runs from several threads


def log_path(records: str | Path) -> Path:
    """The log a --records value names: the path itself if it ends in .jsonl, else PATH.jsonl."""
    p = Path(records)
    return p if p.suffix == ".jsonl" else p.with_name(p.name + ".jsonl")


def read(log: Path) -> dict[str, dict]:
    """Every run of ``log`` by key ({} when the file does not exist yet)."""
    if not log.exists():
        return {}
    runs = {}
    for i, line in enumerate(log.read_text().splitlines(), 1):
        try:
            e = json.loads(line)
            runs[e["run"]] = e
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"{log}: line {i} is not a run record (JSON with a run key); fix or remove it") from None
    return runs


def write(log: Path, runs: dict[str, dict]) -> None:
    """Write ``runs`` sorted by key, atomically (a temporary file, then a rename)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = log.with_name(f".{log.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(runs[k], ensure_ascii=False) + "\n" for k in sorted(runs)))
    os.replace(tmp, log)


def put(log: Path, *entries: dict) -> None:
    """Record ``entries`` in ``log``, each replacing the line of its run key."""
    with _write_lock:
        runs = read(log)
        runs.update({e["run"]: e for e in entries})
        write(log, runs)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def entry(key: str, argv: list[str], config: dict, summary: dict, metrics: list[dict], date: str | None,
          cpu: str | None) -> dict:
    """One log line, its keys in the documented order."""
    return {"run": key, "date": date, "cpu": cpu, "command": list(argv), "config": config, "summary": summary,
            "metrics": metrics}


def from_run_dir(run_dir: Path, argv: list[str], key: str, date: str | None = None, cpu: str | None = None) -> dict:
    """The log line of a run that finished in ``run_dir`` (semisup's config.yaml, summary.json and
    metrics.jsonl) on ``cpu`` (default: this machine's), dated ``date`` (default: now, the end of a run that
    just finished)."""
    import yaml

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return entry(key, argv, yaml.safe_load((run_dir / "config.yaml").read_text()),
                 json.loads((run_dir / "summary.json").read_text()), metrics, date or now(), cpu or cpu_name())


# --- the folder layout: command.txt, config.yaml, summary.json, metrics.jsonl per run --------------------------

def folder_runs(root: Path) -> list[Path]:
    """The run folders under ``root`` (those holding a command.txt), sorted."""
    return sorted(p.parent for p in root.rglob("command.txt"))


def _git(path: Path, *args: str) -> str | None:
    """The output of ``git ARGS -- PATH`` run beside ``path`` (None where git fails or is missing)."""
    try:
        out = subprocess.run(["git", *args, "--", path.name], cwd=path.parent, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if out.returncode else out.stdout.strip()


def _git_date(path: Path) -> str | None:
    """The date of the last commit that changed ``path`` (None outside git, or for a file not committed as
    it is now: its date is not git's)."""
    if _git(path, "status", "--porcelain") != "":
        return None
    date = _git(path, "log", "-1", "--format=%aI")
    if not date:
        return None
    t = datetime.datetime.fromisoformat(date)
    return t.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


def file_date(path: Path) -> str:
    t = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return t.isoformat(timespec="seconds")


def read_folder(run_dir: Path, key: str, date: str | None = None, cpu: str | None = None) -> dict:
    """The log line of a run folder; its date is ``date``, else its summary.json's last commit, else the
    file's modification time. One line of error if a file is missing."""
    import yaml

    missing = [f for f in FOLDER_FILES if not (run_dir / f).is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: not a complete run record (no {', '.join(missing)})")
    summary = run_dir / "summary.json"
    argv = (run_dir / "command.txt").read_text().rstrip("\n").split(" ")  # written as " ".join(argv) + "\n"
    try:
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except ValueError:
        raise SystemExit(f"{run_dir}: metrics.jsonl has a line that is not JSON (a cut line?); not imported") from None
    return entry(key, argv, yaml.safe_load((run_dir / "config.yaml").read_text()), json.loads(summary.read_text()),
                 metrics, date or _git_date(summary) or file_date(summary), cpu)


def folder_files(e: dict) -> dict[str, str]:
    """The four files of a run folder, as the sweeps and semisup wrote them, from its log line."""
    import yaml

    return {"command.txt": " ".join(e["command"]) + "\n",
            "config.yaml": yaml.safe_dump(e["config"], sort_keys=False),
            "summary.json": json.dumps(e["summary"], indent=2),
            "metrics.jsonl": "".join(json.dumps(m) + "\n" for m in e["metrics"])}


def import_folders(root: Path, log: Path | None = None, date: str | None = None, cpu: str | None = None,
                   remove: bool = False) -> list[str]:
    """Record every run folder under ``root`` in ``log`` (default: ROOT.jsonl), keyed by its path relative to
    ``root``; each must convert back to the same files. ``remove`` deletes the folders once the log is
    written. Returns the keys."""
    log = log or log_path(root)
    runs = folder_runs(root)
    if not runs:
        raise SystemExit(f"{root}: no run folder (a folder holding command.txt) under it")
    known, entries = read(log), []
    for d in runs:
        e = read_folder(d, d.relative_to(root).as_posix(), date, cpu)
        if not _same_content(folder_files(e), d):
            raise SystemExit(f"{d}: its files do not convert back to themselves; not imported")
        entries.append(_keep_known(e, known.get(e["run"]), date, cpu))
    put(log, *entries)
    if remove:
        for d in runs:
            shutil.rmtree(d)
        _remove_empty_dirs(root)
    return [e["run"] for e in entries]


def _keep_known(e: dict, old: dict | None, date: str | None, cpu: str | None) -> dict:
    """A run imported again with the same content keeps the date and CPU its line already has (unless given)."""
    if old is None or any(old[k] != e[k] for k in ("command", "config", "summary", "metrics")):
        return e
    return {**e, "date": date or old["date"], "cpu": cpu or old["cpu"]}


def _same_content(files: dict[str, str], run_dir: Path) -> bool:
    """Whether ``files`` hold the same data as the folder's files (JSON and YAML compared parsed)."""
    import yaml

    parse = {"command.txt": str.rstrip, "config.yaml": yaml.safe_load, "summary.json": json.loads,
             "metrics.jsonl": lambda t: [json.loads(x) for x in t.splitlines()]}
    return all(parse[n](files[n]) == parse[n]((run_dir / n).read_text()) for n in FOLDER_FILES)


def _remove_empty_dirs(root: Path) -> None:
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def export_folders(log: Path, dest: Path) -> list[str]:
    """Write each run of ``log`` as a folder DEST/<run key>/ with its four files; returns the keys."""
    runs = read(log)
    if not runs:
        raise SystemExit(f"{log}: no run recorded")
    for key, e in runs.items():
        d = dest / key
        d.mkdir(parents=True, exist_ok=True)
        for name, text in folder_files(e).items():
            (d / name).write_text(text)
    return list(runs)


def unimported(log: Path) -> list[str]:
    """Run folders in the folder layout beside ``log`` (LOG without .jsonl) whose key the log lacks."""
    root = log.with_suffix("")
    if not root.is_dir():
        return []
    have = read(log)
    return [k for k in (d.relative_to(root).as_posix() for d in folder_runs(root)) if k not in have]


# config keys that do not change a run's result (where it writes, how it reports, threads)
NEUTRAL_KEYS = {("run", "out"), ("run", "progress"), ("run", "tensorboard"), ("run", "threads")}


def result_config(cfg: dict) -> dict:
    """A nested config without its result-neutral keys (a copy)."""
    out = {sec: dict(v) if isinstance(v, dict) else v for sec, v in cfg.items()}
    for sec, key in NEUTRAL_KEYS:
        out.get(sec, {}).pop(key, None)
    return out


def as_ran(config: dict) -> dict:
    """The config a recorded run ran with, nested, result-neutral keys aside: the keys it predates filled as it
    trained (semisup's fill_saved) or with today's defaults (through the schema); as recorded where the schema
    rejects it (a key it no longer has)."""
    import yaml

    from semisup import config as C

    cfg = C.fill_saved({sec: dict(v) if isinstance(v, dict) else v for sec, v in config.items()})
    try:
        cfg = yaml.safe_load(C.to_yaml(C.from_dict(cfg)))
    except C.ConfigError:
        pass
    return result_config(cfg)


def config_changes(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for each result-changing field that differs between two recorded configs (a field
    one of them lacks shows as absent)."""
    from semisup.loop.rundir import flat

    a, b = flat(as_ran(old)), flat(as_ran(new))
    return [f"{k}: {a.get(k, 'absent')} -> {b.get(k, 'absent')}" for k in sorted(set(a) | set(b))
            if a.get(k, "absent") != b.get(k, "absent")]


def compare(old_log: Path, new_log: Path, pairs: list[tuple[str, str]] | None = None) -> list[str]:
    """Markdown rows: for each run name (the key without its _sN seed) that both logs hold, the final test top-1
    of each log over their common seeds, the paired difference, the last evaluation's tail recall (long-tailed
    splits), and the config fields that differ (those of the first common seed).

    ``pairs`` (NEW name, OLD name) compares differently named runs instead, seed by seed: a variant in the new
    log against its control in the old one (the two logs may be one file)."""
    import re

    old, new = read(old_log), read(new_log)
    groups: dict[str, list[tuple[str, str]]] = {}  # row name -> (old key, new key) per common seed
    if pairs:
        for new_name, old_name in pairs:
            for key in new:
                m = re.fullmatch(re.escape(new_name) + r"_s(\d+)", key)
                if m and f"{old_name}_s{m[1]}" in old:
                    groups.setdefault(f"{new_name} vs {old_name}", []).append((f"{old_name}_s{m[1]}", key))
        missing = [f"{n}={o}" for n, o in pairs if f"{n} vs {o}" not in groups]
        if missing:
            raise SystemExit(f"no common seed for --pair {missing[0]} in {new_log.name} and {old_log.name}; "
                             "name runs as RUN without _sN, e.g. l40/mixmatch_adam=l40/mixmatch_mu1")
    else:
        for key in new:
            if key in old:
                groups.setdefault(re.sub(r"_s\d+$", "", key), []).append((key, key))
    if not groups:
        raise SystemExit(f"{old_log.name} and {new_log.name} have no run key in common")

    def top1(e):
        return 100 * e["summary"]["final"]["test_top1"]

    def tail(e):
        t = e["metrics"][-1].get("test", {}).get("tail_recall") if e["metrics"] else None
        return None if t is None else 100 * t

    long_tail = any(e["config"].get("data", {}).get("split") == "long_tail" for e in old.values())
    rows = [f"| run | seeds | final top-1, {old_log.stem} | final top-1, {new_log.stem} | new - old (paired) | "
            + ("tail recall, old | tail recall, new | " if long_tail else "") + "what differs |",
            "|---" * (8 if long_tail else 6) + "|"]
    for name, keys in groups.items():
        o, n = [old[a] for a, _ in keys], [new[b] for _, b in keys]
        seeds = ", ".join(b.rsplit("_s", 1)[1] if re.search(r"_s\d+$", b) else "–" for _, b in keys)
        tails = [fmt([t for t in map(tail, es) if t is not None]) for es in (o, n)]
        changed = "; ".join(f"`{c}`" for c in config_changes(o[0]["config"], n[0]["config"])) or "nothing"
        rows.append(f"| {name} | {seeds} | {fmt([top1(e) for e in o])} | {fmt([top1(e) for e in n])} | "
                    f"{fmt([top1(b) - top1(a) for a, b in zip(o, n)])} | "
                    + (f"{tails[0]} | {tails[1]} | " if long_tail else "") + f"{changed} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="record the run folders under each DIR in DIR.jsonl")
    imp.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    imp.add_argument("--into", type=Path, default=None, help="the log to write (one DIR only; default DIR.jsonl)")
    imp.add_argument("--date", default=None, help="the date to record (default: git's, else the file time)")
    imp.add_argument("--cpu", default=None, help="the CPU the runs ran on, where known")
    imp.add_argument("--remove", action="store_true", help="delete the folders once the log is written")
    exp = sub.add_parser("export", help="write each run of LOG as a folder under DEST")
    exp.add_argument("log", type=Path)
    exp.add_argument("dest", type=Path)
    ls = sub.add_parser("list", help="one line per run: key, date, final test top-1")
    ls.add_argument("log", type=Path)
    cmp = sub.add_parser("compare", help="the runs two logs share, side by side, with what differs")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    cmp.add_argument("--pair", action="append", default=[], metavar="NEW=OLD",
                     help="compare run NEW of the new log with run OLD of the old one (names without _sN; repeat)")
    cmp.add_argument("--publish", default=None, metavar="TITLE", help="also write the table as RESULTS.md's TITLE")
    a = p.parse_args(argv)
    if a.cmd == "import":
        if a.into and len(a.dirs) > 1:
            p.error("--into takes one DIR")
        for d in a.dirs:
            if not d.is_dir():
                p.error(f"{d} is not a folder")
            keys = import_folders(d, a.into, a.date, a.cpu, a.remove)
            print(f"{d}: {len(keys)} run(s) -> {a.into or log_path(d)}")
    elif a.cmd == "compare":
        for log in (log_path(a.old), log_path(a.new)):
            if not log.exists():
                p.error(f"{log} does not exist")
        if any(pair.count("=") != 1 for pair in a.pair):
            p.error("--pair takes NEW=OLD, two run names without _sN")
        rows = compare(log_path(a.old), log_path(a.new), [tuple(pair.split("=")) for pair in a.pair])
        if a.publish:
            from results import publish

            cmd = "python benchmarks/records.py " + shlex.join(argv if argv is not None else sys.argv[1:])
            publish(a.publish, "\n".join(rows), records=log_path(a.new), cmd=cmd)
        else:
            print("\n".join(rows))
    elif a.cmd == "export":
        keys = export_folders(log_path(a.log), a.dest)
        print(f"{len(keys)} run(s) -> {a.dest}")
    else:
        for key, e in read(log_path(a.log)).items():
            top1 = e["summary"].get("final", {}).get("test_top1")
            print(f"{key}\t{e['date']}\t{'–' if top1 is None else f'{top1 * 100:.2f}'}")


if __name__ == "__main__":
    sys.exit(main())
