"""Generalised cross-entropy (nnunet_dale.robust_loss) against a per-pixel loop and its q -> 0 limit, and
nnUNetTrainer_GCE's loss built against the installed nnU-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.trainers import study_trainers
from nnunet_dale import variants
from nnunet_dale.robust_loss import GeneralisedCrossEntropy, generalised_cross_entropy
from nnunet_dale.variants import nnUNetTrainer_GCE

from conftest import build


def loop_gce(logits: np.ndarray, target: np.ndarray, q: float, ignore: int | None = None) -> float:
    """(1 - p_y^q) / q pixel by pixel, with the softmax written out, averaged over the pixels not ignored."""
    batch, classes, height, width = logits.shape
    total, count = 0.0, 0
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                y = int(target[b, i, j])
                if y == ignore:
                    continue
                exps = [math.exp(logits[b, c, i, j]) for c in range(classes)]
                p = exps[y] / sum(exps)
                total += (1 - p**q) / q
                count += 1
    return total / count


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 4), generator=generator)
    return logits, target


@pytest.mark.parametrize("q", [0.7, 0.3, 1.0])
def test_matches_a_per_pixel_loop(data, q):
    logits, target = data
    expected = loop_gce(logits.numpy(), target.numpy(), q)
    assert generalised_cross_entropy(logits, target, q).item() == pytest.approx(expected, rel=1e-12)
    # nnU-Net's target layout: (B, 1, ...) floats
    as_nnunet = target[:, None].double()
    assert GeneralisedCrossEntropy(q)(logits, as_nnunet).item() == pytest.approx(expected, rel=1e-12)


def test_ignored_voxels_leave_the_mean(data):
    logits, target = data
    target = target.clone()
    target[0, :2] = 7  # an ignore label beyond the classes
    expected = loop_gce(logits.numpy(), target.numpy(), 0.7, ignore=7)
    assert generalised_cross_entropy(logits, target, 0.7, ignore_index=7).item() == pytest.approx(expected, rel=1e-12)
    everything = torch.full_like(target, 7)
    assert generalised_cross_entropy(logits, everything, 0.7, ignore_index=7).item() == 0


def test_tends_to_cross_entropy_as_q_goes_to_zero_and_is_bounded_by_one_over_q(data):
    logits, target = data
    ce = F.cross_entropy(logits, target).item()
    gaps = [abs(generalised_cross_entropy(logits, target, q).item() - ce) for q in (1e-2, 1e-4, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5 * ce
    hopeless = torch.tensor([[[[-30.0]], [[30.0]]]], dtype=torch.float64)  # p_y ~ e^-60 for label 0
    label = torch.zeros(1, 1, 1, dtype=torch.long)
    assert generalised_cross_entropy(hopeless, label, 0.7).item() == pytest.approx(1 / 0.7)  # CE would be 60
    assert F.cross_entropy(hopeless, label).item() == pytest.approx(60)
    for q in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="0 < q <= 1"):
            GeneralisedCrossEntropy(q)


def test_the_trainer_swaps_only_the_ce_term_of_nnunets_loss(dataset_2d, batch):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    gce = build(nnUNetTrainer_GCE, dataset_2d, initialize=False)._build_loss()
    default = build(nnUNetTrainer, dataset_2d, initialize=False)._build_loss()
    assert isinstance(gce, DeepSupervisionWrapper) and isinstance(gce.loss, DC_and_CE_loss)
    assert isinstance(gce.loss.ce, GeneralisedCrossEntropy) and gce.loss.ce.q == 0.7
    assert isinstance(default.loss.ce, RobustCrossEntropyLoss)
    assert gce.weight_factors == default.weight_factors  # nnU-Net's deep-supervision weights
    targets = batch["target"]
    torch.manual_seed(0)
    outputs = [torch.randn(t.shape[0], 2, *t.shape[2:]) for t in targets]
    # the total differs from nnU-Net's by the CE terms only: sum_k w_k (GCE_k - CE_k)
    expected = sum(
        w * (generalised_cross_entropy(o, t, 0.7) - F.cross_entropy(o, t[:, 0].long()))
        for w, o, t in zip(default.weight_factors, outputs, targets)
        if w
    )
    assert (gce(outputs, targets) - default(outputs, targets)).item() == pytest.approx(expected.item(), abs=1e-5)


def test_the_bench_twin_is_gce_on_the_study_schedule():
    bench, twin = study_trainers.nnUNetTrainer_bench, study_trainers.nnUNetTrainer_GCE_bench
    assert issubclass(twin, nnUNetTrainer_GCE)
    assert (twin.epochs, twin.iterations, twin.val_iterations) == (bench.epochs, bench.iterations, bench.val_iterations)
    assert "nnUNetTrainer_GCE" in variants.__all__  # the package's trainers/ exposes __all__
    assert "nnUNetTrainer_GCE_bench" in study_trainers.__all__
