"""Variants of nnUNetTrainerDALE in nnU-Net's manner: one idea each, named after it (the class name is part of the
result folder's name). Ablations follow Table 4 of the paper; schedules shorten training for quick runs and tests.
The study's own trainers (the validity study's screens and controls, the `_bench` twins on its CPU schedule) live in
benchmarks/trainers/, outside the package.
"""

from __future__ import annotations

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dale.config import PAPER_CHANGES
from nnunet_dale.robust_loss import DEFAULT_Q, GeneralisedCrossEntropy
from nnunet_dale.trainer import nnUNetTrainerDALE

__all__ = [
    "Schedule",
    "nnUNetTrainer_demo",
    "nnUNetTrainer_demoSameTime",
    "nnUNetTrainer_finetune",
    "nnUNetTrainer_GCE",
    "nnUNetTrainer_quick",
    "nnUNetTrainer_quickSameTime",
    "nnUNetTrainerDALE_100epochs",
    "nnUNetTrainerDALE_250epochs",
    "nnUNetTrainerDALE_50epochs",
    "nnUNetTrainerDALE_5epochs",
    "nnUNetTrainerDALE_AEonly",
    "nnUNetTrainerDALE_bottleneck",
    "nnUNetTrainerDALE_demo",
    "nnUNetTrainerDALE_ERonly",
    "nnUNetTrainerDALE_fast",
    "nnUNetTrainerDALE_finetune",
    "nnUNetTrainerDALE_finetune_quick",
    "nnUNetTrainerDALE_firstOrder",
    "nnUNetTrainerDALE_firstOrderJVP",
    "nnUNetTrainerDALE_noLW",
    "nnUNetTrainerDALE_noOmega",
    "nnUNetTrainerDALE_omegaEvery4",
    "nnUNetTrainerDALE_paper",
    "nnUNetTrainerDALE_quick",
    "nnUNetTrainerDALE_staleOmega",
]


class Schedule:
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


# --- the paper's literal reading, for comparison (docs/method.md, "What the shipped trainer changes and why")
class nnUNetTrainerDALE_paper(nnUNetTrainerDALE):
    """The paper's literal reading (Eq. 3-15 and Algorithm 1 as docs/method.md reads them), as shipped until 0.1."""

    dale_defaults = dict(PAPER_CHANGES)


# --- ablations (Table 4) of the shipped configuration: their changes to its defaults (config.DALEConfig)
class nnUNetTrainerDALE_AEonly(nnUNetTrainerDALE):
    """Fuzzy regions from average entropy only (no edge ratio)."""

    dale_defaults = {"use_edges": False}


class nnUNetTrainerDALE_ERonly(nnUNetTrainerDALE):
    """Fuzzy regions from the label edge ratio only (no entropy)."""

    dale_defaults = {"use_entropy": False}


class nnUNetTrainerDALE_noOmega(nnUNetTrainerDALE):
    """No label-confidence learning: omega = 1 and every fuzzy voxel counts as clean for L_W."""

    dale_defaults = {"use_omega": False}


class nnUNetTrainerDALE_noLW(nnUNetTrainerDALE):
    """No distribution alignment (alpha is ignored)."""

    dale_defaults = {"use_alignment": False}


class nnUNetTrainerDALE_bottleneck(nnUNetTrainerDALE):
    """L_W on the encoder bottleneck instead of the features before the segmentation head."""

    dale_defaults = {"feature_site": "bottleneck"}


class nnUNetTrainerDALE_fast(nnUNetTrainerDALE):
    """Fast mode: first-order omega (non-fuzzy step's gradient, finite-difference tangent); see docs/method.md. It
    looks along the non-fuzzy step's own gradient, so it keeps the two alternating steps."""

    dale_defaults = {"single_update": False, "omega_mode": "fast"}


# --- cheaper omega (issue 30): the shipped configuration with one omega mode each (docs/method.md, "Cheaper omega")
class nnUNetTrainerDALE_firstOrder(nnUNetTrainerDALE):
    """First-order omega fused into the single update: v = grad L_n(theta) of the update itself, J z . v by a finite
    difference (one forward without graph and one more backward than a plain step)."""

    dale_defaults = {"omega_mode": "first_order"}


class nnUNetTrainerDALE_firstOrderJVP(nnUNetTrainerDALE):
    """First-order omega fused into the single update with the exact forward-mode JVP instead of the finite
    difference."""

    dale_defaults = {"omega_mode": "first_order_jvp"}


class nnUNetTrainerDALE_staleOmega(nnUNetTrainerDALE):
    """Stale-direction omega in the single update: v = the SGD momentum buffer, J z . v by a finite difference (one
    forward without graph more than a plain step)."""

    dale_defaults = {"omega_mode": "stale"}


class nnUNetTrainerDALE_omegaEvery4(nnUNetTrainerDALE):
    """The shipped exact omega on every 4th iteration; the other three are its single update at omega = 1 (the
    _noOmega iteration)."""

    dale_defaults = {"omega_every": 4}


# --- schedules (nnU-Net ships nnUNetTrainer_5epochs, _50epochs, _100epochs ... with the same lengths)
class nnUNetTrainerDALE_5epochs(Schedule, nnUNetTrainerDALE):
    epochs = 5


class nnUNetTrainerDALE_50epochs(Schedule, nnUNetTrainerDALE):
    epochs = 50


class nnUNetTrainerDALE_100epochs(Schedule, nnUNetTrainerDALE):
    epochs = 100


class nnUNetTrainerDALE_250epochs(Schedule, nnUNetTrainerDALE):
    epochs = 250


# --- the demo's schedule (nnunet-dale demo): default and DALE see the same batches count, a third default nnU-Net
# gets DALE's wall time
class nnUNetTrainer_demo(Schedule, nnUNetTrainer):
    """Default nnU-Net with the demo's short CPU schedule."""

    epochs, iterations, val_iterations = 25, 25, 10


class nnUNetTrainerDALE_demo(Schedule, nnUNetTrainerDALE):
    """DALE with the demo's short CPU schedule."""

    epochs, iterations, val_iterations = 25, 25, 10


# The shipped DALE's measured wall time is 2.3-2.8 x default nnU-Net's on the same epochs (in the label-noise study:
# default at 100 epochs 364 s, DALE at 40 epochs 363 s); the demo's third trainer gets 2.5 x the epochs.
class nnUNetTrainer_demoSameTime(Schedule, nnUNetTrainer):
    """Default nnU-Net given DALE's wall time on the demo's schedule: 62 epochs (2.5 x the demo's 25) x 25
    iterations, 10 validation iterations."""

    epochs, iterations, val_iterations = 62, 25, 10


# --- tiny schedules for smoke tests, with a default-nnU-Net twin of the same length
class nnUNetTrainer_quick(Schedule, nnUNetTrainer):
    """Default nnU-Net, 2 epochs x 10 iterations (5 validation iterations)."""

    epochs, iterations, val_iterations = 2, 10, 5


class nnUNetTrainerDALE_quick(Schedule, nnUNetTrainerDALE):
    """DALE, 2 epochs x 10 iterations (5 validation iterations)."""

    epochs, iterations, val_iterations = 2, 10, 5


class nnUNetTrainer_quickSameTime(Schedule, nnUNetTrainer):
    """Default nnU-Net given DALE's wall time on the quick schedule (the quick demo's third trainer): 5 epochs (2.5 x
    the quick 2) x 10 iterations (5 validation iterations)."""

    epochs, iterations, val_iterations = 5, 10, 5


# --- fine-tuning from pretrained weights (-pretrained_weights, docs/finetuning.md): shorter, lower initial lr
class _FineTune(Schedule):
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
