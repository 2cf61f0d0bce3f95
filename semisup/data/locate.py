"""Where a source's files are: the search roots (``data.root``, else ``$SEMISUP_DATA``,
``~/.cache/semisup/data`` and ``./data``) and, when ``data.download=true``, a download through
torchvision into the first root. torchvision is used only to download, never to read."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .dataset import why


def default_roots() -> list[Path]:
    env = os.environ.get("SEMISUP_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path.home() / ".cache/semisup/data", Path("data")]


def locate(name: str, root: str | None, download: bool, dirs: Callable[[Path], list[Path]],
           has: Callable[[Path], bool], fetch: Callable[[str], object], how: str,
           extra: tuple[str, ...] = ()) -> Path:
    """First directory (over the search roots) holding the files; downloads when allowed."""
    roots = [Path(root).expanduser()] if root else default_roots() + [Path(e) for e in extra]
    tried = []
    for r in roots:
        for d in dirs(r):
            tried.append(str(d))
            if has(d):
                return d
    if download:
        dest = roots[0]
        try:
            fetch(str(dest))
        except Exception as e:  # torchvision raises URLError, RuntimeError, ...: the user needs one line
            raise DataError(f"downloading {name} into {dest} failed ({why(e)}); without a network, copy "
                            f"the files there by hand and set data.root={dest}") from None
        for d in dirs(dest):
            if has(d):
                return d
        raise DataError(f"downloaded {name} into {dest} but found no files in {', '.join(map(str, dirs(dest)))}")
    raise DataError(f"{name} not found; tried {', '.join(tried)}. Get it with {how}, or set data.root=DIR "
                    "(or $SEMISUP_DATA) to where it is")
