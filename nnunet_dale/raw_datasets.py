"""nnU-Net raw-dataset folders, shared by the converters, the hold-out and the label-noise tool: the raw root, dataset
ids, the error type, reading a dataset's training cases, and folder swaps that leave the old folders in place when a
write fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnunet_dale.files import folder_problem

__all__ = [
    "SPLITS_FILE",
    "ConversionError",
    "check_id",
    "claim_dataset_id",
    "datasets_with_id",
    "discard_work",
    "find_dataset",
    "link_or_copy",
    "read_json_object",
    "read_training_cases",
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


def claim_dataset_id(raw_root: Path, dataset_id: int, folder_name: str, overwrite: bool) -> list[Path]:
    """The folders of `raw_root` a new dataset `folder_name` replaces (only with `overwrite`); an error if the id is
    in use there without it, or under another name in nnUNet_preprocessed or nnUNet_results."""
    existing = datasets_with_id(raw_root, dataset_id)
    if existing and not overwrite:
        raise ConversionError(
            f"dataset id {dataset_id} is already used by {', '.join(str(p) for p in existing)}: "
            "choose another id or use --overwrite (overwrite=True in Python) to replace it"
        )
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(variable)
        others = [p for p in datasets_with_id(Path(value), dataset_id) if p.name != folder_name] if value else []
        if others:
            raise ConversionError(
                f"dataset id {dataset_id} is used by {others[0]} ({variable}) under another name: nnU-Net would not "
                f"know which dataset {dataset_id} is; remove that folder or choose another id"
            )
    return existing


def find_dataset(dataset: Path | str | int, raw_root: Path | str | None) -> Path:
    """The folder of a raw dataset given as a folder, or as its id in ``raw_root`` (default: ``$nnUNet_raw``)."""
    if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool):
        root = resolve_raw_root(raw_root)
        found = datasets_with_id(root, int(dataset))
        if len(found) != 1:
            what = ", ".join(str(p) for p in found) if found else "none"
            raise ConversionError(f"expected one dataset with id {dataset} in {root}; found {what}")
        return found[0]
    folder = Path(dataset).expanduser()
    if problem := folder_problem(folder):
        raise ConversionError(f"dataset folder {folder} {problem}")
    return folder


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; a ConversionError naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"could not read {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a JSON object")
    return data


def read_training_cases(folder: Path, tool: str) -> tuple[dict, dict[str, list[Path]]]:
    """dataset.json and {case: [image files by channel..., label file]} of a raw dataset's training cases, with the
    layout checked (every label has its image files, numTraining matches); ``tool`` names the caller in the error for
    a dataset.json that lists its files explicitly, which is not supported."""
    json_file = folder / "dataset.json"
    if not json_file.is_file():
        raise ConversionError(f"no nnU-Net raw dataset at {folder} (no dataset.json)")
    dataset_json = read_json_object(json_file)
    if "dataset" in dataset_json:
        raise ConversionError(f"{json_file} lists its files explicitly ('dataset' key): not supported by {tool}")
    ending = dataset_json.get("file_ending")
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(ending, str) or not isinstance(channels, dict):
        raise ConversionError(f"{json_file} lacks file_ending or channel_names")
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise ConversionError(f"no {d.name} folder in {folder}")
    labels = {p.name[: -len(ending)]: p for p in sorted(labels_dir.iterdir()) if p.name.endswith(ending)}
    pattern = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending))
    images: dict[str, dict[int, Path]] = {}
    for p in sorted(images_dir.iterdir()):
        m = pattern.fullmatch(p.name)
        if m is None:
            continue
        if m["case"] not in labels:
            raise ConversionError(f"image without label: {p} (expected {labels_dir / (m['case'] + ending)})")
        images.setdefault(m["case"], {})[int(m["channel"])] = p
    cases = {}
    expected = sorted(next(iter(images.values()), {0: None}))  # channel files: one per channel, or one RGB PNG
    for case, label in labels.items():
        found = images.get(case, {})
        if sorted(found) != expected or expected[0] != 0:
            raise ConversionError(
                f"label {label} should have the image file(s) {', '.join(f'{case}_{c:04d}{ending}' for c in expected)}"
                f" in {images_dir}; found {', '.join(p.name for p in found.values()) or 'none'}"
            )
        cases[case] = [found[c] for c in expected] + [label]
    if dataset_json.get("numTraining") != len(cases):
        raise ConversionError(
            f"{json_file} says numTraining {dataset_json.get('numTraining')!r} but {labels_dir} holds {len(cases)} "
            "labelled cases"
        )
    return dataset_json, cases


def link_or_copy(src: str, dst: str) -> None:
    """A hard link of `src` at `dst`, or a copy where links are impossible (another file system); for copytree."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
