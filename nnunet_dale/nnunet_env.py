"""Plumbing: nnU-Net's folders and environment variables, for the demo, the benchmarks and the tests.

nnU-Net finds its data through ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` and its trainer classes
through ``nnUNet_extTrainer``; these helpers put the three folders under one root and build the environment in which
nnU-Net's command lines see DALE's trainers, with one process for planning and augmentation and no torch.compile.
`warn_nnunet_pitfalls` tells, when our tools write a raw dataset, what nnU-Net itself will fail on.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from nnunet_dale import trainers_path
from nnunet_dale.files import read_segmentation

__all__ = [
    "DALE_VARIABLE_PREFIX",
    "FOLDER_VARIABLES",
    "NNUNET_FOLDS",
    "SINGLE_PROCESS",
    "NnUNetPitfallWarning",
    "nnunet_environment",
    "nnunet_folders",
    "nnunet_pitfalls",
    "use_nnunet_folders",
    "warn_nnunet_pitfalls",
    "without_dale_variables",
]

FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
SINGLE_PROCESS = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"}  # the planner needs >= 1 augmentation process
DALE_VARIABLE_PREFIX = "NNUNET_DALE_"  # DALE's overrides (nnunet_dale.config): dropped for runs with class defaults
NNUNET_FOLDS = 5  # nnU-Net's own split of the training cases: 5-fold cross-validation, folds 0-4


class NnUNetPitfallWarning(UserWarning):
    """A raw dataset we wrote is one nnU-Net's own planning or training will fail on."""


def nnunet_folders(root: str | os.PathLike, create: bool = False) -> dict[str, Path]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under `root` (created with `create`), by variable name."""
    folders = {name: Path(root) / name for name in FOLDER_VARIABLES}
    if create:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
    return folders


def use_nnunet_folders(root: str | os.PathLike, environ: MutableMapping[str, str] | None = None) -> dict[str, Path]:
    """Create the three folders under `root` and point `environ` (default: this process's) at them."""
    folders = nnunet_folders(root, create=True)
    (os.environ if environ is None else environ).update({name: str(path) for name, path in folders.items()})
    return folders


def without_dale_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) without DALE's NNUNET_DALE_* overrides."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith(DALE_VARIABLE_PREFIX)}


def nnunet_environment(
    root: str | os.PathLike,
    base: Mapping[str, str] | None = None,
    create: bool = False,
    trainers: str | None = None,
    **overrides: str,
) -> dict[str, str]:
    """The environment for nnU-Net's command lines: `base` (default: this process's environment), the three nnU-Net
    folders under `root` (created with `create`), `trainers` (default: DALE's trainer folder, `trainers_path()`) on
    nnUNet_extTrainer, one process for planning and augmentation, nnUNet_compile=false; then `overrides`."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(path) for name, path in nnunet_folders(root, create).items()})
    env.update(SINGLE_PROCESS)
    env.update(nnUNet_extTrainer=trainers or str(trainers_path()), nnUNet_compile="false")
    env.update(overrides)
    return env


def nnunet_pitfalls(dataset_folder: str | os.PathLike) -> list[str]:
    """What nnU-Net will fail on in a raw dataset: fewer training cases than its 5 folds (folds 0-4 stop in its
    split with n_splits=5 > n_samples) and training labels without any foreground (its planning stops with an
    IndexError). One message each; none for a usable dataset."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    folder = Path(dataset_folder)
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    labels = sorted((folder / "labelsTr").glob(f"*{ending}"))
    problems = []
    if len(labels) < NNUNET_FOLDS:
        problems.append(
            f"{folder.name} has {len(labels)} training case(s): nnU-Net's folds 0-4 need at least {NNUNET_FOLDS} "
            "(its 5-fold split fails); train fold 'all', or write your own splits_final.json"
        )
    if labels:
        reader = determine_reader_writer_from_file_ending(ending, str(labels[0]), True, False)()
        if not any(read_segmentation(reader, label)[0].any() for label in labels):
            problems.append(
                f"no training label of {folder.name} holds any foreground: nnU-Net's planning "
                "(nnUNetv2_plan_and_preprocess) fails on such a dataset"
            )
    return problems


def warn_nnunet_pitfalls(dataset_folder: str | os.PathLike) -> None:
    """An NnUNetPitfallWarning for each of `nnunet_pitfalls`, raised where our tool wrote the dataset."""
    for problem in nnunet_pitfalls(dataset_folder):
        warnings.warn(problem, NnUNetPitfallWarning, stacklevel=3)
