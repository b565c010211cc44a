"""nnUNetTrainerDALE: nnU-Net's trainer with DALE's train step, the shipped single update or the paper's Algorithm 1.

Everything but `train_step` (planning, data loading, augmentation, validation, inference) is nnU-Net's own.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunet_dale.alignment import (
    Alignment,
    ClassGaussians,
    alignment_loss,
    class_gaussians,
    class_membership,
    fuzzy_objective,
    pooled_gaussians,
    resize_to,
)
from nnunet_dale.confidence import (
    Confidence,
    first_order_confidence,
    functional_forward,
    learn_confidence,
    normalised_hypergradient,
)
from nnunet_dale.config import (
    ALLOW_CONFIG_CHANGE,
    FUSED_OMEGA_MODES,
    DALEConfig,
    DALEConfigError,
    load_config,
    read_record,
    resolve_patch_size,
    split_options,
)
from nnunet_dale.progress import CONFIG_KEY, DALE_STATS, DALELocalLogger
from nnunet_dale.split import FuzzySplit, fuzzy_split
from nnunet_dale.weighted_loss import pixel_weighted_loss, weight_pyramid

__all__ = [
    "NO_DIRECTION",
    "NO_FUZZY_REGION",
    "OMEGA_MOVED",
    "OMEGA_STATS",
    "FeatureTap",
    "FuzzyTerms",
    "SplitBatch",
    "nnUNetTrainerDALE",
    "unwrap",
]

OMEGA_MOVED = 1e-3  # |omega - 1| above this counts as moved (dale_omega_moved)
OMEGA_STATS = ("dale_mean_omega", "dale_noisy_share", "dale_omega_fg", "dale_omega_bg", "dale_noisy_fg",
               "dale_noisy_bg", "dale_omega_moved")  # fmt: skip  # NaN on the iterations omega_every skips
NO_DIRECTION = {  # omega modes that look along a direction v, when there is none (omega = 1 for the iteration)
    "fast": "no non-fuzzy gradient: omega = 1 for this iteration",
    "stale": "no momentum buffer yet (the optimiser's first step): omega = 1 for this iteration",
}
NO_FUZZY_REGION = "no fuzzy region: omega and L_f skipped"  # true of both steps: no L_f in the update or no fuzzy step


@dataclasses.dataclass(frozen=True)
class SplitBatch:
    """One batch on the device after the split (line 3, Eq. 3-7), with the region losses of its passes."""

    loss: nn.Module  # the trainer's pixel-weighted loss (with deep supervision)
    target: torch.Tensor | list[torch.Tensor]  # one per deep-supervision output
    split: FuzzySplit
    x_n: torch.Tensor  # the non-fuzzy pass's input: M^n * X with mask_input, else X
    x_f: torch.Tensor  # the fuzzy pass's input: M^f * X with mask_input, else X
    weights_n: Any  # M^n per deep-supervision output (weight_pyramid)
    weights_f: Any  # M^f per deep-supervision output
    membership: torch.Tensor  # class membership of every voxel
    local_fuzzy_mass: torch.Tensor  # sum of M^f on this rank
    nonfuzzy_mass: float  # sum of M^n over all ranks
    fuzzy_mass: float  # sum of M^f over all ranks
    fuzzy_here: bool  # False under DDP when the fuzzy voxels are on other ranks only

    def nonfuzzy_loss(self, output, *dice_weights) -> torch.Tensor:
        """Eq. 1: L_n, the loss of the outputs weighted by M^n (dice_weights: a Dice weight of its own)."""
        return self.loss(output, self.target, self.weights_n, self.weights_n, *dice_weights)

    def fuzzy_loss(self, output, omega: torch.Tensor, *dice_weights) -> torch.Tensor:
        """Eq. 15's segmentation term: the loss weighted by omega * M^f, normalised by M^f."""
        return self.loss(output, self.target, weight_pyramid(omega * self.split.fuzzy, self.target), self.weights_f,
                         *dice_weights)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FuzzyTerms:
    """What L_f (Eq. 15) weighs the fuzzy region's loss with: omega* and L_W (Eq. 12-14), each at its neutral value
    where it was not finite, and the mean omega* over the fuzzy region (L_W's weight)."""

    confidence: Confidence
    alignment: Alignment
    mean_omega: torch.Tensor


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class FeatureTap:
    """Records the features at DALE's feature site during the forwards it is switched on for."""

    def __init__(self, module: nn.Module, site: str):
        try:
            target = module.decoder.seg_layers[-1] if site == "head" else module.encoder.stages[-1]
        except (AttributeError, IndexError, TypeError):
            raise DALEConfigError(
                f"DALE feature_site={site!r} needs nnU-Net's encoder/decoder network layout "
                f"(decoder.seg_layers, encoder.stages); {type(module).__name__} does not have it. "
                "Set NNUNET_DALE_USE_ALIGNMENT=0 to train without L_W."
            ) from None
        self.value: torch.Tensor | None = None
        self._on = False
        if site == "head":
            target.register_forward_pre_hook(lambda _m, args: self._record(args[0]))
        else:
            target.register_forward_hook(lambda _m, _args, out: self._record(out))

    def _record(self, features: torch.Tensor) -> None:
        if self._on:
            self.value = features

    @contextmanager
    def capture(self) -> Iterator[FeatureTap]:
        self._on, self.value = True, None
        try:
            yield self
        finally:
            self._on = False


