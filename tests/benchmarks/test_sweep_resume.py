"""The sweeps resume from their run log (sweeps/sweep.py): a run whose line holds the same command, still
resolving to the recorded config, not stopped early, is not run again; anything else runs and replaces its
line. The sweep scripts build their tables from the log and write their own RESULTS.md section. The
`semisup train` subprocess is faked (conftest.fake_semisup): nothing trains."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import records
import results
import sweep


def plan(tmp_path: Path, seeds=(0, 1), extra: tuple[str, ...] = ()) -> list[tuple[list[str], Path, str]]:
    """Two tiny runs as a sweep builds them: (argv, out, key)."""
    runs = []
    for seed in seeds:
        out = tmp_path / "runs" / "p" / f"fixmatch_s{seed}"
        argv = ["semisup", "train", "--preset", "fashion_mnist_lt100", "--algorithm.name=fixmatch",
                f"--run.seed={seed}", "--train.steps=30", f"--run.out={out}", "--overwrite", "--run.progress=false",
                *extra]
        runs.append((argv, out, f"p/fixmatch_s{seed}"))
    return runs


def test_runs_recorded_with_the_same_command_and_config_are_not_run_again(tmp_path, fake_semisup):
    log = tmp_path / "sweep.jsonl"
    first = sweep.run_all(plan(tmp_path), log, jobs=2)
    assert len(fake_semisup) == 2 and sorted(records.read(log)) == ["p/fixmatch_s0", "p/fixmatch_s1"]
    again = sweep.run_all(plan(tmp_path), log, jobs=2)
    assert len(fake_semisup) == 2  # both reused from the log
    assert again == first
    assert first[0]["command"] == plan(tmp_path)[0][0] and first[0]["cpu"] == records.cpu_name()


def test_a_run_whose_recorded_config_differs_from_what_its_command_resolves_to_runs_again(tmp_path, fake_semisup):
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(plan(tmp_path), log, jobs=1)
    runs = records.read(log)
    del runs["p/fixmatch_s0"]["config"]["optim"]["ema_warmup"]  # recorded before the key: it ran the uniform warm-up
    records.write(log, runs)
    sweep.run_all(plan(tmp_path), log, jobs=1)
    assert [a[5] for a in fake_semisup[2:]] == ["--run.seed=0"]  # only the changed one ran again
    assert records.read(log)["p/fixmatch_s0"]["config"]["optim"]["ema_warmup"] == "recent"  # its line replaced
    assert len(log.read_text().splitlines()) == 2


def test_a_changed_command_an_early_stop_or_force_run_again(tmp_path, fake_semisup):
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(plan(tmp_path), log, jobs=1)
    sweep.run_all(plan(tmp_path, extra=("--train.eval_every=10",)), log, jobs=1)  # other words, same keys
    assert len(fake_semisup) == 4 and len(records.read(log)) == 2
    runs = records.read(log)
    runs["p/fixmatch_s1"]["summary"]["stopped_early"] = True
    records.write(log, runs)
    sweep.run_all(plan(tmp_path, extra=("--train.eval_every=10",)), log, jobs=1)
    assert len(fake_semisup) == 5  # the early-stopped run only
    sweep.run_all(plan(tmp_path, seeds=(0,), extra=("--train.eval_every=10",)), log, jobs=1, force=True)
    assert len(fake_semisup) == 6


def test_a_sweep_stops_while_run_folders_beside_its_log_are_not_imported(tmp_path, fake_semisup):
    folder = tmp_path / "sweep" / "p" / "fixmatch_s0"
    folder.mkdir(parents=True)
    (folder / "command.txt").write_text("semisup train\n")
    with pytest.raises(SystemExit, match=r"import them first: python benchmarks/records.py import .*sweep$"):
        sweep.run_all(plan(tmp_path), tmp_path / "sweep.jsonl", jobs=1)
    assert not fake_semisup


def _main(module, monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    module.main()


def test_fashion_mnist_sweep_builds_its_table_from_the_log_and_replaces_its_section(tmp_path, fake_semisup,
                                                                                    monkeypatch):
    import fashion_mnist

    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    argv = ["--labels", "40", "--seeds", "0,1", "--steps", "5", "--mu", "1", "--algorithms", "supervised,fixmatch",
            "--records", str(tmp_path / "records" / "fm"), "--out", str(tmp_path / "runs")]
    _main(fashion_mnist, monkeypatch, argv)
    assert len(fake_semisup) == 4 and len(records.read(tmp_path / "records" / "fm.jsonl")) == 4
    text = (tmp_path / "RESULTS.md").read_text()
    title = "Fashion-MNIST, 40 labels, fm: supervised, fixmatch"
    assert text.count(f"## {title}") == 1 and f"<!-- begin: {title} -->" in text
    assert "| fixmatch | 2 | 50.50 ± 0.71 | 50.50 ± 0.71 | 50.50 ± 0.71 | 75.00 ± 0.00 | 80.00 ± 0.00 |" in text
    assert "Records: [records/fm.jsonl](records/fm.jsonl)." in text  # relative to RESULTS.md
    _main(fashion_mnist, monkeypatch, argv)  # a later sitting: every run from the log, the section replaced
    assert len(fake_semisup) == 4
    assert (tmp_path / "RESULTS.md").read_text().count(f"<!-- begin: {title} -->") == 1


def test_imbalanced_sweep_builds_its_table_from_the_log(tmp_path, fake_semisup, monkeypatch, capsys):
    import imbalanced

    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    argv = ["--seeds", "0", "--steps", "5", "--methods", "supervised,fixmatch", "--records",
            str(tmp_path / "imb.jsonl"), "--out", str(tmp_path / "runs"), "--no-write"]
    _main(imbalanced, monkeypatch, argv)
    out = capsys.readouterr().out
    assert "## Class-imbalanced SSL, fashion_mnist_lt100, imb: supervised, fixmatch" in out
    assert "| fixmatch | 1 | 50.00 | 90.00 | 70.00 | 60.00 | 70.00 | 50.00 | 80.00 | 0.900 | 80.00 |" in out
    assert "| fixmatch | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 75 |" in out  # per-class pass rate
    assert sorted(records.read(tmp_path / "imb.jsonl")) == ["fashion_mnist_lt100/fixmatch_s0",
                                                             "fashion_mnist_lt100/supervised_s0"]
    assert not (tmp_path / "RESULTS.md").exists()  # --no-write
