"""One process per run directory: an advisory lock (flock) on RUN_DIR/.lock, held while a train command
writes into it. The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a
killed run never leaves it stuck; the file itself stays and only records the last holder's pid."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._f = None

    def _busy(self, what: str) -> UserError:
        try:
            pid = self.path.read_text().strip() or "?"
        except OSError:
            pid = "?"
        return UserError(f"cannot {what} {str(self.path.parent)!r}: another semisup process (pid {pid}) is "
                         "training in it; wait for it to end, or choose another --run.out")

    def check(self, what: str = "use") -> None:
        """Before touching the directory: fail at once if a live process holds its lock (writes nothing)."""
        if not self.path.is_file():
            return
        with open(self.path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(what) from None
            fcntl.flock(f, fcntl.LOCK_UN)

    def acquire(self, what: str = "use") -> None:
        """Take the lock (the directory exists); held until release() or the process ends."""
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise self._busy(what) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None
