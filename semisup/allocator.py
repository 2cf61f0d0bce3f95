"""Start training under jemalloc when the machine has it.

glibc's malloc returns freed tensor memory to the kernel and faults it back in on the next step
(measured here: about a third of CPU time in page faults); jemalloc with decay disabled keeps it
mapped. Measured on this 2-core machine: +17% FixMatch steps/s for the CPU-sized net (see
benchmarks/RESULTS.md). The switch is an exec of the same command with LD_PRELOAD set, done once
at start-up by the console entry point, never by library calls. Opt out: SEMISUP_ALLOCATOR=system.

jemalloc preloaded by the caller without MALLOC_CONF is not enough: its default decay gives freed
pages back after 10 s, and at once for allocations over 8 MB (its "oversize" arena), which are most
of WRN-28-2's activations at 320 images a step. Such a process restarts itself with MALLOC_CONF set
(measured: 1.40x the images/s of the same preload without it, WRN-28-2 FixMatch at 320 images a
step on a 2-core AMD EPYC; RESULTS.md "Training speed by allocator").
A MALLOC_CONF the caller set is kept.
"""
from __future__ import annotations

import glob
import os
import sys

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
    "/opt/homebrew/lib/libjemalloc.2.dylib",
)
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_jemalloc() -> str | None:
    prefix = os.environ.get("CONDA_PREFIX")
    extra = glob.glob(os.path.join(prefix, "lib", "libjemalloc.so*")) if prefix else []
    return next((p for p in (*extra, *_CANDIDATES) if os.path.exists(p)), None)


def reexec_with_jemalloc(argv: list[str]) -> None:
    """Replace this process by ``python -m semisup ARGV`` under jemalloc (returns if not applicable)."""
    if os.environ.get("SEMISUP_ALLOCATOR", "jemalloc") != "jemalloc" or sys.platform != "linux":
        return
    env = dict(os.environ)
    if "jemalloc" in env.get("LD_PRELOAD", ""):
        if "MALLOC_CONF" in env:
            return  # already running under it, configured
    else:
        lib = find_jemalloc()
        if lib is None:
            return
        env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "semisup", *argv], env)


def describe(other: str = "default") -> str:
    """This process's allocator, for summaries and benchmark headers: "jemalloc" (with a MALLOC_CONF),
    "jemalloc, default decay" (preloaded without one) or ``other``."""
    if "jemalloc" not in os.environ.get("LD_PRELOAD", ""):
        return other
    return "jemalloc" if "MALLOC_CONF" in os.environ else "jemalloc, default decay"
