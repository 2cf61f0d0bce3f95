"""Atomic checkpoints: write a temp file, fsync, rename; the previous good file is kept as *.prev.pt.

A process killed at any moment leaves either the old ``last.pt`` or the new one (plus, at worst, a
stray ``.last.pt.tmp<pid>`` that :func:`remove_stale_temps` clears and no loader reads), and the
rotation ``last.pt -> last.prev.pt`` means one good checkpoint survives even a kill between the two
renames (then only ``last.prev.pt`` exists) or a file damaged after it was written.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import torch

from .errors import UserError


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, e: OSError) -> UserError:
    """The one-line error for a write that found no space: the file, and the free space where it goes."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = -1
    room = f"{free / 2**20:.1f} MiB free there" if free >= 0 else "free space unknown"
    return UserError(f"no space left to write {str(path)!r} ({room}; {e.strerror or e}); the run stopped and keeps its "
                     "last complete checkpoint: free some space, then continue it with --resume")


def write_text(path: Path, text: str) -> None:
    """Write a small file atomically (temp + rename): a full disk leaves the old one, never half of the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in DISK_FULL:
            raise disk_full(path, e) from None
        raise


def _write(f, data: str) -> None:  # one place for the tests to make the disk full
    f.write(data)


def append_line(path: Path, line: str) -> None:
    """Append one line to a record file (metrics.jsonl). A full disk may cut the line: readers skip a line
    that does not parse, and a resume rewinds the file to the last whole record."""
    try:
        with open(path, "a") as f:
            _write(f, line)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full(Path(path), e) from None
        raise


def save(obj: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write a checkpoint atomically: temp file, fsync, then the rename; the previous one is kept as
    *.prev.pt. A full disk removes the temp file and raises the one-line error: the old checkpoint stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in DISK_FULL:
            raise disk_full(path, e) from None
        raise
    if keep_previous and path.exists():
        os.replace(path, prev_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


class _Damaged(Exception):
    """A checkpoint file that exists but cannot be read (message without the remedy)."""


def _read(path: Path, map_location) -> dict:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} not found") from None
    except Exception as e:  # torch raises many types for a damaged zip / pickle
        raise _Damaged(f"checkpoint {str(path)!r} is corrupt or truncated, or not a checkpoint at all "
                       f"({type(e).__name__})") from None
    if not isinstance(obj, dict) or "model" not in obj or "step" not in obj:
        raise _Damaged(f"{str(path)!r} is not a semisup run checkpoint (it holds a {type(obj).__name__}"
                       f"{' without model/step' if isinstance(obj, dict) else ''})")
    return obj


def load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint; a truncated or corrupt file raises UserError naming the previous one."""
    path = Path(path)
    try:
        return _read(path, map_location)
    except _Damaged as e:
        hint = ""
        if prev_path(path).exists():
            hint = f"; the previous checkpoint {str(prev_path(path))!r} may be used instead"
        raise UserError(f"{e}{hint}") from None


def load_latest(run_dir: str | Path, map_location="cpu", missing_ok: bool = False) -> tuple[dict | None, Path | None]:
    """last.pt, or last.prev.pt when last.pt is missing or damaged (a crash mid-rotation, a bad disk).

    Falling back prints one warning line naming the file skipped. Both damaged: UserError naming
    both. Neither there: UserError, or ``(None, None)`` when ``missing_ok`` (killed before the first
    checkpoint: the caller starts from step 0).
    """
    last = Path(run_dir) / "last.pt"
    damaged = []
    for c in (last, prev_path(last)):
        if not c.exists():
            continue
        try:
            ckpt = _read(c, map_location)
        except _Damaged as e:
            damaged.append(str(e))
            continue
        if c != last:
            why = damaged[0] if damaged else f"{str(last)!r} is missing (the run stopped while renaming it)"
            print(f"semisup: warning: {why}; skipped it, resuming from {str(c)!r} (step {ckpt['step']})",
                  file=sys.stderr)
        return ckpt, c
    if damaged:
        tail = f"; {damaged[1]}" if len(damaged) > 1 else f" and {str(prev_path(last))!r} does not exist"
        raise UserError(f"{damaged[0]}{tail}: no checkpoint to resume from; start again with --overwrite")
    if missing_ok:
        return None, None
    raise UserError(f"no checkpoint to resume from in {str(run_dir)!r} (looked for last.pt and last.prev.pt)")


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete ``.*.tmp<pid>`` files (checkpoints, records) a killed writer left behind (no loader reads them)."""
    gone = []
    for p in Path(run_dir).glob(".*.tmp*"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


META_KEYS = ("dataset", "num_classes", "classes", "channels", "image_size", "model", "algorithm")


def check_meta(ckpt: dict, expected: dict, path: str | Path) -> None:
    """UserError when the checkpoint was written by a run of another dataset, model or algorithm.

    Weight shapes alone miss e.g. two datasets with the same number of classes and image size."""
    meta = ckpt.get("meta") or {}
    for k in META_KEYS:
        if k in meta and k in expected and meta[k] != expected[k]:
            def short(v):
                return v if not isinstance(v, list) or len(v) <= 4 else [*v[:4], "..."]
            raise UserError(f"checkpoint {str(path)!r} is from another run: its {k} is {short(meta[k])!r} but this "
                            f"run's is {short(expected[k])!r}; point at the checkpoint of this run")
