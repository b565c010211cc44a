"""Folder for nnU-Net's ``nnUNet_extTrainer``: thin modules that expose nnunet-dale's trainer classes.

``nnunet-dale trainers-path`` prints this folder's location.
"""
