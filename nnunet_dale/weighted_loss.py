"""nnU-Net's Dice + CE (or Dice + BCE for region-based plans) with a per-voxel weight map (Eq. 7 as loss weights).

With every weight equal to 1 these equal nnU-Net's `DC_and_CE_loss` / `DC_and_BCE_loss` with
`MemoryEfficientSoftDiceLoss` (tested). The Dice is written out here rather than taken from nnU-Net because
nnU-Net computes the reference volume of a masked Dice under `no_grad`, which would hide the weights' effect on the
denominator from autograd — and DALE differentiates the loss with respect to the weights (Eq. 10-11).
Deep supervision: wrap in nnU-Net's `DeepSupervisionWrapper` and pass one weight map per output, made by
`weight_pyramid`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn

__all__ = [
    "PixelWeightedDCandBCE",
    "PixelWeightedDCandCE",
    "pixel_weighted_loss",
    "weight_pyramid",
    "weighted_mean",
    "weighted_soft_dice",
]


def weighted_soft_dice(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    weight: torch.Tensor,
    batch_dice: bool,
    smooth: float = 1e-5,
    ddp: bool = False,
) -> torch.Tensor:
    """Negative soft Dice of nnU-Net's MemoryEfficientSoftDiceLoss with voxel weights inside every sum."""
    axes = tuple(range(2, probs.ndim))
    acc = torch.promote_types(probs.dtype, torch.float32)  # fp16 under autocast: sum in fp32, as nnU-Net does
    intersect = (probs * onehot * weight).sum(axes, dtype=acc)
    sum_pred = (probs * weight).sum(axes, dtype=acc)
    sum_gt = (onehot * weight).sum(axes, dtype=acc)
    if batch_dice:
        if ddp:
            intersect, sum_pred, sum_gt = (AllGatherGrad.apply(t).sum(0) for t in (intersect, sum_pred, sum_gt))
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return -dice.mean()


def _loss_weights(
    weight: torch.Tensor,
    normaliser: torch.Tensor | None,
    dice_weight: torch.Tensor | None,
    known: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE weight, CE normaliser, Dice weight): the latter two default to `weight`; all zero where not `known`."""
    weights = (weight, weight if normaliser is None else normaliser, weight if dice_weight is None else dice_weight)
    return weights if known is None else tuple(w * known for w in weights)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """Sum of weight * values divided by the total of `normaliser` (clamped away from 0)."""
    return (values * weight).sum() / normaliser.sum().clamp_min(1e-8)


class PixelWeightedDCandCE(nn.Module):
    """Dice + CE on integer labels (B, 1, *spatial) with voxel weights (B, 1, *spatial)."""

    def __init__(
        self,
        batch_dice: bool,
        do_bg: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
        ignore_label: int | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
    ):
        super().__init__()
        self.batch_dice, self.do_bg, self.smooth, self.ddp = batch_dice, do_bg, smooth, ddp
        self.ignore_label = ignore_label
        self.weight_ce, self.weight_dice = weight_ce, weight_dice
        self.ce = RobustCrossEntropyLoss(reduction="none")

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        normaliser: torch.Tensor | None = None,
        dice_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CE is the weighted sum over voxels divided by the total of `normaliser` (default: `weight`); the Dice
        weighs its voxels by `dice_weight` (default: `weight`)."""
        known = None if self.ignore_label is None else target != self.ignore_label
        weight, normaliser, dice_weight = _loss_weights(weight, normaliser, dice_weight, known)
        if known is not None:
            target = torch.where(known, target, 0)
        onehot = torch.zeros_like(logits).scatter_(1, target.long(), 1)
        start = 0 if self.do_bg else 1
        probs = torch.softmax(logits, 1)[:, start:]
        dice = weighted_soft_dice(probs, onehot[:, start:], dice_weight, self.batch_dice, self.smooth, self.ddp)
        ce = weighted_mean(self.ce(logits, target), weight[:, 0], normaliser)
        return self.weight_ce * ce + self.weight_dice * dice


class PixelWeightedDCandBCE(nn.Module):
    """Dice + BCE on region masks (B, R, *spatial) with voxel weights (B, 1, *spatial) (region-based plans).

    With an ignore label nnU-Net appends it as the last target channel; those voxels get weight 0.
    """

    def __init__(
        self,
        batch_dice: bool,
        smooth: float = 1e-5,
        ddp: bool = False,
        use_ignore_label: bool = False,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
    ):
        super().__init__()
        self.batch_dice, self.smooth, self.ddp = batch_dice, smooth, ddp
        self.use_ignore_label = use_ignore_label
        self.weight_ce, self.weight_dice = weight_ce, weight_dice

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        normaliser: torch.Tensor | None = None,
        dice_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        known = ~target[:, -1:].bool() if self.use_ignore_label else None
        weight, normaliser, dice_weight = _loss_weights(weight, normaliser, dice_weight, known)
        if known is not None:
            target = target[:, :-1]
        target = target.float()
        dice = weighted_soft_dice(torch.sigmoid(logits), target, dice_weight, self.batch_dice, self.smooth, self.ddp)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        ce = weighted_mean(bce, weight, normaliser) / logits.shape[1]
        return self.weight_ce * ce + self.weight_dice * dice


def weight_pyramid(weight: torch.Tensor, targets: torch.Tensor | Sequence[torch.Tensor]):
    """Resample a voxel weight map to every deep-supervision target's size (area averaging), like the targets."""
    if isinstance(targets, torch.Tensor):
        return weight
    return [
        weight if t.shape[2:] == weight.shape[2:] else F.interpolate(weight, t.shape[2:], mode="area") for t in targets
    ]


def pixel_weighted_loss(label_manager, batch_dice: bool, ddp: bool = False) -> nn.Module:
    """The pixel-weighted twin of the loss nnU-Net builds for these labels (without deep supervision): Dice + BCE for
    region-based labels, else Dice + CE without background in the Dice; smooth 1e-5 and the ignore label as nnU-Net
    sets them. The trainer and the audit both build their loss here."""
    common = {"batch_dice": batch_dice, "smooth": 1e-5, "ddp": ddp}
    if label_manager.has_regions:
        return PixelWeightedDCandBCE(**common, use_ignore_label=label_manager.ignore_label is not None)
    return PixelWeightedDCandCE(**common, do_bg=False, ignore_label=label_manager.ignore_label)
