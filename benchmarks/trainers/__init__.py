"""The study's own trainers, kept out of the package (nnU-Net keeps its experiment trainers apart in the same way):
the validity study's screens and controls and the `_bench` twins on the study's CPU schedule, in `study_trainers`.

nnU-Net finds a trainer by class name in the folders of ``nnUNet_extTrainer`` (several, separated by ``os.pathsep``).
The studies (benchmarks/*.py) add this folder after the package's own with `add_study_trainers`; to train one of
these classes by hand, from the repository root:

    export nnUNet_extTrainer="$(nnunet-dale trainers-path):$PWD/benchmarks/trainers"
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["FOLDER", "add_study_trainers"]

FOLDER = Path(__file__).resolve().parent


def add_study_trainers(env: MutableMapping[str, str]) -> None:
    """Put this folder on `env`'s nnUNet_extTrainer (the environment of a pipeline's nnU-Net commands), after the
    folders already there."""
    folders = [f for f in env.get("nnUNet_extTrainer", "").split(os.pathsep) if f]
    if str(FOLDER) not in folders:
        env["nnUNet_extTrainer"] = os.pathsep.join([*folders, str(FOLDER)])
