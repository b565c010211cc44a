"""The validity study's fixes (config fields beyond the paper's literal reading), each against an independent
reference or a planted defect: the split patch on a planted lesion, the scale-free and bounded L_W, the running
target Gaussians, the normalised omega on planted flipped labels, the single update, the real-image passes and the
warm-up against nnU-Net's own step."""

import numpy as np
import pytest
import torch
from test_confidence import TinyNet

from benchmarks.trainers.study_trainers import (
    nnUNetTrainerDALE_imageDice,
    nnUNetTrainerDALE_omegaMedian,
    nnUNetTrainerDALE_omegaShuffled,
    nnUNetTrainerDALE_realImage,
    nnUNetTrainerDALE_singleUpdate,
    nnUNetTrainerDALE_strongOmega,
)
from nnunet_dale.alignment import ClassGaussians, alignment_loss, class_gaussians, pooled_gaussians
from nnunet_dale.confidence import (
    Confidence,
    adam_on_omega,
    class_medians,
    learn_confidence,
    normalised_hypergradient,
    shuffled_within_classes,
)
from nnunet_dale.config import SHIPPED, DALEConfig, DALEConfigError, load_config, patches_per_side, resolve_patch_size
from nnunet_dale.split import fuzzy_split
from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import nnUNetTrainerDALE_paper
from nnunet_dale.weighted_loss import PixelWeightedDCandCE, weight_pyramid

from conftest import build, copy_batch


# ------------------------------------------------------------------ split patch
def planted_lesion(size=64, radius=18):
    """A flat dark disc on flat skin with mild noise, and its label: core, rim and skin are known by construction."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    label = (r < radius).float()[None, None]
    image = (1 - 0.6 * label) + 0.02 * torch.randn(1, 1, size, size, generator=g)
    return image, label, r


def test_patches_per_side_tiles_the_network_patch():
    assert patches_per_side((64, 64), 16) == (4, 4)
    assert patches_per_side((352, 224), 16) == (22, 14)
    assert patches_per_side((40, 10, 7), 16) == (3, 1, 1)
    cfg = DALEConfig(split_patches=16)
    assert resolve_patch_size(cfg, (128, 96), (1.0, 1.0)) == (8, 6)


def test_planted_lesion_core_is_non_fuzzy_and_its_boundary_fuzzy_with_scaled_patches():
    image, label, r = planted_lesion()
    core, rim = r < 10, (r - 18).abs() < 1  # the label's boundary is the circle r = 18
    paper = fuzzy_split(image, label, (16, 16))  # the literal reading: 16 px patches on a 64 px image
    scaled = fuzzy_split(image, label, patches_per_side((64, 64), 16))
    assert float(paper.nonfuzzy[0, 0][core].mean()) < 0.5  # the defect: most of the core is not "reliable"
    assert float(scaled.nonfuzzy[0, 0][core].mean()) == 1.0
    assert float(scaled.fuzzy[0, 0][rim].mean()) > 0.8
    assert float(scaled.fuzzy[0, 0][rim].mean()) > float(scaled.fuzzy[0, 0][core].mean()) + 0.3
    assert float((scaled.nonfuzzy[0, 0][rim] == 0).double().mean()) > 0.3


# ------------------------------------------------------------------ L_W
def gaussians(features, mask):
    """Foreground/background Gaussians of (B, D, H, W) features over a (B, 1, H, W) weight."""
    membership = torch.cat([1 - (features[:, :1] * 0 + mask), mask], 1)
    return class_gaussians(features, membership, torch.ones_like(mask))


def test_trace_scaled_lw_is_free_of_the_feature_scale_and_the_plain_one_is_not():
    g = torch.Generator().manual_seed(1)
    f_n = torch.randn(2, 8, 16, 16, generator=g, dtype=torch.float64)
    f_f = 1.5 * torch.randn(2, 8, 16, 16, generator=g, dtype=torch.float64) + 0.5
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).double()

    def lw(scale, k):
        torch.manual_seed(0)
        return float(alignment_loss(gaussians(k * f_n, mask), gaussians(k * f_f, mask), scale=scale, ridge=1e-12).loss)

    assert lw("trace", 100.0) == pytest.approx(lw("trace", 1.0), rel=1e-6)
    assert lw("none", 100.0) == pytest.approx(1e4 * lw("none", 1.0), rel=1e-6)


def test_lw_gradient_stays_bounded_on_a_thin_sample_batch():
    """Fuzzy foreground of 20 voxels with 32 feature channels (rank-deficient covariance): the paper's settings give a
    gradient orders of magnitude above a well-sampled batch's; the minimum mass per dimension skips the class."""
    g = torch.Generator().manual_seed(2)
    d = 32
    f_n = torch.randn(1, d, 32, 32, generator=g, dtype=torch.float64)
    f_f = (2 * torch.randn(1, d, 32, 32, generator=g, dtype=torch.float64)).requires_grad_()
    thin = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    thin[..., :4, :5] = 1  # 20 voxels of class 1 in the fuzzy sample
    wide = (torch.rand(1, 1, 32, 32, generator=g) > 0.5).double()

    def grad_norm(fuzzy_mask, **kw):
        f_f.grad = None
        loss = alignment_loss(gaussians(f_n, wide), gaussians(f_f, fuzzy_mask), **kw).loss
        loss.backward()
        return float(f_f.grad.norm()), float(loss)

    well, _ = grad_norm(wide, scale="trace")
    paper, _ = grad_norm(thin)
    fixed, fixed_loss = grad_norm(thin, scale="trace", min_mass=4.0 * d)
    assert paper > 20 * well
    assert fixed <= 2 * well and fixed_loss < 1e3


