"""Atomic checkpoints: write a temp file, fsync, rename; the previous good file is kept as *.prev.pt."""
from __future__ import annotations

import os
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


def save(obj: dict, path: str | Path, keep_previous: bool = True) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, prev_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint; a truncated or corrupt file raises UserError naming the previous one."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(obj, dict) or "model" not in obj:
            raise ValueError("not a semisup checkpoint")
        return obj
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} not found") from None
    except Exception as e:  # torch raises many types for a damaged zip / pickle
        hint = ""
        if prev_path(path).exists():
            hint = f"; the previous checkpoint {str(prev_path(path))!r} may be used instead"
        raise UserError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}){hint}") from None


def load_latest(run_dir: str | Path, map_location="cpu") -> tuple[dict, Path]:
    """last.pt, or last.prev.pt when last.pt is missing or damaged (a crash mid-rotation)."""
    last = Path(run_dir) / "last.pt"
    candidates = [last, prev_path(last)]
    errors = []
    for c in candidates:
        if c.exists():
            try:
                return load(c, map_location), c
            except UserError as e:
                errors.append(str(e))
    if errors:
        raise UserError(errors[0])
    raise UserError(f"no checkpoint to resume from in {str(run_dir)!r} (looked for last.pt and last.prev.pt)")
