"""results.py: a script writes its own part of RESULTS.md, between the marker comments of its title, and
leaves the rest of the file (headings, hand-written notes, history, other sections) as it was."""
from __future__ import annotations

import re
from pathlib import Path

import results

ROOT = Path(__file__).resolve().parents[2]

FILE = """# Benchmark results

## Training step speed: fixmatch / wrn / fashion_mnist

<!-- begin: Training step speed: fixmatch / wrn / fashion_mnist -->
2026-12-04 09:34 UTC; old machine.

| old | table |
<!-- end: Training step speed: fixmatch / wrn / fashion_mnist -->

Note (written by hand): about the old table.

History:

- 2026-12-03: an older one.

## Training step speed: fixmatch / wrn / fashion_mnist, run.fused_bn=off

<!-- begin: Training step speed: fixmatch / wrn / fashion_mnist, run.fused_bn=off -->
untouched
<!-- end: Training step speed: fixmatch / wrn / fashion_mnist, run.fused_bn=off -->
"""


def test_a_section_is_replaced_between_its_markers_and_nothing_else_changes():
    new = results.replace_section(FILE, "Training step speed: fixmatch / wrn / fashion_mnist", "new text\n| new |")
    assert "| old | table |" not in new and "new text\n| new |\n<!-- end: Training step speed" in new
    outside = lambda t: re.sub(r"<!-- begin: (.*?) -->\n.*?<!-- end: \1 -->", "", t, flags=re.S)  # noqa: E731
    assert outside(new) == outside(FILE)  # heading, note, history and the other section as they were
    assert "untouched" in new


def test_a_new_title_becomes_a_section_at_the_end_and_is_replaced_next_time():
    once = results.replace_section(FILE, "Memory over a long run", "first")
    assert once.startswith(FILE.rstrip()) and once.endswith(
        "## Memory over a long run\n\n<!-- begin: Memory over a long run -->\nfirst\n"
        "<!-- end: Memory over a long run -->\n")
    twice = results.replace_section(once, "Memory over a long run", "second")
    assert twice.count("## Memory over a long run") == 1 and "second" in twice and "first" not in twice


def test_publish_writes_the_section_with_date_command_and_records_and_no_write_only_prints(tmp_path, monkeypatch,
                                                                                         capsys):
    path = tmp_path / "RESULTS.md"
    monkeypatch.setattr(results, "RESULTS", path)
    monkeypatch.setattr(results, "machine", lambda: "a test machine")
    results.publish("Q", "| a | table |", write=False, cmd="python x.py")
    assert not path.exists() and "| a | table |" in capsys.readouterr().out
    results.publish("Q", "| a | table |", records=tmp_path / "records" / "q.jsonl", cmd="python x.py")
    text = path.read_text()
    assert text.startswith(results.HEADER) and "## Q\n\n<!-- begin: Q -->\n" in text
    assert re.search(r"<!-- begin: Q -->\n\d{4}-\d\d-\d\d \d\d:\d\d UTC; a test machine\.\n\nCommand: `python x.py`\n\n"
                     r"Records: \[records/q.jsonl\]\(records/q.jsonl\)\.\n\n\| a \| table \|\n<!-- end: Q -->", text)


def test_the_committed_results_file_has_one_marker_pair_per_title_and_links_that_exist():
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text()
    begins = re.findall(r"<!-- begin: (.*?) -->", text)
    assert begins == re.findall(r"<!-- end: (.*?) -->", text) and len(begins) == len(set(begins))
    for target in re.findall(r"\]\((records/[^)]+)\)", text):
        assert (path.parent / target).is_file(), target


def test_the_optimiser_phrase_names_each_optimiser_with_the_runs_that_use_it():
    """A table's protocol line says which optimiser trained it, from the runs' configs: one phrase when all
    share it; otherwise each with its runs, the most common first (a sweep of SGD runs and Adam variants)."""
    sgd = {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine",
           "warmup_steps": 0}
    adam = {**sgd, "name": "adamw", "lr": 0.002, "weight_decay": 0.02, "schedule": "constant"}
    phrase = "SGD 0.03 Nesterov (momentum 0.9), cosine decay (FixMatch's), weight decay 0.0005"
    assert results.optimiser({"fixmatch": {"optim": sgd}, "pi_model": {"optim": sgd}}) == phrase
    recorded_before_the_name = {k: v for k, v in sgd.items() if k not in ("name", "schedule", "warmup_steps")}
    assert results.optimiser({"mixmatch": {"optim": recorded_before_the_name}}) == phrase
    runs = {"mixmatch_adam": {"optim": adam}, "mixmatch": {"optim": sgd}, "pi_model": {"optim": sgd},
            "simclr": {"optim": {**sgd, "nesterov": False, "schedule": "cosine_zero", "warmup_steps": 100}}}
    assert results.optimiser(runs) == (
        f"{phrase} (mixmatch, pi_model); AdamW 0.002, constant lr, decoupled weight decay (x lr) 0.02 (mixmatch_adam); "
        "SGD 0.03 (momentum 0.9), cosine decay to 0, 100 warm-up steps, weight decay 0.0005 (simclr)")
    strong = {"fixmatch": {"data": {"strong": "randaugment"}}, "acr": {"data": {"strong": "randaugment_mc"}},
              "daso": {"data": {"strong": "randaugment_mc"}}}
    phrase = results.per_run(strong, lambda c: c["data"]["strong"])  # the imbalanced sweep's strong view
    assert phrase == "randaugment_mc (acr, daso); randaugment (fixmatch)"
