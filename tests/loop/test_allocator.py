"""The start-up switch to jemalloc: when it restarts the process, with what environment, and what a
summary says about it."""
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, tiny_overrides

from semisup import allocator

LIB = "/opt/lib/libjemalloc.so.2"


@pytest.fixture
def execs(monkeypatch):
    """Records the execve calls reexec_with_jemalloc makes (and makes none), on Linux, with a jemalloc
    found at LIB and no allocator variables in the environment."""
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda exe, args, env: calls.append((exe, args, env)))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: LIB)
    for k in ("LD_PRELOAD", "MALLOC_CONF", "SEMISUP_ALLOCATOR"):
        monkeypatch.delenv(k, raising=False)
    return calls


def test_restarts_under_jemalloc_with_decay_off(execs):
    allocator.reexec_with_jemalloc(["train", "--preset=x"])
    [(exe, args, env)] = execs
    assert exe == sys.executable and args == [sys.executable, "-m", "semisup", "train", "--preset=x"]
    assert env["LD_PRELOAD"] == LIB and env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def test_keeps_the_callers_preloads_and_malloc_conf(execs, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/x/libother.so")
    monkeypatch.setenv("MALLOC_CONF", "narenas:2")
    allocator.reexec_with_jemalloc(["train"])
    [(_, _, env)] = execs
    assert env["LD_PRELOAD"] == f"{LIB} /x/libother.so" and env["MALLOC_CONF"] == "narenas:2"


def test_jemalloc_preloaded_without_malloc_conf_restarts_to_set_it(execs, monkeypatch):
    # jemalloc's default decay purges every allocation over 8 MB at once: the preload alone is not enough
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    allocator.reexec_with_jemalloc(["train"])
    [(_, _, env)] = execs
    assert env["LD_PRELOAD"] == "/usr/lib/libjemalloc.so.2"  # not preloaded twice
    assert env["MALLOC_CONF"] == allocator.MALLOC_CONF


@pytest.mark.parametrize("env, found", [
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_CONF": "narenas:2"}, LIB),  # already configured
    ({"SEMISUP_ALLOCATOR": "system"}, LIB),  # opted out
    ({}, None),  # no jemalloc on this machine
])
def test_no_restart(execs, monkeypatch, env, found):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: found)
    allocator.reexec_with_jemalloc(["train"])
    assert execs == []


def test_no_restart_off_linux(execs, monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    allocator.reexec_with_jemalloc(["train"])
    assert execs == []


def test_find_jemalloc_prefers_the_conda_environment(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libjemalloc.so.2").touch()
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path))
    assert allocator.find_jemalloc() == str(tmp_path / "lib" / "libjemalloc.so.2")


@pytest.mark.parametrize("env, other, expected", [
    ({}, "default", "default"),
    ({}, "glibc malloc", "glibc malloc"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "default", "jemalloc, default decay"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_CONF": allocator.MALLOC_CONF}, "default", "jemalloc"),
])
def test_describe(monkeypatch, env, other, expected):
    for k in ("LD_PRELOAD", "MALLOC_CONF"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert allocator.describe(other) == expected


@pytest.mark.skipif(allocator.find_jemalloc() is None or sys.platform != "linux",
                    reason="apt-get install libjemalloc2")
def test_a_run_started_with_a_bare_jemalloc_preload_trains_with_decay_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_CONF", "SEMISUP_ALLOCATOR")}
    env["LD_PRELOAD"] = allocator.find_jemalloc()
    res = subprocess.run([sys.executable, "-m", "semisup", "train",
                          *tiny_overrides(tmp_path / "run", steps=2, **{"train.eval_every": 2})],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["allocator"] == "jemalloc"
