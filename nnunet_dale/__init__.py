"""nnunet-dale: DALE (Minding Fuzzy Regions, CVPR 2025) as an nnU-Net v2 trainer plugin."""

import importlib.resources
from pathlib import Path

__version__ = "0.2.0"


def trainers_path() -> Path:
    """The folder to put in nnUNet_extTrainer: thin modules exposing nnunet-dale's trainer classes."""
    return Path(str(importlib.resources.files("nnunet_dale.trainers")))
