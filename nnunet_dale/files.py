"""Plumbing for writing outputs: files and folders that appear whole, with the mode the user's umask gives.

`tempfile.mkstemp` / `mkdtemp` create 0600 files and 0700 folders whatever the umask; a result renamed into place
from them would stay readable by its owner only. These helpers give the temporary the mode a plain `open` or
`mkdir` would have (0644 / 0755 under the usual umask 022) before it is renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "default_mode", "staging_dir"]


def default_mode(directory: bool = False) -> int:
    """The mode `open` (0o666) or `mkdir` (0o777) would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write: Callable[[IO[Any]], Any], binary: bool = False) -> None:
    """Call write(f) on a temporary file beside `path`, then os.replace it: readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def staging_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty folder in `parent` (to fill, then rename into place) with `mkdir`'s mode under the umask."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    folder.chmod(default_mode(directory=True))
    return folder
