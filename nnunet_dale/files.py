"""Plumbing for reading and writing outputs: files and folders that appear whole, with the mode the user's umask
gives; values made JSON-safe; the segmentation and benchmark image readers every tool shares.

`tempfile.mkstemp` / `mkdtemp` create 0600 files and 0700 folders whatever the umask; a result renamed into place
from them would stay readable by its owner only. These helpers give the temporary the mode a plain `open` or
`mkdir` would have (0644 / 0755 under the usual umask 022) before it is renamed into place.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_write",
    "blocking_file",
    "check_output_folder",
    "default_mode",
    "folder_problem",
    "json_safe",
    "load_array",
    "load_png",
    "read_segmentation",
    "short_repr",
    "staging_dir",
    "supported_endings",
]


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


def folder_problem(path: Path) -> str | None:
    """Why `path` is not a folder to read ("does not exist", "is a file, not a folder"); None when it is one."""
    path = Path(path)
    if path.is_dir():
        return None
    return "is a file, not a folder" if path.exists() else "does not exist"


def blocking_file(folder: Path) -> Path | None:
    """The file at `folder` or at one of its parents that keeps `folder` from being a folder; None if there is none."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_output_folder(folder: Path, what: str) -> None:
    """A NotADirectoryError naming `what` when `folder` cannot become a folder because it, or a parent, is a file;
    checked before any work, so that no result is computed only to fail at its write."""
    folder = Path(folder)
    if (blocker := blocking_file(folder)) is not None:
        where = f"{folder}" if blocker == folder else f"{folder}: {blocker}"
        raise NotADirectoryError(f"{what} {where} is a file, not a folder")


def short_repr(value: Any, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters, for error messages: a huge input is not echoed back in full."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts to text
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def json_safe(value):
    """`value` with numpy scalars as Python numbers and NaN as None, in nested dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ----------------------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------------------


def supported_endings() -> list[str]:
    """The file endings nnU-Net's readers know, longest first (".nii.gz" before ".gz")."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    return sorted({e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}, key=len, reverse=True)


def read_segmentation(reader, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A segmentation as an integer (H, W) or (D, H, W) array and its spacing in array-axis order."""
    try:
        seg, props = reader.read_seg(str(path))
    except (RuntimeError, OSError, ValueError, SyntaxError) as error:  # SimpleITK / PIL / nibabel on a bad file
        raise ValueError(f"{path}: cannot read it as a segmentation ({type(error).__name__}: {error})") from None
    seg = np.asarray(seg)
    if seg.ndim not in (3, 4) or seg.shape[0] != 1:
        raise ValueError(f"{path}: expected a single-channel 2D or 3D segmentation, got array shape {seg.shape}")
    seg = seg[0]
    spacing = tuple(float(s) for s in props["spacing"])
    if seg.ndim == 3 and seg.shape[0] == 1:  # 2D images come as (1, H, W) with a dummy first spacing (999 for PNG)
        seg, spacing = seg[0], spacing[1:]
    if np.issubdtype(seg.dtype, np.floating):
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise ValueError(f"{path}: segmentation holds non-integer values")
        seg = rounded
    return seg.astype(np.int32, copy=False), spacing


def load_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel PNG as a 2D numpy array (its stored dtype)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.array(img)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel PNG, got an array of shape {array.shape}")
    return array


def load_array(path: str | os.PathLike) -> np.ndarray:
    """An image or label written by ``make_benchmark``: PNG (2D) or NIfTI .nii.gz (3D, stored axis order)."""
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        import nibabel

        return np.asarray(nibabel.load(path).dataobj)
    return load_png(path)
