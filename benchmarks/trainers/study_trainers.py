"""Trainers only the study runs (docs/study-log.md): the validity study's screens (the literal reading with one fix
each, then the shipped configuration with one change each), its controls, and the `_bench` twins of its ideas and of
the package's variants on the study's CPU schedule. Users train the package's classes (nnunet_dale.variants).

nnU-Net imports this file by its own name from nnUNet_extTrainer (benchmarks/trainers/__init__.py), so it imports
nothing but nnunet_dale and nnU-Net.
"""

from __future__ import annotations

from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dale.alignment import fuzzy_objective
from nnunet_dale.confidence import Confidence, shuffled_within_classes
from nnunet_dale.config import PAPER_CHANGES
from nnunet_dale.split import FuzzySplit
from nnunet_dale.trainer import FuzzyTerms, SplitBatch, nnUNetTrainerDALE
from nnunet_dale.variants import (
    Schedule,
    nnUNetTrainer_GCE,
    nnUNetTrainerDALE_AEonly,
    nnUNetTrainerDALE_ERonly,
    nnUNetTrainerDALE_fast,
    nnUNetTrainerDALE_firstOrder,
    nnUNetTrainerDALE_firstOrderJVP,
    nnUNetTrainerDALE_noLW,
    nnUNetTrainerDALE_noOmega,
    nnUNetTrainerDALE_omegaEvery4,
    nnUNetTrainerDALE_paper,
    nnUNetTrainerDALE_staleOmega,
)
from nnunet_dale.weighted_loss import weight_pyramid

__all__ = [
    "nnUNetTrainer_bench",
    "nnUNetTrainer_benchSameTime",
    "nnUNetTrainer_benchShippedTime",
    "nnUNetTrainer_GCE_bench",
    "nnUNetTrainerDALE_AEonly_bench",
    "nnUNetTrainerDALE_bench",
    "nnUNetTrainerDALE_ERonly_bench",
    "nnUNetTrainerDALE_fast_bench",
    "nnUNetTrainerDALE_firstOrder_bench",
    "nnUNetTrainerDALE_firstOrderJVP_bench",
    "nnUNetTrainerDALE_imageDice",
    "nnUNetTrainerDALE_imageDice_bench",
    "nnUNetTrainerDALE_noLW_bench",
    "nnUNetTrainerDALE_noOmega_bench",
    "nnUNetTrainerDALE_omegaEvery4_bench",
    "nnUNetTrainerDALE_omegaMedian",
    "nnUNetTrainerDALE_omegaMedian_bench",
    "nnUNetTrainerDALE_omegaNorm",
    "nnUNetTrainerDALE_omegaNorm_bench",
    "nnUNetTrainerDALE_omegaShuffled",
    "nnUNetTrainerDALE_omegaShuffled_bench",
    "nnUNetTrainerDALE_paper_bench",
    "nnUNetTrainerDALE_realImage",
    "nnUNetTrainerDALE_realImage_bench",
    "nnUNetTrainerDALE_singleUpdate",
    "nnUNetTrainerDALE_singleUpdate_bench",
    "nnUNetTrainerDALE_splitPatches",
    "nnUNetTrainerDALE_splitPatches_bench",
    "nnUNetTrainerDALE_staleOmega_bench",
    "nnUNetTrainerDALE_stableLW",
    "nnUNetTrainerDALE_stableLW_bench",
    "nnUNetTrainerDALE_strongOmega",
    "nnUNetTrainerDALE_strongOmega_bench",
    "nnUNetTrainerDALE_twoSteps",
    "nnUNetTrainerDALE_twoSteps_bench",
    "nnUNetTrainerDALE_warmup",
    "nnUNetTrainerDALE_warmup_bench",
]


# --- the validity study's first round: the literal reading and one fix each (together: nnUNetTrainerDALE)
class nnUNetTrainerDALE_splitPatches(nnUNetTrainerDALE):
    """The split patch scales with the image: 16 patches per side of the network patch (the paper's 14-22)."""

    dale_defaults = {**PAPER_CHANGES, "split_patches": 16}


class nnUNetTrainerDALE_stableLW(nnUNetTrainerDALE):
    """L_W that cannot dominate: W^2 per class over its target trace, classes with >= 4x the feature dimension in
    weight, running target Gaussians (momentum 0.9)."""

    dale_defaults = {**PAPER_CHANGES, "lw_scale": "trace", "min_class_mass_per_dim": 4.0, "target_momentum": 0.9}


