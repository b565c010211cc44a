"""Variants of nnUNetTrainerDALE in nnU-Net's manner: one idea each, named after it (the class name is part of the
result folder's name). Ablations follow Table 4 of the paper; schedules shorten training for quick runs and tests.
"""

from __future__ import annotations

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dale.config import PAPER, SHIPPED
from nnunet_dale.robust_loss import DEFAULT_Q, GeneralisedCrossEntropy
from nnunet_dale.trainer import nnUNetTrainerDALE

__all__ = [
    "nnUNetTrainer_bench",
    "nnUNetTrainer_benchSameTime",
    "nnUNetTrainer_benchShippedTime",
    "nnUNetTrainer_demo",
    "nnUNetTrainer_finetune",
    "nnUNetTrainer_GCE",
    "nnUNetTrainer_GCE_bench",
    "nnUNetTrainer_quick",
    "nnUNetTrainerDALE_100epochs",
    "nnUNetTrainerDALE_250epochs",
    "nnUNetTrainerDALE_50epochs",
    "nnUNetTrainerDALE_5epochs",
    "nnUNetTrainerDALE_AEonly",
    "nnUNetTrainerDALE_AEonly_bench",
    "nnUNetTrainerDALE_allFixes",
    "nnUNetTrainerDALE_allFixes_bench",
    "nnUNetTrainerDALE_allFixes_bench100epochs",
    "nnUNetTrainerDALE_bench",
    "nnUNetTrainerDALE_bottleneck",
    "nnUNetTrainerDALE_demo",
    "nnUNetTrainerDALE_ERonly",
    "nnUNetTrainerDALE_ERonly_bench",
    "nnUNetTrainerDALE_fast",
    "nnUNetTrainerDALE_fast_bench",
    "nnUNetTrainerDALE_finetune",
    "nnUNetTrainerDALE_finetune_quick",
    "nnUNetTrainerDALE_firstOrder",
    "nnUNetTrainerDALE_firstOrder_bench",
    "nnUNetTrainerDALE_firstOrderJVP",
    "nnUNetTrainerDALE_firstOrderJVP_bench",
    "nnUNetTrainerDALE_imageDice",
    "nnUNetTrainerDALE_imageDice_bench",
    "nnUNetTrainerDALE_noLW",
    "nnUNetTrainerDALE_noLW_bench",
    "nnUNetTrainerDALE_noOmega",
    "nnUNetTrainerDALE_noOmega_bench",
    "nnUNetTrainerDALE_omegaEvery4",
    "nnUNetTrainerDALE_omegaEvery4_bench",
    "nnUNetTrainerDALE_omegaMedian",
    "nnUNetTrainerDALE_omegaMedian_bench",
    "nnUNetTrainerDALE_omegaNorm",
    "nnUNetTrainerDALE_omegaNorm_bench",
    "nnUNetTrainerDALE_omegaShuffled",
    "nnUNetTrainerDALE_omegaShuffled_bench",
    "nnUNetTrainerDALE_paper",
    "nnUNetTrainerDALE_paper_bench",
    "nnUNetTrainerDALE_quick",
    "nnUNetTrainerDALE_realImage",
    "nnUNetTrainerDALE_realImage_bench",
    "nnUNetTrainerDALE_singleUpdate",
    "nnUNetTrainerDALE_singleUpdate_bench",
    "nnUNetTrainerDALE_splitPatches",
    "nnUNetTrainerDALE_splitPatches_bench",
    "nnUNetTrainerDALE_staleOmega",
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


class _Schedule:
    """Mixin setting nnU-Net's epoch count and iterations per epoch; place before the trainer class."""

    epochs: int = 1000
    iterations: int = 250
    val_iterations: int = 50

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations


# --- the validity study (docs/results.md, "Making DALE help"): the literal reading and one fix per class
class nnUNetTrainerDALE_paper(nnUNetTrainerDALE):
    """The paper's literal reading (Eq. 3-15 and Algorithm 1 as docs/method.md reads them), as shipped until 0.1."""

    dale_defaults = dict(PAPER)


class nnUNetTrainerDALE_splitPatches(nnUNetTrainerDALE):
    """The split patch scales with the image: 16 patches per side of the network patch (the paper's 14-22)."""

    dale_defaults = {**PAPER, "split_patches": 16}


class nnUNetTrainerDALE_stableLW(nnUNetTrainerDALE):
    """L_W that cannot dominate: W^2 per class over its target trace, classes with >= 4x the feature dimension in
    weight, running target Gaussians (momentum 0.9)."""

    dale_defaults = {**PAPER, "lw_scale": "trace", "min_class_mass_per_dim": 4.0, "target_momentum": 0.9}


class nnUNetTrainerDALE_omegaNorm(nnUNetTrainerDALE):
    """Scale-free omega: hypergradient centred per class and RMS-normalised before Adam; clean/noisy beyond 0.05."""

    dale_defaults = {**PAPER, "omega_normalise": True, "clean_threshold": 0.05}


class nnUNetTrainerDALE_singleUpdate(nnUNetTrainerDALE):
    """One optimiser update per iteration on (L_n + L_f) / 2, omega looking ahead from the current weights."""

    dale_defaults = {**PAPER, "single_update": True}


class nnUNetTrainerDALE_realImage(nnUNetTrainerDALE):
    """The passes see the real image; the region masks act as loss weights only."""

    dale_defaults = {**PAPER, "mask_input": False}


class nnUNetTrainerDALE_warmup(nnUNetTrainerDALE):
    """The first 10 % of epochs are plain nnU-Net steps."""

    dale_defaults = {**PAPER, "warmup_fraction": 0.1}


class nnUNetTrainerDALE_allFixes(nnUNetTrainerDALE):
    """Every fix above together (config.SHIPPED): the study's name of nnUNetTrainerDALE's configuration."""

    dale_defaults = dict(SHIPPED)


# --- the validity study's second round: one change each to the shipped configuration
class nnUNetTrainerDALE_twoSteps(nnUNetTrainerDALE):
    """The shipped configuration with Algorithm 1's two alternating optimiser steps instead of the single update."""

    dale_defaults = {**SHIPPED, "single_update": False}


class nnUNetTrainerDALE_omegaMedian(nnUNetTrainerDALE):
    """The shipped configuration with omega's hypergradient centred on each class's weighted median, not its mean."""

    dale_defaults = {**SHIPPED, "omega_centre": "median"}


class nnUNetTrainerDALE_imageDice(nnUNetTrainerDALE):
    """The shipped configuration with one Dice over the whole image in the single update (voxels weighted by omega)
    instead of one per region: a Dice on the fuzzy region alone pulls harder towards foreground there."""

    dale_defaults = {**SHIPPED, "dice_scope": "image"}


class nnUNetTrainerDALE_omegaShuffled(nnUNetTrainerDALE):
    """A control for the shipped configuration: omega* permuted at random among each class's fuzzy voxels in the
    batch, so it keeps its values per class but carries no per-voxel label confidence."""

    dale_defaults = {**SHIPPED, "omega_shuffle": True}


class nnUNetTrainerDALE_strongOmega(nnUNetTrainerDALE):
    """The shipped configuration with omega's Adam learning rate tripled (0.3): with the normalised hypergradient a
    one-step omega is ~1 -+ lr per voxel, so its label confidence spans 0.7-1.3 instead of 0.9-1.1."""

    dale_defaults = {**SHIPPED, "omega_lr": 0.3}


# --- ablations (Table 4) of the shipped configuration
class nnUNetTrainerDALE_AEonly(nnUNetTrainerDALE):
    """Fuzzy regions from average entropy only (no edge ratio)."""

    dale_defaults = {**SHIPPED, "use_edges": False}


class nnUNetTrainerDALE_ERonly(nnUNetTrainerDALE):
    """Fuzzy regions from the label edge ratio only (no entropy)."""

    dale_defaults = {**SHIPPED, "use_entropy": False}


class nnUNetTrainerDALE_noOmega(nnUNetTrainerDALE):
    """No label-confidence learning: omega = 1 and every fuzzy voxel counts as clean for L_W."""

    dale_defaults = {**SHIPPED, "use_omega": False}


class nnUNetTrainerDALE_noLW(nnUNetTrainerDALE):
    """No distribution alignment (alpha is ignored)."""

    dale_defaults = {**SHIPPED, "use_alignment": False}


class nnUNetTrainerDALE_bottleneck(nnUNetTrainerDALE):
    """L_W on the encoder bottleneck instead of the features before the segmentation head."""

    dale_defaults = {**SHIPPED, "feature_site": "bottleneck"}


class nnUNetTrainerDALE_fast(nnUNetTrainerDALE):
    """Fast mode: first-order omega (non-fuzzy step's gradient, finite-difference tangent); see docs/method.md. It
    looks along the non-fuzzy step's own gradient, so it keeps the two alternating steps."""

    dale_defaults = {**SHIPPED, "single_update": False, "omega_mode": "fast"}


# --- cheaper omega (issue 30): the shipped configuration with one omega mode each (docs/method.md, "Cheaper omega")
class nnUNetTrainerDALE_firstOrder(nnUNetTrainerDALE):
    """First-order omega fused into the single update: v = grad L_n(theta) of the update itself, J z . v by a finite
    difference (one forward without graph and one more backward than a plain step)."""

    dale_defaults = {**SHIPPED, "omega_mode": "first_order"}


class nnUNetTrainerDALE_firstOrderJVP(nnUNetTrainerDALE):
    """First-order omega fused into the single update with the exact forward-mode JVP instead of the finite
    difference."""

    dale_defaults = {**SHIPPED, "omega_mode": "first_order_jvp"}


class nnUNetTrainerDALE_staleOmega(nnUNetTrainerDALE):
    """Stale-direction omega in the single update: v = the SGD momentum buffer, J z . v by a finite difference (one
    forward without graph more than a plain step)."""

    dale_defaults = {**SHIPPED, "omega_mode": "stale"}


class nnUNetTrainerDALE_omegaEvery4(nnUNetTrainerDALE):
    """The shipped exact omega on every 4th iteration; the other three are its single update at omega = 1 (the
    _noOmega iteration)."""

    dale_defaults = {**SHIPPED, "omega_every": 4}


# --- schedules (nnU-Net ships nnUNetTrainer_5epochs, _50epochs, _100epochs ... with the same lengths)
class nnUNetTrainerDALE_5epochs(_Schedule, nnUNetTrainerDALE):
    epochs = 5


class nnUNetTrainerDALE_50epochs(_Schedule, nnUNetTrainerDALE):
    epochs = 50


class nnUNetTrainerDALE_100epochs(_Schedule, nnUNetTrainerDALE):
    epochs = 100


class nnUNetTrainerDALE_250epochs(_Schedule, nnUNetTrainerDALE):
    epochs = 250


class _Bench(_Schedule):
    """The longer benchmark's and the validity study's CPU schedule: 40 epochs x 25 iterations (10 validation)."""

    epochs, iterations, val_iterations = 40, 25, 10


class _BenchShippedTime(_Schedule):
    """The study's schedule for the shipped DALE's wall time: 100 epochs x 25 iterations (10 validation)."""

    epochs, iterations, val_iterations = 100, 25, 10


# --- the demo's schedule (nnunet-dale demo): both trainers see the same batches count
class nnUNetTrainer_demo(_Schedule, nnUNetTrainer):
    """Default nnU-Net with the demo's short CPU schedule."""

    epochs, iterations, val_iterations = 25, 25, 10


class nnUNetTrainerDALE_demo(_Schedule, nnUNetTrainerDALE):
    """DALE with the demo's short CPU schedule."""

    epochs, iterations, val_iterations = 25, 25, 10


# --- the longer benchmark's schedule (benchmarks/noisy_benchmark.py)
class nnUNetTrainer_bench(_Bench, nnUNetTrainer):
    """Default nnU-Net with the longer benchmark's CPU schedule."""


class nnUNetTrainer_benchSameTime(_Schedule, nnUNetTrainer):
    """Default nnU-Net given the literal reading's wall time on the benchmark schedule: 140 epochs x 25 iterations
    (its 40-epoch run took 3.5x the default's on the ISIC 2017 subset at 64 px, docs/results.md)."""

    epochs, iterations, val_iterations = 140, 25, 10


class nnUNetTrainer_benchShippedTime(_BenchShippedTime, nnUNetTrainer):
    """Default nnU-Net given the shipped DALE's wall time on the benchmark schedule: 100 epochs x 25 iterations
    (its 40-epoch runs took 2.3-2.8x the default's alone on the machine, median 2.4x, docs/results.md)."""


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


class nnUNetTrainerDALE_allFixes_bench(_Bench, nnUNetTrainerDALE_allFixes):
    pass


class nnUNetTrainerDALE_allFixes_bench100epochs(_BenchShippedTime, nnUNetTrainerDALE_allFixes):
    """The shipped configuration with default nnU-Net's `_benchShippedTime` length (100 epochs x 25 iterations): does
    DALE's lead hold when training is long enough for default nnU-Net to fit the label noise?"""


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


# --- tiny schedules for smoke tests, with a default-nnU-Net twin of the same length
class nnUNetTrainer_quick(_Schedule, nnUNetTrainer):
    """Default nnU-Net, 2 epochs x 10 iterations (5 validation iterations)."""

    epochs, iterations, val_iterations = 2, 10, 5


class nnUNetTrainerDALE_quick(_Schedule, nnUNetTrainerDALE):
    """DALE, 2 epochs x 10 iterations (5 validation iterations)."""

    epochs, iterations, val_iterations = 2, 10, 5


# --- fine-tuning from pretrained weights (-pretrained_weights, docs/finetuning.md): shorter, lower initial lr
class _FineTune(_Schedule):
    """Schedule mixin for fine-tuning: 50 epochs and a 10x lower initial learning rate (1e-3 instead of 1e-2), so the
    first steps of the poly schedule do not wash out the pretrained weights; place before the trainer class."""

    epochs = 50
    finetune_lr: float = 1e-3

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.finetune_lr  # read by configure_optimizers in initialize()


class nnUNetTrainerDALE_finetune(_FineTune, nnUNetTrainerDALE):
    """DALE fine-tuning: 50 epochs x 250 iterations, initial learning rate 1e-3."""


class nnUNetTrainer_finetune(_FineTune, nnUNetTrainer):
    """Default nnU-Net with the same fine-tuning schedule, for comparison."""


class nnUNetTrainerDALE_finetune_quick(_FineTune, nnUNetTrainerDALE):
    """DALE fine-tuning for smoke tests: 2 epochs x 10 iterations (5 validation iterations), initial lr 1e-3."""

    epochs, iterations, val_iterations = 2, 10, 5


# --- a standard robust-loss baseline (the noise study, benchmarks/noise_study.py; the paper's Table 3 compares it)
class nnUNetTrainer_GCE(nnUNetTrainer):
    """Default nnU-Net with generalised cross-entropy L_q = (1 - p_y^q) / q (Zhang & Sabuncu 2018, q = 0.7;
    nnunet_dale.robust_loss) in place of the CE term of its Dice + CE loss; its Dice term and deep supervision are
    nnU-Net's own. Only `_build_loss` changes, as in nnU-Net's own loss variants (variants/loss/)."""

    gce_q: float = DEFAULT_Q

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise RuntimeError(f"{type(self).__name__} replaces the CE term: region-based (BCE) labels unsupported")
        loss = super()._build_loss()
        inner = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
        if not isinstance(inner, DC_and_CE_loss):
            raise RuntimeError(f"{type(self).__name__} expected nnU-Net's DC_and_CE_loss, got {type(inner).__name__}")
        inner.ce = GeneralisedCrossEntropy(self.gce_q, ignore_index=self.label_manager.ignore_label)
        return loss


class nnUNetTrainer_GCE_bench(_Bench, nnUNetTrainer_GCE):
    """nnUNetTrainer_GCE on the study's CPU schedule (40 epochs x 25 iterations, as nnUNetTrainer_bench)."""