class nnUNetTrainerDALE(nnUNetTrainer):
    """DALE (Fang et al., CVPR 2025) inside nnU-Net v2, in the configuration the validity study chose (the defaults of
    `config.DALEConfig`; the paper's literal reading is `nnUNetTrainerDALE_paper`). Variants set `dale_defaults`,
    their changes to those defaults; users override them with ``NNUNET_DALE_CONFIG`` (a JSON file) or
    ``NNUNET_DALE_<FIELD>`` environment variables."""

    dale_defaults: Mapping[str, Any] = {}
    _log_is_new: bool | None = None  # set by the first print_to_log_file: did this trainer start the log file?

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        config = load_config(self.dale_defaults)  # a bad hyper-parameter fails here, before any data is touched
        split_patch = _split_patch_size(config, plans, configuration)  # and before nnU-Net writes its log file
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dale_config: DALEConfig = config
        self.dale_patch_size = split_patch
        record = self.dale_record()
        self.logger.local_logger = DALELocalLogger(record)
        self.logger.update_config({"dale": record, "dale_patch_size": list(self.dale_patch_size)})
        self.dale_loss: nn.Module | None = None
        self.feature_tap: FeatureTap | None = None
        self.dale_fallbacks: Counter[str] = Counter()  # fallbacks this epoch, logged and reset at its end
        self.dale_num_classes = self.label_manager.num_segmentation_heads
        self.dale_target: ClassGaussians | None = None  # running target Gaussians (target_momentum > 0)
        self._grad_norms: dict[str, torch.Tensor] = {}  # pre-clip gradient norm of this iteration's steps
        self.dale_resumed = False  # set by load_checkpoint (--c): then the result folder is this run's own
        self.phase_times: dict[str, float] | None = None  # benchmarks/step_cost.py sets a dict to time the phases
        self.dale_iterations = 0  # DALE iterations since this process started (omega_every counts them)
        self.print_to_log_file(f"DALE configuration: {record}, split patch size {self.dale_patch_size}")

    def dale_record(self) -> dict[str, Any]:
        """The DALE settings this trainer records (log, debug.json, checkpoints) and a resume must match: its
        configuration. A trainer that changes the step outside it (the study's, benchmarks/trainers/) adds its own."""
        return self.dale_config.to_dict()

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        super().initialize()
        self.dale_loss = self._build_dale_loss()
        if self.dale_config.use_alignment:
            self.feature_tap = FeatureTap(unwrap(self.network), self.dale_config.feature_site)

    def _build_dale_loss(self) -> nn.Module:
        """The pixel-weighted twin of nnU-Net's loss, with the same deep-supervision weights."""
        loss = pixel_weighted_loss(self.label_manager, self.configuration_manager.batch_dice, self.is_ddp)
        if isinstance(self.loss, DeepSupervisionWrapper):
            loss = DeepSupervisionWrapper(loss, self.loss.weight_factors)
        return loss

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    # ------------------------------------------------------------------ the step
    def train_step(self, batch: dict) -> dict:
        """One nnU-Net iteration: nnU-Net's own during the warm-up (`warmup_fraction`), else DALE's shipped single
        update (`_single_update`) or, with `single_update` off, the paper's two steps (`_algorithm_1`). With
        `omega_every` k > 1 only every k-th iteration learns omega*, the others train at omega = 1."""
        cfg = self.dale_config
        if self.current_epoch < cfg.warmup_fraction * self.num_epochs:
            return {**super().train_step(batch), **{k: np.nan for k in DALE_STATS}}
        self._grad_norms = {}
        learn_omega = cfg.use_omega and self.dale_iterations % cfg.omega_every == 0  # else omega = 1 (use_omega off)
        self.dale_iterations += 1
        split_batch = self._split_batch(batch)
        step = self._single_update if cfg.single_update else self._algorithm_1
        return step(split_batch, learn_omega)

    def _single_update(self, b: SplitBatch, learn_omega: bool) -> dict:
        """The shipped step: one forward at theta gives L_n (Eq. 1) and the fuzzy region's outputs, omega* looks ahead
        from theta (Eq. 8-11), L_W (Eq. 12-14) completes L_f (Eq. 15), and one optimiser update descends
        (L_n + L_f) / 2."""
        cfg = self.dale_config
        with self._phase("forward"):
            self.optimizer.zero_grad(set_to_none=True)
            output_n, features_n, loss_n = self._nonfuzzy_pass(b)
        if b.fuzzy_mass == 0:  # nothing fuzzy: no omega, no L_f; the update is on L_n alone
            self._fallback(NO_FUZZY_REGION)
            self._optimizer_step(loss_n, "update")
            return self._step_outputs(loss_n.detach(), b)
        output_f, features_f = output_n, features_n  # without mask_input both passes see X at theta: one forward
        if cfg.mask_input:  # the fuzzy pass sees M^f * X (Eq. 7): a forward of its own
            with self._phase("fuzzy_forward"):
                output_f, features_f = self._fuzzy_pass(b)
        with self._phase("omega"):  # the fused modes look along v from this update: grad L_n(theta) or momentum
            direction = self._direction(loss_n) if learn_omega and cfg.omega_mode in FUSED_OMEGA_MODES else None
            confidence, clean = self._omega(b, output_f, learn_omega, direction)
        terms = self._fuzzy_terms(b, features_n, features_f, confidence, clean)
        with self._phase("update"):
            seg_f, loss_f = self._loss_f(b, output_f, terms)
            self._optimizer_step(self._update_objective(b, output_n, output_f, loss_n, loss_f, terms), "update")
        return self._fuzzy_outputs(b, loss_n, seg_f, loss_f, terms, learn_omega)

    def _update_objective(self, b: SplitBatch, output_n, output_f, loss_n, loss_f, terms: FuzzyTerms) -> torch.Tensor:
        """The single update's objective: the mean of Eq. 1's L_n and Eq. 15's L_f at the same weights theta (a hook:
        the study's `_imageDice` takes its Dice over the whole image)."""
        return 0.5 * (loss_n + loss_f)

    def _algorithm_1(self, b: SplitBatch, learn_omega: bool) -> dict:
        """Algorithm 1 as the paper writes it (line 3, the split, is `_split_batch`): a non-fuzzy step to theta_n,
        omega* looking ahead from theta_n, and a fuzzy step to theta_f, two optimiser steps per iteration."""
        cfg = self.dale_config
        # lines 4-5: extract F_n from D_n and optimise theta_n on it (Eq. 1)
        with self._phase("nonfuzzy_step"):
            self.optimizer.zero_grad(set_to_none=True)
            _, features_n, loss_n = self._nonfuzzy_pass(b)
            gradient_n = None
            if b.nonfuzzy_mass > 0:  # fast mode keeps this step's gradient: its omega looks along it
                keep = learn_omega and cfg.omega_mode == "fast"
                gradient_n = self._optimizer_step(loss_n, "nonfuzzy", keep_gradient=keep)
            else:  # everything fuzzy: no reliable region to step on
                self._fallback("no non-fuzzy region: non-fuzzy step skipped")
        if b.fuzzy_mass == 0:  # nothing fuzzy: the iteration is the non-fuzzy step alone
            self._fallback(NO_FUZZY_REGION)
            return self._step_outputs(loss_n.detach(), b)
        # line 11, ahead of lines 6-10: extract F_f from D_f at theta_n; its outputs also serve the shadow step (line 8)
        with self._phase("fuzzy_forward"):
            self.optimizer.zero_grad(set_to_none=True)
            output_f, features_f = self._fuzzy_pass(b)
        # lines 6-10: omega* from K lookahead steps of a shadow network A' started at theta_n (Eq. 8-11; fast mode:
        # to first order along the non-fuzzy step's gradient)
        with self._phase("omega"):
            confidence, clean = self._omega(b, output_f, learn_omega, gradient_n)
        # lines 12-13: L_W (Eq. 12-14) and the fuzzy loss L_f (Eq. 15)
        terms = self._fuzzy_terms(b, features_n, features_f, confidence, clean)
        with self._phase("fuzzy_step"):
            seg_f, loss_f = self._loss_f(b, output_f, terms)
            self._optimizer_step(loss_f, "fuzzy")  # line 14: optimise theta_f on D_f (Eq. 2)
        return self._fuzzy_outputs(b, loss_n, seg_f, loss_f, terms, learn_omega)

    def _split_batch(self, batch: dict) -> SplitBatch:
        """The batch on the device, split into D_n and D_f (line 3, Eq. 3-7): the passes' inputs (M^n * X and
        M^f * X with mask_input, else X), the region weights per deep-supervision output, the class membership and
        the regions' masses (summed over the ranks under DDP, so that every rank skips alike)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = (
            [t.to(self.device, non_blocking=True) for t in target]
            if isinstance(target, list)
            else target.to(self.device, non_blocking=True)
        )
        full_target = target[0] if isinstance(target, list) else target
        with self._phase("split"):
            split = self.split(data, full_target)
            x_n, x_f = (data * split.nonfuzzy, data * split.fuzzy) if self.dale_config.mask_input else (data, data)
            weights_n, weights_f = weight_pyramid(split.nonfuzzy, target), weight_pyramid(split.fuzzy, target)
            membership = self._membership(full_target)
            local_fuzzy_mass = split.fuzzy.sum()
            masses = torch.stack([split.nonfuzzy.sum(), local_fuzzy_mass])
            if self.is_ddp:  # skips must agree on every rank: the real steps and the batch Dice are collectives
                masses = torch.cat([masses, masses.clone()])
                dist.all_reduce(masses[:2])
            nonfuzzy_mass, fuzzy_mass, *local = masses.tolist()  # one host sync (local: this rank's, under DDP)
        return SplitBatch(
            loss=self.dale_loss, target=target, split=split, x_n=x_n, x_f=x_f, weights_n=weights_n,
            weights_f=weights_f, membership=membership, local_fuzzy_mass=local_fuzzy_mass,
            nonfuzzy_mass=nonfuzzy_mass, fuzzy_mass=fuzzy_mass, fuzzy_here=not (local and local[1] == 0),
        )  # fmt: skip

    def _nonfuzzy_pass(self, b: SplitBatch) -> tuple[Any, torch.Tensor | None, torch.Tensor]:
        """Line 4 and Eq. 1: the network's outputs on the non-fuzzy input, its features F_n and L_n."""
        with self._autocast(), self._features() as tap:
            output = self.network(b.x_n)
            loss_n = b.nonfuzzy_loss(output)
        return output, tap.value, loss_n

    def _fuzzy_pass(self, b: SplitBatch) -> tuple[Any, torch.Tensor | None]:
        """Line 11: the network's outputs on the fuzzy input and its features F_f (with gradient)."""
        with self._autocast(), self._features() as tap:
            output = self.network(b.x_f)
        return output, tap.value

    def _omega(self, b: SplitBatch, output_f, learn_omega: bool, direction) -> tuple[Confidence, torch.Tensor]:
        """omega* (Eq. 8-11) and the clean voxels of Eq. 12's indicator. Iterations that do not learn omega (use_omega
        off, or those omega_every skips) keep omega = 1 and count every fuzzy voxel as clean."""
        if not learn_omega:
            return Confidence.neutral(b.split.fuzzy), torch.ones_like(b.split.fuzzy, dtype=torch.bool)
        confidence = self._confidence(
            b.x_f, b.x_n, output_f, b.split, b.membership, b.fuzzy_loss, b.nonfuzzy_loss, direction
        )
        return confidence, confidence.clean

    def _fuzzy_terms(self, b: SplitBatch, features_n, features_f, confidence: Confidence, clean) -> FuzzyTerms:
        """L_W (Eq. 12-14) of the clean fuzzy features, a non-finite omega* or L_W at its neutral value, and the mean
        omega* over the fuzzy region (L_W's weight in Eq. 15)."""
        with self._phase("alignment"):
            alignment = self._alignment(features_n, features_f, b.membership, b.split, clean)
        confidence, alignment = self._finite_or_skipped(confidence, alignment)
        mean_omega = (confidence.omega * b.split.fuzzy).sum() / b.local_fuzzy_mass.clamp_min(1e-8)
        return FuzzyTerms(confidence=confidence, alignment=alignment, mean_omega=mean_omega)

    def _loss_f(self, b: SplitBatch, output_f, terms: FuzzyTerms) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 15: the omega*-weighted segmentation loss of the fuzzy region, and L_f = it + alpha mean(omega*) L_W."""
        with self._autocast():
            seg_f = b.fuzzy_loss(output_f, terms.confidence.omega)
            return seg_f, fuzzy_objective(seg_f, terms.alignment.loss, self.dale_config.alpha, terms.mean_omega)

    def _fuzzy_outputs(self, b: SplitBatch, loss_n, seg_f, loss_f, terms: FuzzyTerms, learn_omega: bool) -> dict:
        """train_step's dict after a step with a fuzzy region: the loss (L_n + L_f) / 2 and DALE's statistics; omega's
        NaN on the iterations omega_every skips (its statistics are those of the iterations that learn it)."""
        loss = 0.5 * (loss_n + loss_f).detach()
        if b.fuzzy_here:
            outputs = self._step_outputs(loss, b, terms, seg_f.detach())
        else:  # DDP: fuzzy voxels on other ranks only, none here
            outputs = self._step_outputs(loss, b)
        if self.dale_config.use_omega and not learn_omega:
            outputs.update(dict.fromkeys(OMEGA_STATS, np.nan))
        return outputs

    def split(self, data: torch.Tensor, full_target: torch.Tensor) -> FuzzySplit:
        """Line 3 (Eq. 3-7) with this trainer's configuration and split patch size."""
        return fuzzy_split(data, full_target, self.dale_patch_size, **split_options(self.dale_config))

    def _omega_transform(self, split: FuzzySplit, membership: torch.Tensor, centre: str = "mean"):
        """omega_normalise: the hypergradient centred per class (on its mean, or its weighted "median") and RMS-scaled
        over the fuzzy voxels."""
        if not self.dale_config.omega_normalise:
            return None
        partition = self._partition(membership)
        return lambda g: normalised_hypergradient(g, split.fuzzy, partition, centre)

    def _partition(self, membership: torch.Tensor) -> torch.Tensor:
        """The classes omega is normalised within: the labels, or (background, foreground) for regions."""
        return self._bg_fg(membership) if self.label_manager.has_regions else membership

    def _membership(self, full_target: torch.Tensor) -> torch.Tensor:
        lm = self.label_manager
        return class_membership(full_target, lm.num_segmentation_heads, lm.has_regions, lm.ignore_label)

    def _bg_fg(self, membership: torch.Tensor) -> torch.Tensor:
        """(background, foreground) membership: a partition of the labelled voxels, also for overlapping regions."""
        if self.label_manager.has_regions:
            fg = membership.amax(1, keepdim=True)
            return torch.cat([1 - fg, fg], 1)
        return torch.cat([membership[:, :1], membership[:, 1:].sum(1, keepdim=True)], 1)

    def _step_outputs(
        self, loss, b: SplitBatch, terms: FuzzyTerms | None = None, seg_f: torch.Tensor | None = None
    ) -> dict:
        """train_step's dict: the loss and DALE's statistics (progress.DALE_STATS), fetched with one host sync.
        Without omega statistics (no fuzzy region here) omega reads 1, the noisy shares 0 and L_W 0. The first
        gradient norm is the single update's or the non-fuzzy step's, the second the fuzzy step's."""
        split = b.split
        bg, fg = self._bg_fg(b.membership).unbind(1)
        fg, bg = fg[:, None], bg[:, None]
        zero = torch.zeros((), device=loss.device)
        nan = zero + float("nan")
        norms = self._grad_norms
        stats = {
            "dale_fuzzy_fraction": split.fuzzy.mean(),
            "dale_nonfuzzy_fg_share": (split.nonfuzzy * fg).sum() / fg.sum().clamp_min(1e-8),
            "dale_grad_norm_n": norms.get("update", norms.get("nonfuzzy", nan)),
            "dale_grad_norm_f": norms.get("fuzzy", nan),
        }
        classes_used = zero - 1
        if terms is None:
            stats.update(dale_mean_omega=zero + 1, dale_noisy_share=zero, dale_l_w=zero, dale_alpha_l_w=zero)
            stats.update(dale_omega_fg=zero + 1, dale_omega_bg=zero + 1, dale_noisy_fg=zero, dale_noisy_bg=zero)
            stats.update(dale_omega_moved=zero, dale_seg_loss_f=nan)
        else:

            def fuzzy_mean(values, region=1.0):
                weight = split.fuzzy * region
                return (values * weight).sum() / weight.sum().clamp_min(1e-8)

            confidence, alignment, mean_omega = terms.confidence, terms.alignment, terms.mean_omega
            omega, noisy = confidence.omega, confidence.noisy.to(split.fuzzy.dtype)
            stats.update(
                dale_mean_omega=mean_omega.detach(),
                dale_noisy_share=fuzzy_mean(noisy),
                dale_l_w=alignment.loss.detach(),
                dale_alpha_l_w=self.dale_config.alpha * mean_omega.detach() * alignment.loss.detach(),
                dale_omega_fg=fuzzy_mean(omega, fg),
                dale_omega_bg=fuzzy_mean(omega, bg),
                dale_noisy_fg=fuzzy_mean(noisy, fg),
                dale_noisy_bg=fuzzy_mean(noisy, bg),
                dale_omega_moved=fuzzy_mean(((omega - 1).abs() > OMEGA_MOVED).to(omega.dtype)),
                dale_seg_loss_f=seg_f,
            )
            classes_used = alignment.classes_used.to(loss.dtype)
        keys = list(DALE_STATS)
        values = torch.stack([loss.float(), classes_used.float(), *[stats[k].float() for k in keys]]).cpu().numpy()
        loss, classes_used = values[:2]
        if self.feature_tap is not None and self.dale_config.alpha > 0 and 0 <= classes_used < self.dale_num_classes:
            self.dale_fallbacks["class skipped in L_W (too little weight in a region)"] += 1
        return {"loss": loss, **dict(zip(keys, values[2:]))}

    def _finite_or_skipped(self, confidence: Confidence, alignment: Alignment) -> tuple[Confidence, Alignment]:
        """A non-finite omega or L_W is replaced by its neutral value (omega = 1, L_W = 0), with a logged warning."""
        finite_omega, finite_lw = torch.stack(
            [torch.isfinite(confidence.omega).all(), torch.isfinite(alignment.loss)]
        ).tolist()
        if not finite_omega:
            self._fallback("non-finite omega: omega = 1 for this iteration")
            confidence = Confidence.neutral(confidence.omega)
        if not finite_lw:
            self._fallback("non-finite L_W: alignment skipped for this iteration")
            alignment = Alignment(loss=torch.zeros_like(alignment.loss), classes_used=alignment.classes_used)
        return confidence, alignment

    def _fallback(self, what: str) -> None:
        """Count a fallback; the first of its kind in an epoch is also written to the log as a warning."""
        if self.dale_fallbacks[what] == 0:
            self.print_to_log_file(f"WARNING: DALE {what} (further occurrences this epoch are counted)")
        self.dale_fallbacks[what] += 1

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Times a phase of the step into `self.phase_times` when a benchmark set it to a dict (else free)."""
        if self.phase_times is None:
            yield
            return
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        synchronize()
        start = time.perf_counter()
        yield
        synchronize()
        self.phase_times[name] = self.phase_times.get(name, 0.0) + time.perf_counter() - start

    @contextmanager
    def _features(self) -> Iterator[Any]:
        if self.feature_tap is None:
            yield _NO_FEATURES
        else:
            with self.feature_tap.capture() as tap:
                yield tap

    def _confidence(
        self, x_f, x_n, output_f, split: FuzzySplit, membership, fuzzy_loss, nonfuzzy_loss, gradient_n=None
    ) -> Confidence:
        """omega* (Eq. 8-11) on the unwrapped network, locally (no DDP sync), in fp32 outside autocast; the
        hypergradient goes through `_omega_transform` (omega_normalise) before Adam."""
        transform = self._omega_transform(split, membership)
        return dataclasses.replace(
            self._lookahead(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n, transform),
            threshold=self.dale_config.clean_threshold,
        )

    def _lookahead(self, x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n, transform) -> Confidence:
        cfg = self.dale_config
        module = unwrap(self.network)
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        forward = functional_forward(module)

        shared = None if self.device.type == "cuda" else output_f  # an AMP graph is not reused for the meta step
        lr = self.optimizer.param_groups[0]["lr"]
        if cfg.omega_mode != "exact":  # first order along v = gradient_n (fast, first_order(_jvp), stale)
            if gradient_n is None:  # fast: the non-fuzzy step was skipped; stale: no momentum yet
                self._fallback(NO_DIRECTION[cfg.omega_mode])
                return Confidence.neutral(split.fuzzy)
            direction = dict(zip(params, gradient_n))
            return first_order_confidence(
                forward, params, x_f, shared, fuzzy_loss, direction, split.fuzzy.shape, lr, cfg.lookahead_steps,
                cfg.omega_lr, transform=transform, jvp=cfg.omega_mode == "first_order_jvp",
            )  # fmt: skip
        return learn_confidence(
            forward, params, x_f, x_n, fuzzy_loss, nonfuzzy_loss, split.fuzzy.shape, lr, cfg.lookahead_steps,
            cfg.omega_lr, fuzzy_outputs=shared, transform=transform,
        )  # fmt: skip

    def _direction(self, loss_n: torch.Tensor) -> list[torch.Tensor] | None:
        """v of the omega modes fused into the single update, per trainable parameter. first_order(_jvp):
        grad L_n(theta), the L_n half of the update's backward taken apart by autograd.grad (through the GradScaler's
        scale on CUDA); the graph is kept for the update's own backward, and DDP does not all-reduce it, so v is this
        rank's, as the exact lookahead's is. stale: the SGD momentum buffer, zeros for parameters that never had a
        gradient, None before the optimiser's first step."""
        params = [p for p in unwrap(self.network).parameters() if p.requires_grad]
        if self.dale_config.omega_mode == "stale":
            state = self.optimizer.state
            buffers = [state[p].get("momentum_buffer") if p in state else None for p in params]
            if all(b is None for b in buffers):
                return None
            return [torch.zeros_like(p) if b is None else b for p, b in zip(params, buffers)]
        scale = 1.0 if self.grad_scaler is None else self.grad_scaler.get_scale()
        grads = torch.autograd.grad(
            loss_n * scale, params, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        return [g / scale for g in grads]

    def _alignment(self, features_n, features_f, membership, split: FuzzySplit, clean: torch.Tensor) -> Alignment:
        """L_W (Eq. 12-14): fuzzy features of `clean` voxels pulled toward the detached non-fuzzy class Gaussians
        (this batch's, or their running estimate with target_momentum > 0)."""
        cfg = self.dale_config
        if features_n is None or features_f is None or cfg.alpha == 0:
            zero = torch.zeros((), device=self.device)
            return Alignment(loss=zero, classes_used=zero.long())
        spatial = features_f.shape[2:]
        membership = resize_to(membership, spatial)
        min_mass = max(cfg.min_class_mass, cfg.min_class_mass_per_dim * features_f.shape[1])
        with torch.no_grad():
            target_stats = class_gaussians(features_n, membership, resize_to(split.nonfuzzy, spatial))
            if cfg.target_momentum > 0:
                self.dale_target = pooled_gaussians(self.dale_target, target_stats, cfg.target_momentum, min_mass)
                target_stats = self.dale_target
        fuzzy_stats = class_gaussians(features_f, membership, resize_to(split.fuzzy * clean, spatial))
        return alignment_loss(target_stats, fuzzy_stats, cfg.cov_perturbation, cfg.ridge, min_mass, scale=cfg.lw_scale)

    def _optimizer_step(self, loss: torch.Tensor, name: str, keep_gradient: bool = False) -> list[torch.Tensor] | None:
        """nnU-Net's backward, gradient clipping at 12 and SGD step (through the GradScaler on CUDA). A non-finite
        loss or gradient skips the step (weights and optimiser state unchanged) with a logged warning. Optionally
        returns a copy of the clipped, unscaled gradient of the trainable parameters (fast mode's direction)."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self._grad_norms[name] = norm.detach()
        if self.grad_scaler is None and not torch.isfinite(norm):  # with AMP the GradScaler skips such steps
            self.optimizer.zero_grad(set_to_none=True)
            return self._fallback(f"non-finite loss or gradient: {name} step skipped")
        kept = None
        if keep_gradient:
            params = [p for p in unwrap(self.network).parameters() if p.requires_grad]
            kept = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return kept

    # ------------------------------------------------------------------ logging and checkpoints
    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        with warnings.catch_warnings():  # warm-up epochs have no DALE statistics: NaN, without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            means = {k: float(np.nanmean(outputs[k])) for k in DALE_STATS}
            if self.is_ddp:
                gathered: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, means)
                means = {k: float(np.nanmean([g[k] for g in gathered])) for k in DALE_STATS}
        for key, value in means.items():
            self.logger.log(key, value, self.current_epoch)
        self.print_to_log_file("DALE " + ", ".join(f"{DALE_STATS[k]} {np.round(v, 4)}" for k, v in means.items()))
        if self.dale_fallbacks:
            counts = ", ".join(f"{what}: {n}" for what, n in sorted(self.dale_fallbacks.items()))
            self.print_to_log_file(f"DALE fallbacks this epoch ({len(train_outputs)} iterations): {counts}")
        self.dale_fallbacks.clear()

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's resume, refusing a checkpoint written under another DALE configuration (unless overridden)."""
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):  # memory-mapped: only the logging entry is read here
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        changed = self._config_changes(checkpoint)
        if changed is not None and not _allowed(ALLOW_CONFIG_CHANGE):
            self._refuse(
                f"this checkpoint was written under a different DALE configuration ({changed}). Resume with the same "
                f"settings, or set {ALLOW_CONFIG_CHANGE}=1 to continue with the current ones "
                f"({self.dale_record()})."
            )
        super().load_checkpoint(filename_or_checkpoint)
        self.dale_resumed = True

    def on_train_start(self):
        """nnU-Net's start of training; a fresh start (no --c) first refuses to overwrite the checkpoints of a run made
        with other DALE settings in the same result folder."""
        if not self.dale_resumed:
            self.check_result_folder()
        super().on_train_start()

    def check_result_folder(self) -> None:
        """DALEConfigError if this fold's folder holds a checkpoint written under another DALE configuration: a fresh
        start would overwrite it (nnU-Net starts over without --c). Overridden by NNUNET_DALE_ALLOW_CONFIG_CHANGE=1."""
        if _allowed(ALLOW_CONFIG_CHANGE):
            return
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
            path = os.path.join(self.output_folder, name)
            if not os.path.isfile(path):
                continue
            changed = self._config_changes(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
            if changed is not None:
                self._refuse(
                    f"{path} was written under another DALE configuration ({changed}) and a fresh start would "
                    "overwrite it. Train the new settings under another trainer class, plans (-p) or nnUNet_results "
                    f"folder, or set {ALLOW_CONFIG_CHANGE}=1 to overwrite it (docs/usage.md)."
                )

    def print_to_log_file(self, *args: Any, **kwargs: Any) -> None:
        """nnU-Net's log line; the first one notes whether it starts a new log file (removed again by `_refuse`)."""
        if self._log_is_new is None:
            self._log_is_new = not os.path.exists(self.log_file)
        super().print_to_log_file(*args, **kwargs)

    def _refuse(self, message: str) -> NoReturn:
        """Raise a refusal as a DALEConfigError (the terminal shows it); the log file this start began is removed
        first, so that a refused start leaves the result folder as it was."""
        if self._log_is_new and self.local_rank == 0 and os.path.isfile(self.log_file):
            os.remove(self.log_file)
        raise DALEConfigError(message)

    def _config_changes(self, checkpoint: dict) -> str | None:
        """How a checkpoint's DALE settings differ from this trainer's record (None: the same), read in this
        version's fields (`config.read_record`: an older checkpoint's missing and retired fields)."""
        saved = checkpoint.get("logging", {}).get(CONFIG_KEY)
        if saved is None:
            return "none: not a DALE checkpoint"
        saved = read_record(saved)
        current = self.dale_record()
        changed = sorted(k for k in set(current) | set(saved) if saved.get(k) != current.get(k))
        return ("changed: " + ", ".join(changed)) if changed else None


def _split_patch_size(config: DALEConfig, plans: dict, configuration: str) -> tuple[int, ...]:
    """The split's patch size for a configuration of `plans` (config.resolve_patch_size), read from the plans alone."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans).get_configuration(configuration)
    return resolve_patch_size(config, manager.patch_size, manager.spacing)


def _allowed(variable: str) -> bool:
    return os.environ.get(variable, "0").strip().lower() in ("1", "true", "yes")


class _NoFeatures:
    value = None


_NO_FEATURES = _NoFeatures()
