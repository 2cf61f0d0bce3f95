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


def test_a_run_stopped_by_its_own_time_limit_is_finished_a_signalled_one_is_not():
    budget = {"train": {"max_minutes": 120}}
    assert sweep.finished({"stopped_early": False}, {"train": {}})
    assert sweep.finished({"stopped_early": True, "train_seconds": 7200.4}, budget)
    assert not sweep.finished({"stopped_early": True, "train_seconds": 3000.0}, budget)  # SIGTERM at 50 min
    assert not sweep.finished({"stopped_early": True, "train_seconds": 9999.0}, {"train": {"max_minutes": 0}})


def test_adopt_records_a_finished_run_folder_of_the_same_config_without_running_it(tmp_path, fake_semisup):
    import conftest

    runs = plan(tmp_path)
    by_hand = [a for a in runs[0][0] if a != "--run.progress=false"]  # other words, the same config
    conftest.fake_run_files(by_hand)
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(runs, log, jobs=1, adopt=True)
    assert [a[5] for a in fake_semisup] == ["--run.seed=1"]  # seed 0 adopted, seed 1 trained
    line = records.read(log)["p/fixmatch_s0"]
    assert line["command"] == runs[0][0] and line["summary"]["final"]["test_top1"] == 0.5
    (runs[1][1] / "config.yaml").write_text((runs[1][1] / "config.yaml").read_text().replace("lr: 0.03", "lr: 0.1"))
    records.write(log, {})
    sweep.run_all(runs, log, jobs=1, adopt=True)
    assert [a[5] for a in fake_semisup] == ["--run.seed=1", "--run.seed=1"]  # another config there: trained
    sweep.run_all(plan(tmp_path / "other"), tmp_path / "other.jsonl", jobs=1)  # without adopt: always trained
    assert len(fake_semisup) == 4


def _stopped_part_way(argv: list[str]) -> Path:
    """The run folder of ``argv`` as SIGTERM leaves it: summary stopped early, a last.pt to go on from."""
    import json

    import conftest

    out = conftest.fake_run_files(argv)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "stopped_early": True, "train_seconds": 30.0}))
    (out / "last.pt").write_bytes(b"checkpoint")
    return out


def test_a_run_stopped_part_way_continues_from_its_checkpoint_and_names_every_cpu_it_ran_on(tmp_path, fake_semisup):
    runs = plan(tmp_path)
    out = _stopped_part_way(runs[0][0])
    sweep.beside(out, ".cpus").write_text("Other CPU\n")
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(runs, log, jobs=1)
    resumed, fresh = fake_semisup
    assert resumed == [a for a in runs[0][0] if a != "--overwrite"] + ["--resume"]
    assert fresh == runs[1][0]  # nothing there: a new run, over anything
    line = records.read(log)["p/fixmatch_s0"]
    assert line["command"] == runs[0][0]  # the sweep's words, so a later sitting reuses the line
    assert line["cpu"] == f"Other CPU + {records.cpu_name()}"
    assert records.read(log)["p/fixmatch_s1"]["cpu"] == records.cpu_name()
    assert sweep.run_all(runs, log, jobs=1) and len(fake_semisup) == 2  # both finished: reused
    sweep.beside(_stopped_part_way(runs[1][0]), ".cpus").unlink()
    records.write(log, {})
    sweep.run_all(runs[1:], log, jobs=1)
    assert records.read(log)["p/fixmatch_s1"]["cpu"] == f"unknown CPU + {records.cpu_name()}"  # begun before .cpus


def test_run_folders_named_with_a_dot_keep_a_log_and_cpu_file_each(tmp_path, fake_semisup):
    runs = []
    for (argv, _, key), name in zip(plan(tmp_path), ("CE_lambda_u0.067_s0", "CE_lambda_u0.1_s0")):
        out = tmp_path / "runs" / "p" / name
        runs.append(([f"--run.out={out}" if a.startswith("--run.out=") else a for a in argv], out, key))
    (tmp_path / "runs" / "p").mkdir(parents=True)
    sweep.beside(_stopped_part_way(runs[0][0]), ".cpus").write_text("Other CPU\n")
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(runs, log, jobs=1)
    names = sorted(p.name for p in (tmp_path / "runs" / "p").iterdir())
    assert names == ["CE_lambda_u0.067_s0", "CE_lambda_u0.067_s0.cpus", "CE_lambda_u0.067_s0.log",
                     "CE_lambda_u0.1_s0", "CE_lambda_u0.1_s0.cpus", "CE_lambda_u0.1_s0.log"]
    assert fake_semisup[0][-1] == "--resume"  # the first went on from its checkpoint and kept its CPU line
    assert records.read(log)["p/fixmatch_s0"]["cpu"] == f"Other CPU + {records.cpu_name()}"
    assert records.read(log)["p/fixmatch_s1"]["cpu"] == records.cpu_name()


