"""A held-out test split for a raw dataset that has no official one: a seeded share of imagesTr -> imagesTs.

``hold_out_test_set(dataset, fraction, seed)`` moves ``round(fraction * N)`` of the N training cases (the image file
of every channel and the label) from ``imagesTr/labelsTr`` to ``imagesTs/labelsTs`` and updates ``dataset.json``
(``numTraining``, ``test_sets`` if the dataset records one, and a ``hold_out`` record) and ``splits_official.json``
if there is one. The cases are stratified by empty vs non-empty label (BUSI's normal cases have empty masks), so both
parts get their share of each; the choice depends only on the case identifiers, which labels are empty, the fraction
and the seed. With ``by="largest"`` (the size-shift test) the held-out cases are instead the ones whose labels cover
the largest share of their image (ties by case identifier; the seed plays no part): the model trains on the smaller
lesions and is tested on the largest. The new dataset is built in a temporary folder beside the old one (hard
links, no copies) and renamed into place: on any error the dataset is left unchanged. ``nnunet-dale convert ...
--hold-out F [--hold-out-by largest]`` does the same on the freshly converted dataset before it is renamed into
``nnUNet_raw``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from nnunet_dale.files import atomic_write, staging_dir
from nnunet_dale.nnunet_env import warn_nnunet_pitfalls
from nnunet_dale.raw_datasets import (
    SPLITS_FILE,
    ConversionError,
    discard_work,
    find_dataset,
    link_or_copy,
    read_training_cases,
    remove,
    swap_into_place,
)

__all__ = [
    "HOLD_OUT_BY",
    "HOLD_OUT_KEY",
    "TEST_SPLIT",
    "check_hold_out",
    "choose_largest_cases",
    "choose_test_cases",
    "existing_test_split",
    "format_record",
    "held_out_count",
    "hold_out_in_place",
    "hold_out_test_set",
]

HOLD_OUT_KEY = "hold_out"  # the record in dataset.json
TEST_SPLIT = ("imagesTs", "labelsTs")
HOLD_OUT_BY = ("random", "largest")  # seeded and stratified by empty / non-empty label; or the largest lesions


def check_hold_out(fraction: float, seed: int, by: str = "random") -> tuple[float, int]:
    """The validated (fraction, seed): a fraction strictly between 0 and 1 and a non-negative integer seed; `by` one
    of HOLD_OUT_BY."""
    if by not in HOLD_OUT_BY:
        raise ConversionError(f"hold-out 'by' must be one of {', '.join(HOLD_OUT_BY)}; got {by!r}")
    number = (int, float, np.integer, np.floating)
    if isinstance(fraction, bool) or not isinstance(fraction, number) or not 0 < fraction < 1:
        raise ConversionError(f"hold-out fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConversionError(f"hold-out seed must be a non-negative integer, got {seed!r}")
    return float(fraction), int(seed)


def held_out_count(num_cases: int, fraction: float) -> int:
    """round(fraction * num_cases) (halves rounded up); an error unless >= 1 test and >= 2 training cases remain."""
    n_test = math.floor(fraction * num_cases + 0.5)
    if n_test < 1 or num_cases - n_test < 2:
        raise ConversionError(
            f"holding out {fraction:g} of {num_cases} training cases would leave {num_cases - n_test} for training "
            f"and {n_test} for testing; at least 2 training cases and 1 test case are needed"
        )
    return n_test


def choose_test_cases(cases: Sequence[str], empty: Collection[str], fraction: float, seed: int) -> list[str]:
    """The sorted identifiers of the held-out cases: ``held_out_count`` of them, shared between the non-empty and
    the empty-label stratum in proportion to their sizes (largest remainder), drawn at random within each stratum
    with ``numpy.random.default_rng(seed)``."""
    ids = sorted(cases)
    n_test = held_out_count(len(ids), fraction)
    strata = [[c for c in ids if c not in empty], [c for c in ids if c in empty]]
    quotas = [n_test * len(s) / len(ids) for s in strata]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(strata)), key=lambda i: counts[i] - quotas[i])  # stable: non-empty first on ties
    for i in by_remainder[: n_test - sum(counts)]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for stratum, k in zip(strata, counts):
        chosen += [stratum[j] for j in rng.permutation(len(stratum))[:k]]
    return sorted(chosen)


def choose_largest_cases(shares: dict[str, float], fraction: float) -> list[str]:
    """The sorted identifiers of the ``held_out_count`` cases whose labels cover the largest share of their image
    (ties broken by identifier): the size-shift split, training on the smaller lesions."""
    n_test = held_out_count(len(shares), fraction)
    ranked = sorted(shares, key=lambda case: (-shares[case], case))
    return sorted(ranked[:n_test])


def existing_test_split(folder: Path | str) -> ConversionError:
    """The error for a dataset (or source) that already has a test split."""
    return ConversionError(
        f"{folder} already has a test split (imagesTs/labelsTs or imagesTs_<set>): a hold-out is only for datasets "
        "without one"
    )


# ----------------------------------------------------------------------------------------------------------------------
# reading a raw dataset
# ----------------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, data) -> None:
    """A new file replacing ``path`` (never writing into the old file, which may be hard-linked to the original)."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=4)))