class nnUNetTrainerDALE_omegaNorm(nnUNetTrainerDALE):
    """Scale-free omega: hypergradient centred per class and RMS-normalised before Adam; clean/noisy beyond 0.05."""

    dale_defaults = {**PAPER_CHANGES, "omega_normalise": True, "clean_threshold": 0.05}


class nnUNetTrainerDALE_singleUpdate(nnUNetTrainerDALE):
    """One optimiser update per iteration on (L_n + L_f) / 2, omega looking ahead from the current weights."""

    dale_defaults = {**PAPER_CHANGES, "single_update": True}


class nnUNetTrainerDALE_realImage(nnUNetTrainerDALE):
    """The passes see the real image; the region masks act as loss weights only."""

    dale_defaults = {**PAPER_CHANGES, "mask_input": False}


class nnUNetTrainerDALE_warmup(nnUNetTrainerDALE):
    """The first 10 % of epochs are plain nnU-Net steps."""

    dale_defaults = {**PAPER_CHANGES, "warmup_fraction": 0.1}


# --- the validity study's second round: one change each to the shipped configuration
class nnUNetTrainerDALE_twoSteps(nnUNetTrainerDALE):
    """The shipped configuration with Algorithm 1's two alternating optimiser steps instead of the single update."""

    dale_defaults = {"single_update": False}


class nnUNetTrainerDALE_omegaMedian(nnUNetTrainerDALE):
    """The shipped configuration with omega's hypergradient centred on each class's weighted median, not its mean
    (recorded in its checkpoints as 0.2's omega_centre "median")."""

    def _omega_transform(self, split: FuzzySplit, membership: torch.Tensor, centre: str = "median"):
        return super()._omega_transform(split, membership, centre)

    def dale_record(self) -> dict[str, Any]:
        return {**super().dale_record(), "omega_centre": "median"}


class nnUNetTrainerDALE_imageDice(nnUNetTrainerDALE):
    """The shipped configuration with one Dice over the whole image in the single update (voxels weighted by omega)
    instead of one per region: a Dice on the fuzzy region alone pulls harder towards foreground there (recorded in
    its checkpoints as 0.2's dice_scope "image")."""

    def initialize(self):
        if not self.dale_config.single_update:
            self._refuse("nnUNetTrainerDALE_imageDice's Dice is one of the single update over both regions: "
                         "it needs single_update true")  # fmt: skip
        super().initialize()

    def _update_objective(self, b: SplitBatch, output_n, output_f, loss_n, loss_f, terms: FuzzyTerms) -> torch.Tensor:
        """(L_n + L_f) / 2 with the same CE terms and one Dice over the image: each voxel weighted by its confidence,
        omega where fuzzy and 1 where not, blended by the soft masks (nnU-Net's own Dice when omega = 1)."""
        split, omega = b.split, terms.confidence.omega
        blend = (split.nonfuzzy + omega * split.fuzzy) / (split.nonfuzzy + split.fuzzy).clamp_min(1e-8)
        image = weight_pyramid(blend, b.target)
        seg_f = b.fuzzy_loss(output_f, omega, image)
        return 0.5 * (
            b.nonfuzzy_loss(output_n, image)
            + fuzzy_objective(seg_f, terms.alignment.loss, self.dale_config.alpha, terms.mean_omega)
        )

    def dale_record(self) -> dict[str, Any]:
        return {**super().dale_record(), "dice_scope": "image"}


class nnUNetTrainerDALE_omegaShuffled(nnUNetTrainerDALE):
    """A control for the shipped configuration: omega* permuted at random among each class's fuzzy voxels in the
    batch, so it keeps its values per class but carries no per-voxel label confidence (recorded in its checkpoints as
    0.2's omega_shuffle true)."""

    def _confidence(
        self, x_f, x_n, output_f, split: FuzzySplit, membership, fuzzy_loss, nonfuzzy_loss, gradient_n=None
    ) -> Confidence:
        confidence = super()._confidence(x_f, x_n, output_f, split, membership, fuzzy_loss, nonfuzzy_loss, gradient_n)
        return shuffled_within_classes(confidence, split.fuzzy, self._partition(membership))

    def dale_record(self) -> dict[str, Any]:
        return {**super().dale_record(), "omega_shuffle": True}


class nnUNetTrainerDALE_strongOmega(nnUNetTrainerDALE):
    """The shipped configuration with omega's Adam learning rate tripled (0.3): with the normalised hypergradient a
    one-step omega is ~1 -+ lr per voxel, so its label confidence spans 0.7-1.3 instead of 0.9-1.1."""

    dale_defaults = {"omega_lr": 0.3}


