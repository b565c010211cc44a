"""nnU-Net looks trainers up by class name in the modules of this folder (nnUNet_extTrainer)."""

from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import (
    nnUNetTrainer_bench,
    nnUNetTrainer_demo,
    nnUNetTrainer_quick,
    nnUNetTrainerDALE_5epochs,
    nnUNetTrainerDALE_50epochs,
    nnUNetTrainerDALE_100epochs,
    nnUNetTrainerDALE_250epochs,
    nnUNetTrainerDALE_AEonly,
    nnUNetTrainerDALE_bench,
    nnUNetTrainerDALE_bottleneck,
    nnUNetTrainerDALE_demo,
    nnUNetTrainerDALE_ERonly,
    nnUNetTrainerDALE_fast,
    nnUNetTrainerDALE_noLW,
    nnUNetTrainerDALE_noOmega,
    nnUNetTrainerDALE_quick,
)

__all__ = [
    "nnUNetTrainerDALE",
    "nnUNetTrainerDALE_5epochs",
    "nnUNetTrainerDALE_50epochs",
    "nnUNetTrainerDALE_100epochs",
    "nnUNetTrainerDALE_250epochs",
    "nnUNetTrainerDALE_AEonly",
    "nnUNetTrainerDALE_ERonly",
    "nnUNetTrainerDALE_fast",
    "nnUNetTrainerDALE_bottleneck",
    "nnUNetTrainerDALE_noLW",
    "nnUNetTrainerDALE_noOmega",
    "nnUNetTrainerDALE_bench",
    "nnUNetTrainerDALE_demo",
    "nnUNetTrainerDALE_quick",
    "nnUNetTrainer_bench",
    "nnUNetTrainer_demo",
    "nnUNetTrainer_quick",
]