def test_a_stopped_run_of_another_config_a_finished_one_or_resume_off_start_again(tmp_path, fake_semisup):
    runs = plan(tmp_path, seeds=(0,))
    out = _stopped_part_way(runs[0][0])
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace("lr: 0.03", "lr: 0.1"))
    log = tmp_path / "sweep.jsonl"
    sweep.run_all(runs, log, jobs=1)
    assert fake_semisup[-1] == runs[0][0]  # another config there: trained from the start, --overwrite
    (out / "last.pt").write_bytes(b"checkpoint")  # the finished run's files, last.pt among them
    records.write(log, {})
    sweep.run_all(runs, log, jobs=1)
    assert fake_semisup[-1] == runs[0][0]  # finished, not in the log (no --adopt): trained again
    _stopped_part_way(runs[0][0])
    records.write(log, {})
    sweep.run_all(runs, log, jobs=1, resume=False)
    assert fake_semisup[-1] == runs[0][0] and len(fake_semisup) == 3
    assert records.read(log)["p/fixmatch_s0"]["cpu"] == records.cpu_name()  # a new run: its .cpus starts anew


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
    argv = ["--labels", "40", "--seeds", "0,1", "--steps", "5", "--mu", "1", "--algorithms",
            "supervised,fixmatch,pi_model_adam", "--records", str(tmp_path / "records" / "fm"), "--out",
            str(tmp_path / "runs")]
    _main(fashion_mnist, monkeypatch, argv)
    assert len(fake_semisup) == 6 and len(records.read(tmp_path / "records" / "fm.jsonl")) == 6
    text = (tmp_path / "RESULTS.md").read_text()
    title = "Fashion-MNIST, 40 labels, fm: supervised, fixmatch, pi_model_adam"
    protocol = ("SGD 0.03 Nesterov (momentum 0.9), cosine decay (FixMatch's), weight decay 0.0005 (supervised, "
                "fixmatch); AdamW 0.003, cosine decay (FixMatch's), decoupled weight decay (x lr) 0 (pi_model_adam)")
    assert protocol in text  # the optimiser of each run, not the first run's for all
    assert text.count(f"## {title}") == 1 and f"<!-- begin: {title} -->" in text
    assert "| fixmatch | 2 | 50.50 ± 0.71 | 50.50 ± 0.71 | 50.50 ± 0.71 | 75.00 ± 0.00 | 80.00 ± 0.00 |" in text
    assert "Records: [records/fm.jsonl](records/fm.jsonl)." in text  # relative to RESULTS.md
    _main(fashion_mnist, monkeypatch, argv)  # a later sitting: every run from the log, the section replaced
    assert len(fake_semisup) == 6
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
    assert "paper top-1" not in out  # not its protocol
    assert "| fixmatch | 1.000 | 1.000 | 100.0 | 0.00 | 1.000 |" in out  # CE: every class weighs 1
    assert "| supervised |" not in out.split("The class weight")[1]  # no unlabelled term


