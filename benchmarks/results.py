"""Shared by the benchmark scripts: machine description and appending a section to RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    alloc = "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, allocator of this script's process: {alloc}")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def append(title: str, body: str, cmd: str | None = None) -> None:
    """Append '## title' with the date, machine, exact command and ``body`` (markdown)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n## {title}\n\n{when}; {machine()}.\n\nCommand: `{cmd or command()}`\n\n{body.rstrip()}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script named in its command, "
                           "on the machine it names. Timings are medians; these machines are shared, so "
                           "compare ratios measured in one run.\n")
    with open(RESULTS, "a") as f:
        f.write(text)
    print(text)


def publish(title: str, body: str, write: bool = True) -> None:
    """Append the section to RESULTS.md (``append``), or only print it (a script's --no-write)."""
    if write:
        append(title, body)
    else:
        print(f"## {title}\n\n{body.rstrip()}")


def split_preset(overrides: list[str]) -> tuple[str | None, list[str]]:
    """A bench script's trailing semisup arguments -> (the --preset=NAME value or None, the other overrides)."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("--preset=")), None)
    return preset, [o for o in overrides if not o.startswith("--preset=")]