def test_pooled_gaussians_follow_an_exponential_average_and_keep_classes_a_batch_lacks():
    d = 3
    rng = np.random.default_rng(0)
    running = None
    ref_mean, ref_cov, seen = np.zeros((2, d)), np.zeros((2, d, d)), np.zeros(2, bool)
    for step in range(5):
        mean, cov = rng.normal(size=(2, d)), rng.normal(size=(2, d, d))
        mass = np.array([50.0, 50.0 if step % 2 == 0 else 3.0])  # class 1 too thin in odd steps
        batch = ClassGaussians(torch.tensor(mean), torch.tensor(cov), torch.tensor(mass))
        running = pooled_gaussians(running, batch, momentum=0.9, min_mass=8.0)
        for c in range(2):  # slow loop
            if mass[c] >= 8:
                keep = 0.9 if seen[c] else 0.0
                ref_mean[c] = keep * ref_mean[c] + (1 - keep) * mean[c]
                ref_cov[c] = keep * ref_cov[c] + (1 - keep) * cov[c]
                seen[c] = True
        np.testing.assert_allclose(running.mean.numpy(), ref_mean, rtol=1e-12)
        np.testing.assert_allclose(running.cov.numpy(), ref_cov, rtol=1e-12)
    assert float(running.mass[1]) == 150.0 and float(running.mass[0]) == 250.0


# ------------------------------------------------------------------ omega
def test_normalised_hypergradient_matches_a_slow_loop():
    g = torch.Generator().manual_seed(3)
    hyper = 1e-9 * torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    fuzzy = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.rand(2, 1, 6, 6, generator=g) > 0.6
    membership = torch.cat([~labels, labels], 1).double()
    out = normalised_hypergradient(hyper, fuzzy, membership).numpy().ravel()
    h, w, lab = hyper.numpy().ravel(), fuzzy.numpy().ravel(), labels.numpy().ravel()
    centred = h.copy()
    for c in (False, True):
        centred[lab == c] -= np.sum(w[lab == c] * h[lab == c]) / np.sum(w[lab == c])
    expected = centred / np.sqrt(np.sum(w * centred**2) / np.sum(w))
    np.testing.assert_allclose(out, expected, rtol=1e-10)


def test_class_medians_match_a_slow_weighted_median():
    """The weighted median per class against a loop over sorted values; a class without weight gets 0."""
    g = torch.Generator().manual_seed(5)
    values = torch.randn(2, 1, 5, 7, generator=g, dtype=torch.float64)
    weights = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    weights[:, 2] = 0.0
    medians = class_medians(values, weights).numpy()
    v = values.numpy().ravel()
    for c in (0, 1):
        w = weights[:, c].numpy().ravel()
        half = w.sum() / 2
        expected = min(x for x in v if w[v <= x].sum() >= half)  # smallest value with half the weight at or below
        assert medians[c] == expected
    assert medians[2] == 0.0


