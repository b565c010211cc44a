"""Distribution alignment (Eq. 12-15) against scipy and numpy references and finite differences."""

import numpy as np
import pytest
import scipy.linalg
import torch

from nnunet_dale.alignment import (
    ClassGaussians,
    alignment_loss,
    class_gaussians,
    class_membership,
    fuzzy_objective,
    gaussian_w2,
    perturb_covariance,
)


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + 1e-3 * np.eye(d)


def scipy_w2(m1, s1, m2, s2):
    root = scipy.linalg.sqrtm(s1)
    cross = scipy.linalg.sqrtm(root @ s2 @ root)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(cross)))


@pytest.mark.parametrize("d,rank", [(3, None), (8, None), (16, 4)])
def test_w2_matches_scipy_sqrtm(d, rank):
    rng = np.random.default_rng(d)
    m1, m2 = rng.normal(size=(2, d))
    s1, s2 = random_spd(rng, d, rank), random_spd(rng, d, rank)
    ours = gaussian_w2(
        torch.tensor(m1)[None], torch.tensor(s1)[None], torch.tensor(m2)[None], torch.tensor(s2)[None], ridge=1e-9
    )
    assert ours.shape == (1,)
    assert abs(ours.item() - scipy_w2(m1, s1, m2, s2)) < 1e-6 * max(1.0, abs(ours.item()))


def test_w2_is_zero_for_identical_and_batched_over_classes():
    rng = np.random.default_rng(0)
    means = torch.tensor(rng.normal(size=(3, 5)))
    covs = torch.tensor(np.stack([random_spd(rng, 5) for _ in range(3)]))
    assert torch.allclose(
        gaussian_w2(means, covs, means, covs, ridge=1e-9), torch.zeros(3, dtype=torch.float64), atol=1e-6
    )
    shifted = gaussian_w2(means, covs, means + 2.0, covs, ridge=1e-9)
    assert torch.allclose(shifted, torch.full((3,), 4.0 * 5, dtype=torch.float64), atol=1e-6)


def test_w2_gradient_flows_to_fuzzy_side_only_and_matches_finite_differences():
    rng = np.random.default_rng(1)
    d = 4
    mt, mf = torch.tensor(rng.normal(size=(1, d))), torch.tensor(rng.normal(size=(1, d)))
    st = torch.tensor(random_spd(rng, d))[None]
    a = torch.tensor(rng.normal(size=(d, d)))
    mt.requires_grad_()

    def w2_of(a_mat, mean):
        cov = (a_mat @ a_mat.T)[None] + 0.1 * torch.eye(d, dtype=torch.float64)
        return gaussian_w2(mt, st, mean, cov, ridge=1e-9).sum()

    a_var, mf_var = a.clone().requires_grad_(), mf.clone().requires_grad_()
    loss = w2_of(a_var, mf_var)
    g_a, g_m, g_t = torch.autograd.grad(loss, (a_var, mf_var, mt), allow_unused=True)
    assert g_t is None  # the target is a constant
    eps = 1e-6
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        plus, minus = a.clone(), a.clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (w2_of(plus, mf) - w2_of(minus, mf)) / (2 * eps)
        assert abs(fd.item() - g_a[i, j].item()) < 1e-5
    assert torch.allclose(g_m, 2 * (mf - mt.detach()), atol=1e-8)


def test_w2_gradient_is_finite_with_repeated_eigenvalues():
    d = 6
    cov = torch.eye(d, dtype=torch.float64)[None].clone().requires_grad_()
    loss = gaussian_w2(torch.zeros(1, d), torch.eye(d)[None] * 2, torch.zeros(1, d), cov).sum()
    (g,) = torch.autograd.grad(loss, cov)
    assert torch.isfinite(g).all()


def test_class_gaussians_match_numpy_weighted_statistics():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 1, 6, 7))
    weight = rng.random((2, 1, 6, 7)).astype(np.float32)
    member = class_membership(torch.from_numpy(labels).float(), 3, regions=False, ignore_label=None)
    stats = class_gaussians(torch.from_numpy(feats), member, torch.from_numpy(weight))
    f = feats.transpose(1, 0, 2, 3).reshape(5, -1)
    for c in range(3):
        w = (weight * (labels == c)).ravel()
        mean = (f * w).sum(1) / w.sum()
        cov = np.cov(f, aweights=w, bias=True)
        np.testing.assert_allclose(stats.mean[c].numpy(), mean, atol=1e-5)
        np.testing.assert_allclose(stats.cov[c].numpy(), cov, atol=1e-5)
        np.testing.assert_allclose(stats.mass[c].item(), w.sum(), rtol=1e-5)


def test_class_membership_drops_ignore_label_and_handles_regions():
    labels = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    member = class_membership(labels, 3, regions=False, ignore_label=5)
    assert member.shape == (1, 3, 2, 2)
    assert member[0, :, 1, 1].sum() == 0 and member[0, 2, 1, 0] == 1
    regions = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]]]])  # last channel: ignore
    assert torch.equal(class_membership(regions, 2, regions=True, ignore_label=9), regions[:, :2])


def test_perturbation_adds_a_bounded_constant():
    cov = torch.eye(3)[None].repeat(4, 1, 1) * 2.0
    out = perturb_covariance(cov, 0.1, torch.Generator().manual_seed(0))
    eps = out - cov
    for c in range(4):
        assert torch.allclose(eps[c], torch.full((3, 3), eps[c, 0, 0].item()))  # eps * matrix of ones
        assert 0 <= eps[c, 0, 0] <= 0.2


def test_alignment_skips_classes_without_enough_mass():
    d = 3
    mean = torch.zeros(2, d)
    cov = torch.eye(d).repeat(2, 1, 1)
    target = ClassGaussians(mean=mean, cov=cov, mass=torch.tensor([100.0, 100.0]))
    fuzzy = ClassGaussians(mean=mean + torch.tensor([[1.0], [10.0]]), cov=cov, mass=torch.tensor([100.0, 2.0]))
    out = alignment_loss(target, fuzzy, perturbation=0.0, ridge=1e-9, min_mass=8)
    assert out.classes_used.item() == 1
    assert abs(out.loss.item() - d * 1.0) < 1e-4  # only class 0 (shift 1 per axis) counts


def test_fuzzy_objective_eq15():
    assert fuzzy_objective(torch.tensor(2.0), torch.tensor(10.0), 0.05, torch.tensor(1.2)).item() == pytest.approx(2.6)
