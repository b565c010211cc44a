"""nnU-Net looks trainers up by class name in the modules of this folder (nnUNet_extTrainer): every trainer class of
the package is imported here (the variants module's `__all__` lists them)."""

from nnunet_dale import variants
from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import *  # noqa: F403

__all__ = ["nnUNetTrainerDALE", *variants.__all__]
