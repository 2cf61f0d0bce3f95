"""Shared by the benchmark scripts: the machine description and the script's own section of RESULTS.md.

RESULTS.md holds one section per question, the current answer on top. The part a script wrote lies between
two marker comments named by the script's title:

    <!-- begin: Training step speed: fixmatch / wrn / fashion_mnist -->
    date; machine.  Command: `...`  [Records: ...]  the script's text and table
    <!-- end: Training step speed: fixmatch / wrn / fashion_mnist -->

A script run again replaces what lies between its markers (the section's heading, notes and history outside
them stay); a title not in the file yet becomes a new section at the end.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nOne section per question, each with the current answer: the newest "
          "measurement, its command, date and machine.\n")


def cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> str:
    import torch

    from semisup import allocator

    cpu = cpu_name() or "unknown CPU"
    alloc = allocator.describe("glibc malloc")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, allocator of this script's process: {alloc}")


def command() -> str:
    """This script's command line, as run from the repository root."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def markers(title: str) -> tuple[str, str]:
    """The comments around the part of RESULTS.md the script of ``title`` writes."""
    return f"<!-- begin: {title} -->", f"<!-- end: {title} -->"


def link(path: Path, results: Path | None = None) -> str:
    """A markdown link to ``path`` relative to RESULTS.md when it lies under RESULTS.md's folder, else the path."""
    path, here = Path(path).resolve(), (results or RESULTS).resolve().parent
    if not path.is_relative_to(here):
        return f"`{path}`"
    rel = path.relative_to(here).as_posix()
    return f"[{rel}]({rel})"


def block(body: str, cmd: str | None = None, records: Path | None = None) -> str:
    """The generated part of a section: date and machine, the exact command, the records, ``body``."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rec = f"Records: {link(records)}.\n\n" if records is not None else ""
    return f"{when}; {machine()}.\n\nCommand: `{cmd or command()}`\n\n{rec}{body.rstrip()}\n"


def replace_section(text: str, title: str, content: str) -> str:
    """``text`` (RESULTS.md) with ``content`` between the markers of ``title``, or with a new section
    '## title' holding them at the end when the file has no such markers."""
    begin, end = markers(title)
    pat = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    new = f"{begin}\n{content.rstrip()}\n{end}"
    if pat.search(text):
        return pat.sub(lambda _: new, text, count=1)
    return f"{text.rstrip()}\n\n## {title}\n\n{new}\n"


def write_section(title: str, content: str, path: Path | None = None) -> None:
    """Replace (or add) the section of ``title`` in ``path`` (default: RESULTS.md)."""
    path = Path(path or RESULTS)
    text = path.read_text() if path.exists() else HEADER
    path.write_text(replace_section(text, title, content))


def publish(title: str, body: str, write: bool = True, records: Path | None = None, cmd: str | None = None) -> None:
    """Write the script's section of RESULTS.md (``write_section``) and print it; only print it when not
    ``write`` (a script's --no-write)."""
    content = block(body, cmd, records)
    if write:
        write_section(title, content)
    print(f"## {title}\n\n{content}")


def split_preset(overrides: list[str]) -> tuple[str | None, list[str]]:
    """A bench script's trailing semisup arguments -> (the --preset=NAME value or None, the other overrides)."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("--preset=")), None)
    return preset, [o for o in overrides if not o.startswith("--preset=")]


SCHEDULE_WORDS = {"cosine": "cosine decay (FixMatch's)", "cosine_zero": "cosine decay to 0", "constant": "constant lr"}


def per_run(runs: dict[str, dict], words) -> str:
    """``words(config)`` for a table's runs (run name -> nested config): one phrase when every run shares it,
    else each phrase with the runs it applies to, the most common first."""
    groups: dict[str, list[str]] = {}
    for run, cfg in runs.items():
        groups.setdefault(words(cfg), []).append(run)
    if len(groups) == 1:
        return next(iter(groups))
    ranked = sorted(groups.items(), key=lambda g: -len(g[1]))
    return "; ".join(f"{w} ({', '.join(dict.fromkeys(names))})" for w, names in ranked)


def optimiser(runs: dict[str, dict]) -> str:
    """The optimiser of a table's runs in words, from their configs (run name -> nested config), per_run."""
    def words(o: dict) -> str:
        sgd = o.get("name", "sgd") == "sgd"  # configs recorded before optim.name trained with SGD
        name = (f"SGD {o['lr']:g}" + (" Nesterov" if o.get("nesterov", True) else "")
                + f" (momentum {o.get('momentum', 0.9):g})" if sgd else f"AdamW {o['lr']:g}")
        sched = o.get("schedule", "cosine")
        warm = f", {o['warmup_steps']} warm-up steps" if o.get("warmup_steps") else ""
        decay = "weight decay" if sgd else "decoupled weight decay (x lr)"
        return f"{name}, {SCHEDULE_WORDS.get(sched, sched)}{warm}, {decay} {o['weight_decay']:g}"

    return per_run(runs, lambda cfg: words(cfg["optim"]))


def fmt(v: list[float], digits: int = 2) -> str:
    """mean ± sample std (the mean alone for one value; '–' for none)."""
    if not v:
        return "–"
    return f"{statistics.mean(v):.{digits}f}" + (f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else "")