def test_median_centring_gives_each_class_equal_weight_up_and_down():
    """Skewed hypergradients (most voxels slightly positive, a few far negative): mean centring leaves most voxels
    on one side, so a one-step omega's class mean moves off 1; median centring splits each class's weight evenly."""
    g = torch.Generator().manual_seed(7)
    hyper = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    hyper[..., :2] = -8.0  # a quarter of the voxels far below the rest
    fuzzy = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    labels[..., 4:, :] = True
    membership = torch.cat([~labels, labels], 1).double()
    for centre, balanced in (("mean", False), ("median", True)):
        out = normalised_hypergradient(hyper, fuzzy, membership, centre)
        for c in (False, True):
            share_up = float((out[labels == c] < 0).double().mean())  # negative hypergradient: omega goes up
            share_down = float((out[labels == c] > 0).double().mean())
            assert (abs(share_up - share_down) <= 1 / 32) == balanced, (centre, share_up, share_down)
    median_centred = lambda h: normalised_hypergradient(h, fuzzy, membership, "median")  # noqa: E731
    conf = adam_on_omega(hyper.shape, hyper, 0.1, 1, lambda _: hyper, median_centred)
    for c in (False, True):
        assert float(conf.omega[labels == c].mean()) == pytest.approx(1.0, abs=0.1 / 16)


def planted_flips(transform=None, lr=0.1):
    """The sign test's set-up (test_confidence): labels flipped in a known part of the fuzzy region."""
    torch.manual_seed(0)
    net = TinyNet().double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    clean_labels = (x > 0).double()
    m_f = torch.zeros(4, 1, 16, 16, dtype=torch.float64)
    m_f[..., 8:] = 1.0
    flipped = torch.zeros_like(m_f, dtype=torch.bool)
    flipped[..., 12:] = True
    labels = torch.where(flipped, 1 - clean_labels, clean_labels)
    loss = PixelWeightedDCandCE(batch_dice=True)
    membership = torch.cat([1 - labels, labels], 1)

    def forward(params, inp):
        return torch.func.functional_call(net, params, (inp,))

    conf = learn_confidence(
        forward, dict(net.named_parameters()), x * m_f, x * (1 - m_f),
        lambda out, omega: loss(out, labels, omega * m_f, m_f), lambda out: loss(out, labels, 1 - m_f), m_f.shape,
        shadow_lr=1e-7, lr=lr, transform=None if transform is None else (lambda h: transform(h, m_f, membership)),
    )  # fmt: skip
    return conf, flipped, m_f, labels


def test_normalised_omega_puts_planted_flips_measurably_below_one_within_each_class():
    """At a small learning rate (the end of nnU-Net's poly schedule) the raw hypergradient sinks below Adam's eps
    and omega barely moves; normalised, the flips get omega ~0.9 in both classes and omega's class means stay 1."""
    raw, flipped, m_f, labels = planted_flips()
    assert float((raw.omega[m_f > 0] - 1).abs().median()) < 0.01  # the inert omega the study measured
    conf, *_ = planted_flips(normalised_hypergradient)
    fuzzy = m_f > 0
    for c in (0, 1):
        in_class = labels == c
        assert float(conf.omega[flipped & in_class].mean()) < 0.95
        assert float(conf.omega[fuzzy & ~flipped & in_class].mean()) > 1.0
        assert float((conf.update[fuzzy & in_class] > 0).double().mean()) == pytest.approx(0.5, abs=0.2)
    assert float(conf.noisy[flipped].double().mean()) > 0.8


def test_strong_omega_moves_planted_flips_three_times_as_far_as_the_shipped_one():
    """A one-step omega is Adam's first step, 1 - lr * g / (|g| + eps) on the normalised hypergradient g (written
    out here, not torch's Adam): the strong variant's lr puts most planted flips at 0.7, on the mean three times as
    far from 1 as the shipped lr 0.1."""
    lr = DALEConfig(**nnUNetTrainerDALE_strongOmega.dale_defaults).omega_lr
    strong, flipped, m_f, labels = planted_flips(normalised_hypergradient, lr=lr)
    shipped, *_ = planted_flips(normalised_hypergradient, lr=SHIPPED.omega_lr)
    g = normalised_hypergradient(strong.hypergradient, m_f, torch.cat([1 - labels, labels], 1))
    torch.testing.assert_close(strong.omega, 1 - lr * g / (g.abs() + 1e-8))
    assert lr == pytest.approx(0.3)
    assert float(strong.omega[flipped].median()) == pytest.approx(0.7)  # most flips judged noisy, at 1 - lr
    distance = float((1 - strong.omega[flipped]).mean()) / float((1 - shipped.omega[flipped]).mean())
    assert distance == pytest.approx(3.0, rel=0.02)