def _read_dataset(folder: Path) -> tuple[dict, dict[str, list[Path]]]:
    """dataset.json and {case: [image files by channel..., label file]} of the training cases of a dataset without a
    test split; checks the layout."""
    dataset_json, cases = read_training_cases(folder, "the hold-out")
    if any(d.name.startswith(TEST_SPLIT) for d in folder.iterdir()):  # imagesTs, or extra sets imagesTs_<name>
        raise existing_test_split(folder)
    return dataset_json, cases


def _label_shares(dataset_json: dict, cases: dict[str, list[Path]]) -> dict[str, float]:
    """Each case's share of labelled (non-zero) voxels in its label file."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    if not cases:
        return {}
    first = next(iter(cases.values()))
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(first[0]), verbose=False)()
    shares = {}
    for case, files in cases.items():
        try:
            seg, _ = reader.read_seg(str(files[-1]))
        except Exception as error:  # nnU-Net's readers raise anything from OSError to RuntimeError
            raise ConversionError(f"could not read label {files[-1]}: {error}") from error
        shares[case] = float(np.count_nonzero(seg)) / max(np.asarray(seg).size, 1)
    return shares


# ----------------------------------------------------------------------------------------------------------------------
# the split
# ----------------------------------------------------------------------------------------------------------------------


def hold_out_in_place(folder: Path, fraction: float, seed: int = 0, by: str = "random") -> dict:
    """Moves the held-out cases of the raw dataset ``folder`` into imagesTs/labelsTs and updates its json files, in
    place: only for a folder nobody else uses yet (``hold_out_test_set`` wraps it atomically). Returns the record
    written to dataset.json under ``hold_out``."""
    fraction, seed = check_hold_out(fraction, seed, by)
    folder = Path(folder)
    dataset_json, cases = _read_dataset(folder)
    shares = _label_shares(dataset_json, cases)
    empty = {case for case, share in shares.items() if share == 0}
    if by == "largest":
        test = choose_largest_cases(shares, fraction)
    else:
        test = choose_test_cases(list(cases), empty, fraction, seed)
    splits = _updated_official_splits(folder / SPLITS_FILE, set(test))
    destination = {"imagesTr": folder / "imagesTs", "labelsTr": folder / "labelsTs"}
    for d in destination.values():
        d.mkdir()
    for case in test:
        for f in cases[case]:
            f.rename(destination[f.parent.name] / f.name)
    record = {
        "fraction": fraction,
        "seed": seed,
        "stratified_by": "empty / non-empty label" if by == "random" else "largest label share (size shift)",
        "by": by,
        "num_training": len(cases) - len(test),
        "num_test": len(test),
        "num_training_empty": len(empty) - len(empty & set(test)),
        "num_test_empty": len(empty & set(test)),
    }
    if by == "largest":
        train_shares = [shares[c] for c in cases if c not in set(test)]
        record["max_training_share"] = round(max(train_shares), 6)
        record["min_test_share"] = round(min(shares[c] for c in test), 6)
    dataset_json["numTraining"] = record["num_training"]
    if "test_sets" in dataset_json:
        dataset_json["test_sets"] = {**(dataset_json["test_sets"] or {}), "imagesTs": len(test)}
    dataset_json[HOLD_OUT_KEY] = record
    if splits is not None:
        _write_json(folder / SPLITS_FILE, splits)
    _write_json(folder / "dataset.json", dataset_json)
    return record


def _updated_official_splits(path: Path, test: set[str]) -> list | None:
    """splits_official.json without the held-out cases (None if there is no such file); an error if a part empties."""
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text())
        updated = [{part: [c for c in ids if c not in test] for part, ids in fold.items()} for fold in splits]
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ConversionError(f"could not read {path} (a list of {{'train': [...], 'val': [...]}}): {error}") from error
    for fold in updated:
        for part, ids in fold.items():
            if not ids:
                raise ConversionError(f"the hold-out would leave the {part!r} part of {path} without cases")
    return updated


def hold_out_test_set(
    dataset: Path | str | int,
    fraction: float,
    seed: int = 0,
    raw_root: Path | str | None = None,
    verbose: bool = True,
    by: str = "random",
) -> Path:
    """Holds out a seeded, stratified ``fraction`` of the training cases of an existing raw dataset as its test split.

    ``dataset``: the dataset folder, or its id in ``raw_root`` (default: ``$nnUNet_raw``). Raises ``ConversionError``
    (a ``ValueError``) on a fraction outside (0, 1), a hold-out that would leave fewer than 2 training cases or no
    test case, a dataset that already has imagesTs/labelsTs or is already preprocessed (its preprocessed training
    data would still hold the test cases), or a missing or inconsistent dataset; the dataset is then unchanged.
    ``by="largest"``: hold out the cases with the largest label share instead (the size-shift test).
    Returns the dataset folder.
    """
    fraction, seed = check_hold_out(fraction, seed, by)
    folder = find_dataset(dataset, raw_root).resolve()
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed and (Path(preprocessed) / folder.name).exists():
        raise ConversionError(
            f"{folder.name} is already preprocessed ({Path(preprocessed) / folder.name}): its preprocessed training "
            "data would still contain the held-out cases; remove that folder first"
        )
    _, cases = _read_dataset(folder)
    held_out_count(len(cases), fraction)  # the usual errors before anything is linked
    work = staging_dir(folder.parent, f".tmp_{folder.name}_holdout_")
    try:
        new = work / folder.name
        shutil.copytree(folder, new, copy_function=link_or_copy)
        record = hold_out_in_place(new, fraction, seed, by)
        swap_into_place(new, folder, [folder], work)
    except BaseException as error:
        discard_work(work)  # keeps the original dataset if a failed swap could not put it back
        if isinstance(error, (OSError, shutil.Error)):
            raise ConversionError(f"could not hold out test cases of {folder}: {error}") from error
        raise
    remove(work)
    if verbose:
        print(format_record(folder, record))
    warn_nnunet_pitfalls(folder)
    return folder


def format_record(folder: Path, record: dict) -> str:
    """One line: how many cases went where."""
    how = f"seed {record['seed']}"
    if record.get("by") == "largest":
        how = f"the largest labels: test shares >= {record['min_test_share']:.3f}, training <= "
        how += f"{record['max_training_share']:.3f}"
    return (
        f"held out {record['num_test']} of {record['num_training'] + record['num_test']} cases of {folder} as "
        f"imagesTs/labelsTs (fraction {record['fraction']:g}, {how}; empty labels: "
        f"{record['num_test_empty']} test, {record['num_training_empty']} training)"
    )