def test_imbalanced_sweep_on_the_arl_protocol_sets_the_papers_figures_and_order_beside_its_own(
        tmp_path, fake_semisup, monkeypatch, capsys):
    import imbalanced

    argv = ["--preset", "cifar10_lt_arl", "--seeds", "0,1", "--steps", "5", "--methods", "ARL+,CE,BCE", "--records",
            str(tmp_path / "lt.jsonl"), "--out", str(tmp_path / "runs"), "--no-write"]
    _main(imbalanced, monkeypatch, argv)
    out = capsys.readouterr().out
    assert "The ARL paper's figures at gamma 100" in out
    assert "| ARL+ | 80.00 | 50.50 ± 0.71 | 0.78 ± 0.08 | 0.80 ± 0.00 | 1.05 | 0.900 ± 0.000 | 3 | 1 |" in out
    assert "| CE | 73.17 | 50.50 ± 0.71 | 0.98 ± 0.02 |" in out
    assert "Order by top-1, paper: CE < BCE < ARL+; ours: ARL+ < CE < BCE." in out  # ties keep the asked order
    # the class weights at gamma 100, N1 1000 (N = 1000, 599, ..., 16, 10): alpha_k = N_(9-k) / N_0, mean 0.2478;
    # the fake's passed pseudo-labels are 90 of class 0 (w 0.0404) and 10 of class 1 (w 0.0646) -> 0.0428; ARL+'s
    # labelled term weighs sum N_k alpha_k / (mean alpha * sum N_k) = 98.2 / (0.2478 * 2478) = 0.160
    assert "| CE | 1.000 ± 0.000 | 1.000 ± 0.000 | 100.0 ± 0.0 | 0.00 ± 0.00 | 1.000 ± 0.000 |" in out
    assert "| BCE | 0.043 ± 0.000 | 0.043 ± 0.000 | 100.0 ± 0.0 | 0.00 ± 0.00 | 1.000 ± 0.000 |" in out
    assert "| ARL+ | 0.043 ± 0.000 | 0.043 ± 0.000 | 100.0 ± 0.0 | 0.00 ± 0.00 | 0.160 ± 0.000 |" in out
    _main(imbalanced, monkeypatch, [*argv[:-1], "--extra=--data.gamma_l=200", "--no-write"])
    out = capsys.readouterr().out
    assert "at gamma 200" in out and "| CE | 66.37 | 50.50 ± 0.71 | – | 0.80 ± 0.00 | – |" in out
    _main(imbalanced, monkeypatch, [*argv[:-1], "--extra=--data.gamma_l=10", "--no-write"])
    assert "paper top-1" not in capsys.readouterr().out  # a gamma the paper did not run


def test_the_class_weight_table_needs_a_long_tailed_split_and_a_fixmatch_family_term():
    import imbalanced

    cfg = {"data": {"split": "balanced"}, "algorithm": {"loss_u": "bce", "loss_x": "ce", "arl_alpha": "reference"}}
    line = {"train": {"per_class_passed": [5, 5]}}
    assert imbalanced.labelled_counts(cfg, 2) is None
    assert imbalanced.weight_table({("BCE", 0): ({}, line, cfg)}, {("BCE", 0): [line]}, ["BCE"], [0]) == []
    lt = {**cfg, "data": {"split": "long_tail", "n1": 100, "gamma_l": 10}}
    assert imbalanced.labelled_counts(lt, 2) == [100, 10]
    table = imbalanced.weight_table({("BCE", 0): ({}, line, lt)}, {("BCE", 0): [line]}, ["BCE"], [0])
    assert table[-1] == "| BCE | 1.000 | 1.000 | 50.0 | 50.00 | 1.000 |"  # equal passes: w averages to 1
    assert imbalanced.weight_table({("abc", 0): ({}, line, {**lt, "algorithm": {}})}, {("abc", 0): [line]},
                                   ["abc"], [0]) == []


def test_cifar10_budget_sweep_tables_top1_at_minutes_and_draws_the_curve(tmp_path, fake_semisup, monkeypatch):
    import cifar10_budget

    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(cifar10_budget, "FIGURES", tmp_path / "figures")
    argv = ["--data", "/data/cifar10", "--labels", "250", "--records", str(tmp_path / "c10.jsonl"),
            "--out", str(tmp_path / "runs")]
    _main(cifar10_budget, monkeypatch, argv)
    assert [a[3] for a in fake_semisup] == ["cifar10_4000_cpu_warmup", "cifar10_4000_cpu",  # first parts first
                                            "cifar10_4000_cpu_supervised", "cifar10_4000_cpu_warm"]
    assert all("--data.labels_per_class=25" in a and "--data.root=/data/cifar10" in a for a in fake_semisup)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## CIFAR-10, 250 labels in 2 hours on 2 cores" in text
    # the fake runs: 10 % at 1 s of training, 50 % at 60 s; steps planned from each preset
    assert "| fixmatch | 0 | `cifar10_4000_cpu` | 5700 / 5700 | 0.600 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | " \
           "50.00 | 50.00 (5700) | 1.0 |" in text
    assert "| supervised | 0 | `cifar10_4000_cpu_supervised` | 27000 / 27000 |" in text
    assert (tmp_path / "figures" / "cifar10_budget_l250.png").read_bytes()[:4] == b"\x89PNG"
    curve = [{"train_seconds": 30.0, "test": {"top1": 0.2}}, {"train_seconds": 1000.0, "test": {"top1": 0.6}}]
    assert [cifar10_budget.at_minutes(curve, t) for t in (15, 16.7)] == [0.2, 0.6]  # 900 s < 1000 s < 1002 s
    assert cifar10_budget.at_minutes([{"train_seconds": 1000.0, "test": {"top1": 0.6}}], 15) is None
    for bad, msg in ((["--methods", "fixmatch,mixmatch"], "--methods must be"),
                     (["--labels", "255"], "multiple of 10")):
        with pytest.raises(SystemExit, match=msg):
            _main(cifar10_budget, monkeypatch, argv + bad)