def test_shuffled_omega_keeps_each_class_values_but_loses_the_planted_flips():
    """The control permutes omega* (and its update, pairwise) within each class's fuzzy voxels: per class the sorted
    values equal the unshuffled ones, voxels outside the fuzzy region keep theirs, and the planted flips, clearly
    below one before, sit at their class's mean afterwards."""
    conf, flipped, m_f, labels = planted_flips(normalised_hypergradient)
    membership = torch.cat([labels == 0, labels == 1], 1).double()
    torch.manual_seed(0)
    shuffled = shuffled_within_classes(conf, m_f, membership)
    fuzzy = m_f > 0
    assert torch.equal(shuffled.omega[~fuzzy], conf.omega[~fuzzy])
    assert torch.equal(shuffled.update[~fuzzy], conf.update[~fuzzy])
    for c in (0, 1):
        voxels = fuzzy & (labels == c)
        before = sorted(zip(conf.omega[voxels].tolist(), conf.update[voxels].tolist()))
        assert sorted(zip(shuffled.omega[voxels].tolist(), shuffled.update[voxels].tolist())) == before
        flips = flipped & (labels == c)
        assert float(conf.omega[flips].mean()) < 0.95
        assert float(shuffled.omega[flips].mean()) == pytest.approx(float(conf.omega[voxels].mean()), abs=0.03)
    assert shuffled.threshold == conf.threshold


# ------------------------------------------------------------------ trainer
def test_config_rejects_bad_fix_settings():
    for bad in (
        {"split_patches": -1},
        {"split_patches": 8, "patch_size": (4, 4)},
        {"lw_scale": "dim"},
        {"target_momentum": 1.0},
        {"warmup_fraction": 1.0},
        {"clean_threshold": -0.1},
        {"single_update": True, "omega_mode": "fast"},
    ):
        with pytest.raises(DALEConfigError):
            DALEConfig(**bad)
    assert load_config(SHIPPED, environ={"NNUNET_DALE_SPLIT_PATCHES": "8"}).split_patches == 8


