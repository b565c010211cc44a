"""nnU-Net raw-dataset folders, shared by the converters and the hold-out: the raw root, dataset ids, the error
type, and folder swaps that leave the old folders in place when a write fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SPLITS_FILE",
    "ConversionError",
    "check_id",
    "datasets_with_id",
    "discard_work",
    "resolve_raw_root",
    "remove",
    "swap_all_into_place",
    "swap_into_place",
]

SPLITS_FILE = "splits_official.json"


class ConversionError(ValueError):
    """A dataset could not be converted: wrong or missing folder, unpaired file, size mismatch, id in use, ..."""


def resolve_raw_root(raw_root: Path | str | None) -> Path:
    if raw_root is None:
        value = os.environ.get("nnUNet_raw")
        if not value:
            raise ConversionError(
                "the nnUNet_raw environment variable is not set: export nnUNet_raw=/path/to/nnUNet_raw "
                "(see nnU-Net's documentation, set_environment_variables.md) or pass raw_root"
            )
        raw_root = value
    raw_root = Path(raw_root).expanduser()
    if raw_root.exists() and not raw_root.is_dir():
        raise ConversionError(f"nnU-Net raw folder {raw_root} is not a folder")
    raw_root.mkdir(parents=True, exist_ok=True)
    return raw_root


def check_id(dataset_id: int) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    return int(dataset_id)


def datasets_with_id(folder: Path, dataset_id: int) -> list[Path]:
    prefix = f"Dataset{dataset_id:03d}_"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix))


def remove(path: Path) -> None:
    """Delete a folder tree, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)


def swap_into_place(new: Path, target: Path, old: Sequence[Path], work: Path) -> None:
    """Rename `new` to `target`, replacing the folders `old`: they are moved into `work` as `replaced_<i>` first and
    put back if the rename fails. If putting one back fails too, the error names where it was left."""
    swap_all_into_place([(new, target)], old, work)


def swap_all_into_place(
    pairs: Sequence[tuple[Path, Path]], old: Sequence[Path], work: Path, finish: Callable[[], None] | None = None
) -> None:
    """`swap_into_place` for several (new, target) renames and a last step `finish` (e.g. replacing a json file):
    the folders `old` are moved into `work` as `replaced_<i>`, every `new` is renamed to its `target`, then `finish`
    runs. On any failure the targets already renamed are deleted and `old` is put back; if putting one back fails
    too, the error names where it was left."""
    moved: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for i, folder in enumerate(old):
            aside = work / f"replaced_{i}"
            folder.rename(aside)
            moved.append((aside, folder))
        for new, target in pairs:
            new.rename(target)
            placed.append(target)
        if finish is not None:
            finish()
    except BaseException:
        for target in reversed(placed):
            remove(target)
        for aside, folder in reversed(moved):
            try:
                aside.rename(folder)
            except OSError as error:
                message = f"{folder} could not be put back after a failed write; it is in {aside}"
                raise ConversionError(message) from error
        raise


def discard_work(work: Path) -> None:
    """After a failure: delete the temporary folder `work`, except originals a failed swap left in it (`replaced_*`)."""
    kept = [child for child in work.iterdir() if child.name.startswith("replaced_")] if work.is_dir() else []
    for child in work.iterdir() if work.is_dir() else ():
        if child not in kept:
            remove(child)
    if not kept:
        remove(work)