def test_pseudo_label_sweep_pairs_each_method_with_supervised_on_the_same_seed(tmp_path, fake_semisup, monkeypatch,
                                                                               capsys):
    import pseudo_label

    argv = ["--data", "fashion_mnist", "--seeds", "0,1", "--methods", "supervised,pl,pl(raw),supervised(raw)",
            "--records", str(tmp_path / "pl.jsonl"), "--out", str(tmp_path / "runs"), "--no-write"]
    _main(pseudo_label, monkeypatch, argv)
    assert len(fake_semisup) == 8 and all("--data.name=fashion_mnist" in a for a in fake_semisup)
    assert "--optim.ema=0" in fake_semisup[2] and "--algorithm.name=supervised" in fake_semisup[3]
    out = capsys.readouterr().out
    # the fake's top-1 is 0.5 + 0.01 x seed for every method: every paired difference is 0
    # class 6 is the fake's weakest (30 % recall at seed 0, 40 % at seed 1)
    assert "| minus supervised (paired) | recall of class 6 |" in out
    assert ("| pl | 2 | 50.50 ± 0.71 | 50.50 ± 0.71 | 0.00 ± 0.00 | 35.00 ± 7.07 | 75.00 ± 0.00 | 80.00 ± 0.00 | – |"
            in out)
    assert "| supervised | 2 | 50.50 ± 0.71 | 50.50 ± 0.71 | – |" in out
    with pytest.raises(SystemExit, match="--methods must be"):
        _main(pseudo_label, monkeypatch, argv[:4] + ["--methods", "pl,fixmatch"])


def test_cifar10_budget_two_part_method_starts_fixmatch_from_the_first_part_and_tables_their_added_minutes(
        tmp_path, fake_semisup, monkeypatch):
    import cifar10_budget

    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(cifar10_budget, "FIGURES", tmp_path / "figures")
    log = tmp_path / "c10.jsonl"
    argv = ["--data", "/data/cifar10", "--methods", "warm", "--records", str(log), "--out", str(tmp_path / "runs")]
    _main(cifar10_budget, monkeypatch, argv)
    first = tmp_path / "runs" / "l4000" / "warmup_s0"
    assert [a[3] for a in fake_semisup] == ["cifar10_4000_cpu_warmup", "cifar10_4000_cpu_warm"]
    assert f"--model.init_from={first / 'last.pt'}" in fake_semisup[1]
    text = (tmp_path / "RESULTS.md").read_text()
    # each fake part: 10 % at 1 s, 50 % at 60 s; the second part's evaluations come after the first's 60 s
    assert "| warm | 0 | `cifar10_4000_cpu_warmup` → `cifar10_4000_cpu_warm` | 6600 + 4300 / 6600 + 4300 | " \
           "0.600 + 0.600 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 (part 1, step 6600) | 2.0 |" in text
    assert "a stop after 120 minutes of training (a two-part run: of both parts)" in text
    assert ", allocator jemalloc (the runs' summary.json)" in text
    assert cifar10_budget.timeline([records.read(log)[k] for k in ("l4000/warmup_s0", "l4000/warm_s0")])[2] \
        ["train_seconds"] == 61.0
    _main(cifar10_budget, monkeypatch, argv)
    assert len(fake_semisup) == 2  # both parts reused from the log
    records.write(log, {k: v for k, v in records.read(log).items() if k != "l4000/warmup_s0"})
    _main(cifar10_budget, monkeypatch, argv)  # the first part trains again, so must the second
    assert [a[3] for a in fake_semisup[2:]] == ["cifar10_4000_cpu_warmup", "cifar10_4000_cpu_warm"]