def test_single_update_is_one_sgd_step_on_the_mean_of_both_losses(dataset_2d, batch, monkeypatch):
    """With omega = 1 and no L_W the single update is one SGD step on (L_n + L_f) / 2 of the real image: compare
    with that step written out on a twin network, and count the optimiser steps."""
    monkeypatch.setenv("NNUNET_DALE_USE_OMEGA", "0")
    monkeypatch.setenv("NNUNET_DALE_USE_ALIGNMENT", "0")
    monkeypatch.setenv("NNUNET_DALE_MASK_INPUT", "0")
    torch.manual_seed(0)
    trainer, twin = build(nnUNetTrainerDALE_singleUpdate, dataset_2d), build(nnUNetTrainerDALE_singleUpdate, dataset_2d)
    twin.network.load_state_dict(trainer.network.state_dict())
    steps = []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: steps.append(1) or step(*a, **k))
    trainer.train_step(copy_batch(batch))
    assert len(steps) == 1

    data, target = batch["data"], batch["target"]
    split = twin.split(data, target[0])
    out = twin.network(data)
    loss = 0.5 * (
        twin.dale_loss(out, target, weight_pyramid(split.nonfuzzy, target))
        + twin.dale_loss(out, target, weight_pyramid(split.fuzzy, target), weight_pyramid(split.fuzzy, target))
    )
    twin.optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.network.parameters(), 12)
    twin.optimizer.step()
    for p, q in zip(trainer.network.parameters(), twin.network.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_image_dice_update_is_the_regions_ce_plus_nnunets_own_dice(dataset_2d, batch, monkeypatch):
    """dice_scope "image", omega = 1, no L_W: one SGD step on sum_k w_k [(CE_n + CE_f) / 2 + nnU-Net's Dice] at every
    deep-supervision scale, CE written out by hand and the Dice taken from nnU-Net's own loss; the per-region Dice
    of the shipped update is a different step."""
    monkeypatch.setenv("NNUNET_DALE_USE_OMEGA", "0")
    monkeypatch.setenv("NNUNET_DALE_USE_ALIGNMENT", "0")
    torch.manual_seed(0)
    trainers = [build(cls, dataset_2d) for cls in (nnUNetTrainerDALE_imageDice, nnUNetTrainerDALE)]
    twin = build(nnUNetTrainerDALE_imageDice, dataset_2d)
    for t in trainers:
        t.network.load_state_dict(twin.network.state_dict())
        t.current_epoch = 100  # past the warm-up
        t.train_step(copy_batch(batch))

    data, target = batch["data"], batch["target"]
    split = twin.split(data, target[0])
    outputs = twin.network(data)
    dice = twin.loss.loss.dc  # nnU-Net's MemoryEfficientSoftDiceLoss inside its DeepSupervisionWrapper
    loss = 0
    for w, out, t in zip(twin.loss.weight_factors, outputs, target):
        if w == 0:
            continue
        ce = torch.nn.functional.cross_entropy(out, t[:, 0].long(), reduction="none")[:, None]
        n, f = (torch.nn.functional.interpolate(m, t.shape[2:], mode="area") for m in (split.nonfuzzy, split.fuzzy))
        loss = loss + w * (0.5 * ((n * ce).sum() / n.sum() + (f * ce).sum() / f.sum()) + dice(out, t))
    twin.optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.network.parameters(), 12)
    twin.optimizer.step()
    image, region = trainers
    for p, q in zip(image.network.parameters(), twin.network.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert max((p - q).abs().max() for p, q in zip(region.network.parameters(), twin.network.parameters())) > 1e-5


def test_image_dice_needs_the_single_update(dataset_2d, monkeypatch):
    """The study's image Dice is a Dice of the single update over both regions: with two steps it is refused at
    initialisation (the field dice_scope it replaced refused the same setting), and it records itself as 0.2 did."""
    assert build(nnUNetTrainerDALE_imageDice, dataset_2d).dale_record() == {**SHIPPED.to_dict(), "dice_scope": "image"}
    monkeypatch.setenv("NNUNET_DALE_SINGLE_UPDATE", "0")
    trainer = build(nnUNetTrainerDALE_imageDice, dataset_2d, initialize=False)
    with pytest.raises(DALEConfigError, match="needs single_update true"):
        trainer.initialize()


def test_real_image_passes_see_the_unmasked_batch(dataset_2d, batch):
    seen = {}
    for cls in (nnUNetTrainerDALE_paper, nnUNetTrainerDALE_realImage):
        trainer = build(cls, dataset_2d)
        inputs = []
        trainer.network.register_forward_pre_hook(lambda _m, args, inputs=inputs: inputs.append(args[0].clone()))
        trainer.train_step(copy_batch(batch))
        seen[cls] = inputs
    data = batch["data"]
    assert len(seen[nnUNetTrainerDALE_realImage]) >= 2  # the passes and the lookahead's functional forwards
    assert all(torch.equal(x, data) for x in seen[nnUNetTrainerDALE_realImage])
    assert not any(torch.equal(x, data) for x in seen[nnUNetTrainerDALE_paper])


def test_shuffled_variant_trains_on_the_shuffled_omega(dataset_2d, batch, monkeypatch):
    """The control's omega and update (planted here: omega 0.5; the update kept, then every voxel noisy) are the ones
    the fuzzy step, L_W's clean mask and the statistics see: L_W is > 0 with clean voxels and 0 without."""
    calls, noisy = [], []

    def planted(confidence, weight, membership):
        calls.append(membership.shape[1])
        update = torch.full_like(confidence.omega, -1) if noisy else confidence.update
        return Confidence(omega=torch.full_like(confidence.omega, 0.5), update=update)

    monkeypatch.setattr("benchmarks.trainers.study_trainers.shuffled_within_classes", planted)
    trainer = build(nnUNetTrainerDALE_omegaShuffled, dataset_2d)
    assert trainer.dale_record()["omega_shuffle"] is True  # recorded as 0.2 recorded its config field
    trainer.current_epoch = 999  # past the warm-up
    kept = trainer.train_step(copy_batch(batch))
    noisy.append(True)
    none_clean = trainer.train_step(copy_batch(batch))
    assert calls == [2, 2] and float(kept["dale_mean_omega"]) == pytest.approx(0.5)
    assert float(kept["dale_l_w"]) > 0 and float(kept["dale_noisy_share"]) < 1
    assert float(none_clean["dale_l_w"]) == 0 and float(none_clean["dale_noisy_share"]) == 1


def test_median_variant_centres_the_hypergradient_on_each_class_median(dataset_2d, batch):
    """The study's _omegaMedian hands omega's hypergradient to the per-class normalisation with the weighted median as
    the centre, where the shipped trainer takes the mean, and records it as 0.2 recorded its config field."""
    median, shipped = (
        build(cls, dataset_2d, initialize=False) for cls in (nnUNetTrainerDALE_omegaMedian, nnUNetTrainerDALE)
    )
    target = batch["target"][0]
    split, membership = shipped.split(batch["data"], target), shipped._membership(target)
    g = torch.rand(split.fuzzy.shape, generator=torch.Generator().manual_seed(0)) ** 4  # skewed: median < mean
    by_median, by_mean = median._omega_transform(split, membership)(g), shipped._omega_transform(split, membership)(g)
    torch.testing.assert_close(by_median, normalised_hypergradient(g, split.fuzzy, membership, "median"))
    torch.testing.assert_close(by_mean, normalised_hypergradient(g, split.fuzzy, membership, "mean"))
    assert (by_median - by_mean).abs().max() > 1e-3
    assert median.dale_record() == {**shipped.dale_record(), "omega_centre": "median"}


def test_warmup_step_is_nnunets_own_and_logs_no_dale_statistics(dataset_2d, batch):
    torch.manual_seed(0)
    dale = build(nnUNetTrainerDALE, dataset_2d)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = build(nnUNetTrainer, dataset_2d)
    plain.network.load_state_dict(dale.network.state_dict())
    out = dale.train_step(copy_batch(batch))  # epoch 0 < 10 % of 1000 epochs
    reference = plain.train_step(copy_batch(batch))
    assert out["loss"] == pytest.approx(float(reference["loss"]), rel=1e-6)
    assert np.isnan(out["dale_mean_omega"]) and np.isnan(out["dale_l_w"])
    for p, q in zip(dale.network.parameters(), plain.network.parameters()):
        torch.testing.assert_close(p, q)
    dale.current_epoch = 100  # past the warm-up: DALE's own step, with its statistics
    out = dale.train_step(copy_batch(batch))
    assert np.isfinite(out["dale_mean_omega"]) and 0 < out["dale_omega_moved"] <= 1


def test_shipped_step_logs_diagnostics_that_match_their_definitions(dataset_2d, batch):
    trainer = build(nnUNetTrainerDALE, dataset_2d)
    trainer.current_epoch = 100
    records = {}
    confidence = trainer._confidence

    def recording(*args, **kwargs):
        records["conf"] = confidence(*args, **kwargs)
        return records["conf"]

    trainer._confidence = recording
    out = trainer.train_step(copy_batch(batch))
    conf, target = records["conf"], batch["target"][0]
    split = trainer.split(batch["data"], target)
    fg = (target > 0).double()
    fuzzy = split.fuzzy.double()
    omega = conf.omega.double()
    assert out["dale_nonfuzzy_fg_share"] == pytest.approx(float((split.nonfuzzy * fg).sum() / fg.sum()), rel=1e-5)
    assert out["dale_omega_fg"] == pytest.approx(float((omega * fuzzy * fg).sum() / (fuzzy * fg).sum()), rel=1e-5)
    noisy_bg = float((fuzzy * (1 - fg) * (omega < 1 - 0.05)).sum() / (fuzzy * (1 - fg)).sum())
    assert out["dale_noisy_bg"] == pytest.approx(noisy_bg, rel=1e-5)
    assert out["dale_omega_moved"] > 0.9  # normalised: (nearly) every fuzzy voxel moves, unlike the paper's omega
    assert np.isfinite(out["dale_grad_norm_n"]) and np.isnan(out["dale_grad_norm_f"])  # one update
    assert out["dale_mean_omega"] == pytest.approx(float((omega * fuzzy).sum() / fuzzy.sum()), rel=1e-5)
    # L_W and alpha * mean omega * L_W: against a float64 reference of their own in test_shipped_step_reference.py


# ------------------------------------------------------------------ typos and values the loader used to accept
@pytest.mark.parametrize(
    "environ,message",
    [
        ({"NNUNET_DALE_TUA": "0.8"}, "unknown environment variable NNUNET_DALE_TUA (did you mean 'NNUNET_DALE_TAU'?)"),
        ({"NNUNET_DALE_ALPHA": "inf"}, "alpha: cannot read 'inf' as a finite number"),
        ({"NNUNET_DALE_COV_PERTURBATION": "inf"}, "cov_perturbation: cannot read 'inf' as a finite number"),
        ({"NNUNET_DALE_LOOKAHEAD_STEPS": "2.5"}, "lookahead_steps: cannot read '2.5' as an integer"),
    ],
)
def test_unknown_variables_and_non_finite_numbers_are_errors(environ, message):
    with pytest.raises(DALEConfigError) as error:
        load_config(environ=environ)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"patch_size": [16.7, 16]}, "patch_size: cannot read [16.7, 16] as integers"),
        ({"lookahead_steps": True}, "lookahead_steps: cannot read True as an integer"),
        ({"tua": 0.8}, "unknown DALE hyper-parameter 'tua' (did you mean 'tau'?)"),
    ],
)
def test_json_values_of_the_wrong_type_are_errors(tmp_path, data, message):
    import json

    path = tmp_path / "dale.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DALEConfigError) as error:
        load_config(environ={"NNUNET_DALE_CONFIG": str(path)})
    assert message in str(error.value)


