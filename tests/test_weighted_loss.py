"""The pixel-weighted loss equals nnU-Net's own loss at unit weights and differentiates correctly in the weights."""

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_dale.weighted_loss import PixelWeightedDCandBCE, PixelWeightedDCandCE, weight_pyramid


def nnunet_ce_loss(batch_dice, ignore_label=None):
    return DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=ignore_label,
        dice_class=MemoryEfficientSoftDiceLoss,
    )


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("spatial", [(16, 20), (6, 8, 10)])
def test_unit_weights_equal_nnunet_dc_and_ce(batch_dice, spatial):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, *spatial, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 1, *spatial)).double()
    ours = PixelWeightedDCandCE(batch_dice=batch_dice)(logits, target, torch.ones_like(target))
    ref = nnunet_ce_loss(batch_dice)(logits, target)
    assert torch.allclose(ours, ref, atol=1e-10)


def test_binary_weights_equal_nnunet_ignore_label():
    """A 0/1 weight map behaves like nnU-Net's ignore label on the same voxels."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 12, 12)).double()
    ignored = torch.rand(2, 1, 12, 12) < 0.3
    ref = nnunet_ce_loss(True, ignore_label=3)(logits, torch.where(ignored, 3.0, target).double())
    ours = PixelWeightedDCandCE(batch_dice=True)(logits, target, (~ignored).double())
    assert torch.allclose(ours, ref, atol=1e-10)
    ours_ignore = PixelWeightedDCandCE(batch_dice=True, ignore_label=3)(
        logits, torch.where(ignored, 3.0, target).double(), torch.ones_like(target)
    )
    assert torch.allclose(ours_ignore, ref, atol=1e-10)


def test_unit_weights_equal_nnunet_regions_bce():
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 10, 10, dtype=torch.float64)
    target = (torch.rand(2, 2, 10, 10) < 0.4).double()
    ref = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False})(logits, target)
    ours = PixelWeightedDCandBCE(batch_dice=False)(logits, target, torch.ones(2, 1, 10, 10, dtype=torch.float64))
    assert abs(ours.item() - ref.item()) < 1e-6  # nnU-Net computes this one in float32


def test_deep_supervision_pyramid_with_nnunet_wrapper():
    torch.manual_seed(3)
    shapes = [(16, 16), (8, 8), (4, 4)]
    outputs = [torch.randn(2, 3, *s, dtype=torch.float64) for s in shapes]
    full = torch.randint(0, 3, (2, 1, 16, 16)).double()
    targets = [full[..., :: 16 // s[0], :: 16 // s[1]] for s in shapes]
    weights = (1.0, 0.5, 0.0)
    ref = DeepSupervisionWrapper(nnunet_ce_loss(True), weights)(outputs, targets)
    pyramid = weight_pyramid(torch.ones(2, 1, 16, 16, dtype=torch.float64), targets)
    assert [tuple(p.shape[2:]) for p in pyramid] == shapes
    ours = DeepSupervisionWrapper(PixelWeightedDCandCE(batch_dice=True), weights)(outputs, targets, pyramid)
    assert torch.allclose(ours, ref, atol=1e-10)
    # area resampling: a patch-constant map keeps its block means
    w = torch.zeros(1, 1, 16, 16)
    w[..., :8, :] = 1.0
    np.testing.assert_allclose(weight_pyramid(w, targets)[1][0, 0, :4, 0].numpy(), 1.0)


def test_weight_gradient_matches_finite_differences():
    """DALE differentiates the loss in the weights (Eq. 10-11): autograd must see every use of them."""
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 6, 6)).double()
    norm = torch.rand(2, 1, 6, 6, dtype=torch.float64) + 0.5
    loss = PixelWeightedDCandCE(batch_dice=True)
    w = (torch.rand(2, 1, 6, 6, dtype=torch.float64) + 0.5).requires_grad_()
    (grad,) = torch.autograd.grad(loss(logits, target, w, norm), w)
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 0, 3, 2), (0, 0, 5, 5)]:
        plus, minus = w.detach().clone(), w.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (loss(logits, target, plus, norm) - loss(logits, target, minus, norm)) / (2 * eps)
        assert abs(fd.item() - grad[idx].item()) < 1e-7