# --- the study's CPU schedules
class _Bench(Schedule):
    """The longer benchmark's and the validity study's CPU schedule: 40 epochs x 25 iterations (10 validation)."""

    epochs, iterations, val_iterations = 40, 25, 10


class nnUNetTrainer_bench(_Bench, nnUNetTrainer):
    """Default nnU-Net with the longer benchmark's CPU schedule."""


class nnUNetTrainer_benchSameTime(Schedule, nnUNetTrainer):
    """Default nnU-Net given the literal reading's wall time on the benchmark schedule: 140 epochs x 25 iterations
    (its 40-epoch run took 3.5x the default's on the ISIC 2017 subset at 64 px, docs/study-log.md)."""

    epochs, iterations, val_iterations = 140, 25, 10


class nnUNetTrainer_benchShippedTime(Schedule, nnUNetTrainer):
    """Default nnU-Net given the shipped DALE's wall time on the benchmark schedule: 100 epochs x 25 iterations
    (its 40-epoch runs took 2.3-2.8x the default's alone on the machine, median 2.4x, docs/study-log.md)."""

    epochs, iterations, val_iterations = 100, 25, 10


class nnUNetTrainer_GCE_bench(_Bench, nnUNetTrainer_GCE):
    """nnUNetTrainer_GCE on the study's CPU schedule (40 epochs x 25 iterations, as nnUNetTrainer_bench)."""


# --- `_bench` twins: an idea on the study's schedule (the class named without `_bench`)
class nnUNetTrainerDALE_bench(_Bench, nnUNetTrainerDALE):
    """DALE with the longer benchmark's CPU schedule."""


class nnUNetTrainerDALE_paper_bench(_Bench, nnUNetTrainerDALE_paper):
    pass


class nnUNetTrainerDALE_splitPatches_bench(_Bench, nnUNetTrainerDALE_splitPatches):
    pass


class nnUNetTrainerDALE_stableLW_bench(_Bench, nnUNetTrainerDALE_stableLW):
    pass


class nnUNetTrainerDALE_omegaNorm_bench(_Bench, nnUNetTrainerDALE_omegaNorm):
    pass


class nnUNetTrainerDALE_singleUpdate_bench(_Bench, nnUNetTrainerDALE_singleUpdate):
    pass


class nnUNetTrainerDALE_realImage_bench(_Bench, nnUNetTrainerDALE_realImage):
    pass


class nnUNetTrainerDALE_warmup_bench(_Bench, nnUNetTrainerDALE_warmup):
    pass


class nnUNetTrainerDALE_twoSteps_bench(_Bench, nnUNetTrainerDALE_twoSteps):
    pass


class nnUNetTrainerDALE_omegaMedian_bench(_Bench, nnUNetTrainerDALE_omegaMedian):
    pass


class nnUNetTrainerDALE_imageDice_bench(_Bench, nnUNetTrainerDALE_imageDice):
    pass


class nnUNetTrainerDALE_omegaShuffled_bench(_Bench, nnUNetTrainerDALE_omegaShuffled):
    pass


class nnUNetTrainerDALE_strongOmega_bench(_Bench, nnUNetTrainerDALE_strongOmega):
    pass


class nnUNetTrainerDALE_noOmega_bench(_Bench, nnUNetTrainerDALE_noOmega):
    pass


class nnUNetTrainerDALE_AEonly_bench(_Bench, nnUNetTrainerDALE_AEonly):
    pass


class nnUNetTrainerDALE_ERonly_bench(_Bench, nnUNetTrainerDALE_ERonly):
    pass


class nnUNetTrainerDALE_noLW_bench(_Bench, nnUNetTrainerDALE_noLW):
    pass


class nnUNetTrainerDALE_fast_bench(_Bench, nnUNetTrainerDALE_fast):
    pass


class nnUNetTrainerDALE_firstOrder_bench(_Bench, nnUNetTrainerDALE_firstOrder):
    pass


class nnUNetTrainerDALE_firstOrderJVP_bench(_Bench, nnUNetTrainerDALE_firstOrderJVP):
    pass


class nnUNetTrainerDALE_staleOmega_bench(_Bench, nnUNetTrainerDALE_staleOmega):
    pass


class nnUNetTrainerDALE_omegaEvery4_bench(_Bench, nnUNetTrainerDALE_omegaEvery4):
    pass
