"""nnunet-dale: DALE (Minding Fuzzy Regions, CVPR 2025) as an nnU-Net v2 trainer plugin."""

__version__ = "0.1.0"
