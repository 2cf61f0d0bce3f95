"""records.py: the run logs of the sweeps. A run folder of the folder layout (command.txt, config.yaml,
summary.json, metrics.jsonl) becomes one log line and comes back byte for byte; importing a run again
replaces its line; the committed logs hold the documented fields."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import records
import yaml

from semisup import config as C

ROOT = Path(__file__).resolve().parents[2]


def old_layout_run(root: Path, key: str, seed: int = 0, top1: float = 0.5) -> Path:
    """A finished run as the sweeps recorded it before the logs: the four files in ROOT/KEY/, written the way
    the sweep (command.txt) and semisup (config.yaml, summary.json, metrics.jsonl) write them."""
    d = root / key
    d.mkdir(parents=True)
    argv = ["semisup", "train", "--preset", "fashion_mnist_lt100", "--algorithm.name=fixmatch",
            f"--run.seed={seed}", "--train.steps=30", f"--run.out=runs/x/{key}", "--overwrite", "--run.progress=false"]
    cfg = C.resolve("fashion_mnist_lt100", overrides=argv[4:8])
    (d / "command.txt").write_text(" ".join(argv) + "\n")
    (d / "config.yaml").write_text(C.to_yaml(cfg))
    (d / "summary.json").write_text(json.dumps({"steps": 30, "final": {"step": 30, "test_top1": top1},
                                                "stopped_early": False, "apr": {"mean": 0.85}}, indent=2))
    curve = [{"step": s, "lr": 0.03 * (1 - s / 30), "test": {"top1": top1 * s / 30, "per_class_recall": [0.1] * 10}}
             for s in (10, 20, 30)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    return d


def test_log_path_names_the_jsonl_of_a_records_value():
    assert records.log_path("benchmarks/records/imbalanced_3000") == Path("benchmarks/records/imbalanced_3000.jsonl")
    assert records.log_path("a/b.jsonl") == Path("a/b.jsonl")


def test_a_folder_record_round_trips_through_the_log_byte_for_byte(tmp_path):
    root = tmp_path / "cifar10_lt_arl"
    run = old_layout_run(root, "cifar10_lt_arl/CE_s0")
    assert records.import_folders(root, date="2026-12-04T17:27:41+00:00", cpu="Intel(R) Xeon(R) Processor") == [
        "cifar10_lt_arl/CE_s0"]
    log = tmp_path / "cifar10_lt_arl.jsonl"
    [line] = log.read_text().splitlines()
    e = json.loads(line)
    assert list(e) == ["run", "date", "cpu", "command", "config", "summary", "metrics"]
    assert e["run"] == "cifar10_lt_arl/CE_s0" and e["date"] == "2026-12-04T17:27:41+00:00"
    assert e["cpu"] == "Intel(R) Xeon(R) Processor"
    assert e["command"] == (run / "command.txt").read_text().split()
    assert e["config"] == yaml.safe_load((run / "config.yaml").read_text())  # nested, not the YAML text
    assert e["summary"]["final"]["test_top1"] == 0.5 and [m["step"] for m in e["metrics"]] == [10, 20, 30]
    back = tmp_path / "back"
    records.export_folders(log, back)
    for name in records.FOLDER_FILES:
        assert (back / "cifar10_lt_arl/CE_s0" / name).read_bytes() == (run / name).read_bytes(), name


def test_importing_a_run_again_replaces_its_line(tmp_path):
    root = tmp_path / "sweep"
    old_layout_run(root, "p/CE_s0", top1=0.5)
    records.import_folders(root, date="2026-12-04T17:27:41+00:00", cpu="Intel(R) Xeon(R) Processor")
    records.import_folders(root)  # the same folders twice: still one line, its date and CPU kept
    [line] = (tmp_path / "sweep.jsonl").read_text().splitlines()
    assert (json.loads(line)["date"], json.loads(line)["cpu"]) == ("2026-12-04T17:27:41+00:00",
                                                                   "Intel(R) Xeon(R) Processor")
    (root / "p/CE_s0/summary.json").write_text(json.dumps({"final": {"test_top1": 0.6}}, indent=2))  # rerun
    old_layout_run(root, "p/BCE_s0")
    records.import_folders(root)
    runs = records.read(tmp_path / "sweep.jsonl")
    assert list(runs) == ["p/BCE_s0", "p/CE_s0"]  # sorted by key
    assert runs["p/CE_s0"]["summary"]["final"]["test_top1"] == 0.6


def test_the_import_command_writes_dir_jsonl_and_removes_the_folders_when_asked(tmp_path, capsys):
    root = tmp_path / "cifar10_lt_arl"
    old_layout_run(root, "cifar10_lt_arl/CE_s0")
    old_layout_run(root, "cifar10_lt_arl/BCE_s0", seed=1)
    records.main(["import", str(root), "--remove"])
    assert "2 run(s)" in capsys.readouterr().out
    assert not root.exists()  # folders gone, once the log holds them
    runs = records.read(tmp_path / "cifar10_lt_arl.jsonl")
    assert sorted(runs) == ["cifar10_lt_arl/BCE_s0", "cifar10_lt_arl/CE_s0"]
    assert runs["cifar10_lt_arl/CE_s0"]["date"]  # outside git: the summary's file time
    records.main(["list", str(tmp_path / "cifar10_lt_arl")])
    assert "cifar10_lt_arl/CE_s0\t" in capsys.readouterr().out


def test_an_incomplete_run_folder_is_a_one_line_error_and_nothing_is_written(tmp_path):
    root = tmp_path / "sweep"
    run = old_layout_run(root, "l40/fixmatch_s0")
    (run / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"l40/fixmatch_s0: not a complete run record \(no summary.json\)"):
        records.import_folders(root)
    assert not (tmp_path / "sweep.jsonl").exists()
    with pytest.raises(SystemExit, match="no run folder"):
        records.import_folders(tmp_path / "empty")


def test_unimported_lists_folders_beside_a_log_that_lacks_them(tmp_path):
    root = tmp_path / "sweep"
    old_layout_run(root, "p/CE_s0")
    log = tmp_path / "sweep.jsonl"
    assert records.unimported(log) == ["p/CE_s0"]
    records.import_folders(root)
    assert records.unimported(log) == []


def test_the_committed_logs_hold_one_complete_run_per_line():
    logs = sorted((ROOT / "benchmarks" / "records").glob("*.jsonl"))
    assert logs, "no run log under benchmarks/records"
    for log in logs:
        keys = []
        for line in log.read_text().splitlines():
            e = json.loads(line)
            assert list(e) == ["run", "date", "cpu", "command", "config", "summary", "metrics"], log
            assert e["command"][:2] == ["semisup", "train"] and e["metrics"] and "final" in e["summary"], e["run"]
            keys.append(e["run"])
        assert keys == sorted(set(keys)), f"{log.name}: keys not unique and sorted"


def test_compare_puts_two_logs_side_by_side_with_what_differs(tmp_path, capsys, monkeypatch):
    """compare: each run name both logs hold, over its common seeds: both finals, the paired difference, the
    tail recall of long-tailed runs and the config fields that differ (a key the old config predates counts
    as the value it ran with, so only real changes show)."""
    for seed, (a, b) in enumerate(((0.50, 0.53), (0.60, 0.61))):
        old_layout_run(tmp_path / "old", f"lt/CE_s{seed}", seed=seed, top1=a)
        old_layout_run(tmp_path / "new", f"lt/CE_s{seed}", seed=seed, top1=b)
    old_layout_run(tmp_path / "new", "lt/BCE_s0")  # only in the new log: not compared
    records.import_folders(tmp_path / "old")
    records.import_folders(tmp_path / "new")
    log = tmp_path / "new.jsonl"
    for path, tail in ((tmp_path / "old.jsonl", 0.2), (log, 0.3)):
        for e in records.read(path).values():
            e["metrics"][-1]["test"]["tail_recall"] = tail + 0.1 * int(e["run"][-1])
            if path == log:  # the rerun: ARL's detach changed; the neutral run.threads too
                e["config"]["algorithm"]["arl_detach"] = not e["config"]["algorithm"]["arl_detach"]
                e["config"]["run"]["threads"] = 7
            records.put(path, e)
    runs = records.read(log)
    rows = records.compare(tmp_path / "old.jsonl", log)
    detach = runs["lt/CE_s0"]["config"]["algorithm"]["arl_detach"]
    assert rows[0].startswith("| run | seeds | final top-1, old | final top-1, new | new - old (paired) | tail recall")
    assert rows[2] == (f"| lt/CE | 0, 1 | 55.00 ± 7.07 | 57.00 ± 5.66 | 2.00 ± 1.41 | 25.00 ± 7.07 | 35.00 ± 7.07 | "
                       f"`algorithm.arl_detach: {not detach} -> {detach}` |")
    assert len(rows) == 3
    records.main(["compare", str(tmp_path / "old"), str(tmp_path / "new")])
    assert "| lt/CE | 0, 1 |" in capsys.readouterr().out
    import results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(results, "machine", lambda: "a test machine")
    records.main(["compare", str(tmp_path / "old"), str(tmp_path / "new"), "--publish", "Old and new"])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Old and new" in text and "| lt/CE | 0, 1 |" in text and "records.py compare" in text
    # a variant against its control, seed by seed, in one log: BCE_s0 (the new log only) against CE_s0
    rows = records.compare(log, log, [("lt/BCE", "lt/CE")])
    assert len(rows) == 3 and rows[2].startswith("| lt/BCE vs lt/CE | 0 | 53.00 | 50.00 | -3.00 | ")
    records.main(["compare", str(tmp_path / "new"), str(tmp_path / "new"), "--pair", "lt/BCE=lt/CE"])
    assert "| lt/BCE vs lt/CE | 0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no common seed for --pair lt/CE=lt/BCE"):
        records.compare(tmp_path / "old.jsonl", log, [("lt/CE", "lt/BCE")])
    with pytest.raises(SystemExit):
        records.main(["compare", str(tmp_path / "old"), str(tmp_path / "new"), "--pair", "lt/BCE"])  # not NEW=OLD
    with pytest.raises(SystemExit, match="no run key in common"):
        records.compare(tmp_path / "old.jsonl", tmp_path / "none.jsonl")
    with pytest.raises(SystemExit):
        records.main(["compare", str(tmp_path / "old"), str(tmp_path / "none")])  # no such log: usage error
