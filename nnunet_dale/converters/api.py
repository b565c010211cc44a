"""Converters from public lesion-segmentation datasets, in their official download layouts, to nnU-Net v2 raw datasets.

``convert(name, source, dataset_id)`` reads a dataset as its authors distribute it (the extracted folder, a folder
holding the official zip files, or a single zip), pairs every image with its mask by file name, and writes
``$nnUNet_raw/DatasetNNN_<Name>/`` the way nnU-Net's own ``Dataset120_RoadSegmentation.py`` does:

* one ``<case>_0000.png`` per case: RGB images as a single 3-channel PNG (``channel_names {"0": "R", "1": "G",
  "2": "B"}``), grey images as a 1-channel PNG (``{"0": "grey"}``);
* labels ``<case>.png`` with values {0, 1} (``{"background": 0, "lesion": 1}``): JPEG masks are thresholded at 128,
  RGB masks are foreground where any channel is > 127, lossless masks stored as 0/1 are kept as they are;
* ``imagesTr/labelsTr``, ``imagesTs/labelsTs`` for an official test split, ``imagesTs_<Set>/labelsTs_<Set>`` for
  additional test sets, and ``dataset.json``;
* optionally downsampled so that the longer side is at most ``max_size`` pixels (images bicubic, which is
  antialiased in Pillow when shrinking; masks nearest neighbour; both to the same size).

Everything is written into a temporary folder inside the raw folder and renamed at the end: a failed conversion
leaves nothing behind. The supported layouts, splits and download pages are described in docs/datasets.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from nnunet_dale import holdout
from nnunet_dale.converters.images import FILE_ENDING, split_folders, write_split
from nnunet_dale.converters.registry import get_converter
from nnunet_dale.converters.source import DatasetConverter, SourceTree
from nnunet_dale.files import staging_dir
from nnunet_dale.nnunet_env import warn_nnunet_pitfalls
from nnunet_dale.raw_datasets import (
    SPLITS_FILE,
    ConversionError,
    check_id,
    claim_dataset_id,
    datasets_with_id,
    discard_work,
    remove,
    resolve_raw_root,
    swap_all_into_place,
    swap_into_place,
)

__all__ = ["LABELS", "add_test_set", "convert"]

LABELS = {"background": 0, "lesion": 1}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_max_size(max_size: int | None) -> int | None:
    if max_size is None:
        return None
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        raise ConversionError(f"max_size must be a positive number of pixels, got {max_size!r}")
    return int(max_size)


def _check_name(name: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ConversionError(f"{what} {name!r} may contain only letters, digits, '-' and '_'")
    return name


def _print_summary(target: Path, counts: dict[str, int], converted: int, notes: list[str]) -> None:
    print(f"nnunet-dale convert: wrote {target}")
    for key, n in counts.items():
        print(f"  {split_folders(key)[0]}: {n} cases")
    if converted:
        print(f"  {converted} colour images converted to grey (luma)")
    for note in notes:
        print(f"  note: {note}")


def convert(
    name: str,
    source: Path | str,
    dataset_id: int,
    raw_root: Path | str | None = None,
    max_size: int | None = None,
    dataset_name: str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    hold_out: float | None = None,
    hold_out_seed: int = 0,
    hold_out_by: str = "random",
) -> Path:
    """Converts dataset ``name`` (a key of ``CONVERTERS``) read from ``source`` to ``raw_root/DatasetNNN_<Name>/``.

    ``source``: the extracted dataset folder, a folder holding its official zip file(s), or a zip file.
    ``raw_root``: nnU-Net's raw folder (default: the ``nnUNet_raw`` environment variable).
    ``max_size``: downsample so that the longer side is at most this many pixels (default: keep the size).
    ``dataset_name``: the ``<Name>`` part of the folder (default: e.g. ``ISIC2017``).
    ``overwrite``: replace the folder(s) of ``raw_root`` that already use ``dataset_id``.
    ``hold_out``: move this fraction of the training cases to imagesTs/labelsTs (seeded by ``hold_out_seed``,
    stratified by empty / non-empty label; see ``nnunet_dale.holdout``); only for datasets without a test split.
    ``hold_out_by``: "random" (that), or "largest": hold out the cases with the largest lesions (size-shift test).
    Returns the written folder. Raises ``ConversionError`` on any problem, leaving ``raw_root`` unchanged.
    """
    converter = get_converter(name)
    dataset_id = check_id(dataset_id)
    max_size = _check_max_size(max_size)
    if hold_out is not None:
        hold_out, hold_out_seed = holdout.check_hold_out(hold_out, hold_out_seed, hold_out_by)
    folder_name = f"Dataset{dataset_id:03d}_{_check_name(dataset_name or converter.dataset_name, 'dataset name')}"
    raw_root = resolve_raw_root(raw_root)
    target = raw_root / folder_name
    existing = claim_dataset_id(raw_root, dataset_id, folder_name, overwrite)

    work = staging_dir(raw_root, f".tmp_{folder_name}_")
    try:
        tree = SourceTree(source, work / "extracted")
        collected = converter.collect(tree)
        if hold_out is not None:  # the hold-out's errors before anything is written
            if any(key == "Ts" or key.startswith("Ts_") for key in collected.splits):
                raise holdout.existing_test_split(f"{name} source {source}")
            holdout.held_out_count(len(collected.splits.get("Tr", [])), hold_out)
        out = work / folder_name
        out.mkdir()
        counts, converted = {}, 0
        for key, cases in collected.splits.items():
            counts[key], n_converted = write_split(cases, out, key, converter.grey, max_size, verbose)
            converted += n_converted
        remove(work / "extracted")
        _write_dataset_json(out, converter, folder_name, counts, max_size, source)
        if collected.official_split is not None:
            (out / SPLITS_FILE).write_text(json.dumps([collected.official_split], indent=1))
        if hold_out is not None:
            record = holdout.hold_out_in_place(out, hold_out, hold_out_seed, hold_out_by)
            counts.update(Tr=record["num_training"], Ts=record["num_test"])
            collected.notes.append(holdout.format_record(target, record))
        swap_into_place(out, target, existing, work)
    except BaseException:
        discard_work(work)
        raise
    remove(work)  # with the replaced datasets (overwrite)
    if verbose:
        _print_summary(target, counts, converted, collected.notes)
    warn_nnunet_pitfalls(target)
    return target


def _write_dataset_json(
    out: Path, converter: DatasetConverter, folder_name: str, counts: dict[str, int], max_size: int | None, source
) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(out),
        converter.channel_names,
        dict(LABELS),
        counts.get("Tr", 0),
        FILE_ENDING,
        dataset_name=folder_name,
        reference=converter.reference,
        description=converter.description,
        license=converter.licence,
        converted_by=f"nnunet-dale convert {converter.name} (from {Path(source).name})",
        test_sets={split_folders(k)[0]: n for k, n in counts.items() if k != "Tr"},
        max_size=max_size,
    )


def add_test_set(
    name: str,
    source: Path | str,
    dataset_id: int,
    raw_root: Path | str | None = None,
    max_size: int | None = None,
    set_name: str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Adds every case of dataset ``name`` as an extra test set ``imagesTs_<Set>/labelsTs_<Set>`` to the existing
    raw dataset ``dataset_id`` (e.g. PH2 to an ISIC 2016 conversion); ``set_name`` defaults to e.g. ``PH2``.

    The images must have the dataset's channels (RGB or grey). ``dataset.json`` gets the set in ``test_sets``.
    Returns the dataset folder.
    """
    converter = get_converter(name)
    dataset_id = check_id(dataset_id)
    max_size = _check_max_size(max_size)
    set_name = _check_name(set_name or converter.dataset_name, "test set name")
    raw_root = resolve_raw_root(raw_root)
    existing = datasets_with_id(raw_root, dataset_id)
    if len(existing) != 1:
        found = f"found {', '.join(str(p) for p in existing)}" if existing else "found none"
        raise ConversionError(f"expected one dataset with id {dataset_id} in {raw_root} to add a test set to; {found}")
    target = existing[0]
    json_file = target / "dataset.json"
    try:
        dataset_json = json.loads(json_file.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"could not read {json_file}: {error}") from error
    if dataset_json.get("file_ending") != FILE_ENDING or dataset_json.get("channel_names") != converter.channel_names:
        raise ConversionError(
            f"{target.name} has channel_names {dataset_json.get('channel_names')} and file_ending "
            f"{dataset_json.get('file_ending')!r}; {name} images are {converter.channel_names} {FILE_ENDING!r}"
        )
    key = f"Ts_{set_name}"
    destinations = [target / folder for folder in split_folders(key)]
    present = [d for d in destinations if d.exists()]
    if present and not overwrite:
        raise ConversionError(
            f"{present[0]} exists: choose another set name or use --overwrite (overwrite=True in Python)"
        )

    work = staging_dir(raw_root, f".tmp_{target.name}_{key}_")
    try:
        tree = SourceTree(source, work / "extracted")
        collected = converter.collect(tree)
        cases = [c for split in collected.splits.values() for c in split]
        out = work / "out"
        n, converted = write_split(cases, out, key, converter.grey, max_size, verbose)
        test_sets = dict(dataset_json.get("test_sets") or {})
        test_sets[split_folders(key)[0]] = n
        dataset_json["test_sets"] = test_sets
        new_json = work / "dataset.json"
        new_json.write_text(json.dumps(dataset_json, indent=4))
        pairs = [(out / d.name, d) for d in destinations]
        swap_all_into_place(pairs, present, work, finish=lambda: os.replace(new_json, json_file))
    except BaseException:
        discard_work(work)
        raise
    remove(work)  # with the replaced test set (overwrite)
    if verbose:
        _print_summary(target, {key: n}, converted, [])
    return target