def test_control_variables_and_valid_values_still_load(tmp_path):
    environ = {"NNUNET_DALE_ALLOW_CONFIG_CHANGE": "1", "NNUNET_DALE_PATCH_SIZE": "8,8", "NNUNET_DALE_ALPHA": "0.1"}
    cfg = load_config(environ=environ)
    assert cfg.patch_size == (8, 8) and cfg.alpha == 0.1


def test_a_configured_patch_size_wins_over_the_shipped_patches_per_side():
    cfg = load_config(SHIPPED, environ={"NNUNET_DALE_PATCH_SIZE": "8,8"})
    assert cfg.patch_size == (8, 8) and cfg.split_patches == 0
    with pytest.raises(DALEConfigError, match="split_patches/patch_size"):
        load_config(SHIPPED, environ={"NNUNET_DALE_PATCH_SIZE": "8,8", "NNUNET_DALE_SPLIT_PATCHES": "4"})


def test_every_bench_twin_is_its_idea_on_the_study_schedule():
    """A `_bench` trainer is its idea (the class named without `_bench`, a study trainer or the package's) on the
    study's 40 x 25 schedule (10 validation iterations); a twin built on the wrong base would train another idea under
    the idea's name. The package itself holds no study trainer."""
    from benchmarks.trainers import study_trainers
    from nnunet_dale import variants

    assert [n for n in variants.__all__ if "bench" in n] == []
    twins = [n for n in study_trainers.__all__ if n.startswith("nnUNetTrainerDALE") and n.endswith("_bench")]
    assert {"nnUNetTrainerDALE_bench", "nnUNetTrainerDALE_AEonly_bench", "nnUNetTrainerDALE_ERonly_bench"} <= set(twins)
    for name in twins:
        twin, idea_name = getattr(study_trainers, name), name[: -len("_bench")]
        idea = nnUNetTrainerDALE if name == "nnUNetTrainerDALE_bench" else None
        idea = idea or getattr(study_trainers, idea_name, None) or getattr(variants, idea_name)
        assert issubclass(twin, idea) and twin.dale_defaults == idea.dale_defaults, name
        assert (twin.epochs, twin.iterations, twin.val_iterations) == (40, 25, 10), name
    longer = study_trainers.nnUNetTrainer_benchShippedTime
    assert (longer.epochs, longer.iterations, longer.val_iterations) == (100, 25, 10)
